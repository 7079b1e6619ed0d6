"""Triton python-backend model: runs the genexflow ONNX graph with onnxruntime (local, CPU).

Copied verbatim into every version directory next to ``model.onnx`` by genexflow's repository builder.
It runs inside the Triton server's own environment (numpy<2 + onnxruntime), so it imports nothing from
genexflow. ``execute`` validates every request on its own (a bad request gets its own error response and
never fails its neighbours), concatenates the valid ones and makes ONE ``sess.run`` per batch, which is what
lets Triton's dynamic batcher raise throughput.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_NP = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_FP64": np.float64, "TYPE_INT32": np.int32}


def _error(message):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], _NP[i["data_type"]]) for i in config["input"]]
        # (B,) graph inputs travel as (B, 1) when the config has no reshape; flatten them here.
        self.rank1 = {i.name for i in self.session.get_inputs() if len(i.shape) == 1}
        self.outputs = [(o["name"], _NP[o["data_type"]]) for o in config["output"]]
        self.allow_nan = set(filter(None, params.get("nan_allowed_inputs", "").split(",")))
        self.n_batch_levels = int(params.get("n_batch_levels", "0"))

    def _check(self, arrays):
        """A one-line reason the request cannot be scored, or None."""
        for (name, _), a in zip(self.inputs, arrays, strict=True):
            if a.dtype.kind == "f":
                bad = ~np.isfinite(a) if name not in self.allow_nan else np.isinf(a)
                if bad.any():
                    rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
                    what = "NaN or infinite" if name not in self.allow_nan else "infinite"
                    return (f"input '{name}' has {int(bad.sum())} {what} value(s) (rows {rows}); "
                            f"send finite values" + (" (NaN marks an absent gene)" if name in self.allow_nan
                                                     else ""))
            if name == "batch_index" and self.n_batch_levels and a.size:
                if a.max() >= self.n_batch_levels:
                    return (f"input 'batch_index' must be < {self.n_batch_levels} (negative = a batch unseen in "
                            f"training), got values up to {a.max()}")
        return None

    def execute(self, requests):
        responses = [None] * len(requests)
        good, parts = [], []
        for r, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name, _ in self.inputs]
            arrays = [a.reshape(-1) if name in self.rank1 else a for (name, _), a in zip(self.inputs, arrays, strict=True)]
            reason = self._check(arrays)
            if reason:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=_error(reason))
            else:
                good.append(r)
                parts.append(arrays)
        # A request with rows of an unseen batch (negative batch_index) is estimated from its own rows, so
        # it runs alone; the others share one run.
        own = [j for j, p in enumerate(parts) if self._unseen(p)]
        shared = [j for j in range(len(parts)) if j not in own]
        for group in [shared] + [[j] for j in own]:
            if group:
                self._run([good[j] for j in group], [parts[j] for j in group], responses)
        return responses

    def _unseen(self, arrays):
        return any(name == "batch_index" and a.size and a.min() < 0
                   for (name, _), a in zip(self.inputs, arrays, strict=True))

    def _run(self, good, parts, responses):
        if good:
            feeds = {name: np.concatenate([p[i] for p in parts]) for i, (name, _) in enumerate(self.inputs)}
            names = [n for n, _ in self.outputs]
            results = self.session.run(names, feeds)
            sizes = [p[0].shape[0] for p in parts]
            offsets = np.cumsum([0] + sizes)
            for j, r in enumerate(good):
                lo, hi = offsets[j], offsets[j + 1]
                outs = [res[lo:hi] for res in results]
                if not all(np.isfinite(o).all() for o in outs):
                    responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=_error(
                        "the model produced non-finite outputs for this request; check the inputs for "
                        "absurd values (wrong value type or units?)"))
                    continue
                responses[r] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(o, dtype=dt))
                    for (name, dt), o in zip(self.outputs, outs, strict=True)])

    def finalize(self):
        self.session = None
