"""The one training loop: AdamW, warm-up + cosine schedule, gradient clipping, early stopping with the best
weights restored, task loss (cross-entropy or MSE) plus the weighted reconstruction loss, Gaussian-noise /
gene-dropout augmentation, full seeding, CPU or CUDA, and DDP when launched by ``torchrun``.

The loop knows nothing about a particular architecture. A module is called as ``module(x, covariates)``
(or ``module(x)`` when it takes one argument) and may return either a tensor (logits or predictions) or an
object with ``logits`` / ``prediction`` and, optionally, ``reconstruction`` and ``aux_loss`` attributes.
Logging is done by callbacks that receive each epoch's metrics dict (MLflow, progress bars, Optuna
pruning), never inside the module.

DDP equivalence: every rank walks the same seeded permutation of the training rows, cuts the same global
batches, and takes its own contiguous slice of each; the augmentation noise is drawn for the whole global
batch from a generator seeded by the step and then sliced, and the loss is normalized by the *global*
batch, so the averaged gradient equals the single-process one (up to float summation order). Model dropout
draws per-rank random numbers and is the one source of difference.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from genexflow.errors import InputError
from genexflow.metrics import evaluate
from genexflow.training.config import TrainConfig

EpochCallback = Callable[[int, dict[str, float]], None]


# --------------------------------------------------------------------------------------------- data
@dataclass
class TensorData:
    """Model inputs for a set of samples (already preprocessed).

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_genes), float32
        Preprocessed expression in the model's gene order.
    covariates : ndarray of shape (n_samples, n_covariates), float32
        Encoded covariates (may have 0 columns).
    y : ndarray of shape (n_samples,) or None
        Class indices (int64) or targets (float32).
    batch : ndarray of shape (n_samples,), int64, optional
        Batch index per sample (used for plots, not by the loss).
    """

    X: np.ndarray
    covariates: np.ndarray
    y: np.ndarray | None = None
    batch: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.X = np.ascontiguousarray(self.X, dtype=np.float32)
        n = len(self.X)
        if self.covariates is None:
            self.covariates = np.zeros((n, 0), np.float32)
        self.covariates = np.ascontiguousarray(self.covariates, dtype=np.float32).reshape(n, -1)
        if self.y is not None and len(self.y) != n:
            raise InputError(f"{len(self.y)} labels for {n} samples")
        if not np.isfinite(self.X).all():
            raise InputError("model input has NaN/inf after preprocessing; enable imputation in preprocessing")

    def __len__(self) -> int:
        return len(self.X)

    def take(self, idx: np.ndarray) -> TensorData:
        return TensorData(self.X[idx], self.covariates[idx], None if self.y is None else self.y[idx],
                          None if self.batch is None else self.batch[idx])


# --------------------------------------------------------------------------------------------- seeding / devices
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally request deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may draw from the legacy global RNG
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(spec: str = "auto"):
    """``auto`` -> the local CUDA device when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    return dev


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process).

    gloo on CPU, NCCL on CUDA. Returns this process's rank, the world size and the local rank.
    """
    # lazy: only needed for DDP runs
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def current_dist() -> DistInfo:
    # lazy: only needed for DDP runs
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


# --------------------------------------------------------------------------------------------- module calls
def _takes_covariates(module) -> bool:
    fwd = getattr(module, "module", module).forward  # unwrap DDP
    try:
        params = [p for p in inspect.signature(fwd).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return True
    return len(params) >= 2


def _takes_return_attention(module) -> bool:
    try:
        return "return_attention" in inspect.signature(getattr(module, "module", module).forward).parameters
    except (TypeError, ValueError):
        return False


def call_module(module, x, cov, **kwargs):
    """Run the module on ``(x, covariates)`` and return its raw output. ``attention=False`` asks a module
    whose forward takes ``return_attention`` (PathwayNet) not to compute attention weights."""
    if kwargs.pop("attention", True) is False and _takes_return_attention(module):
        kwargs["return_attention"] = False
    return module(x, cov, **kwargs) if _takes_covariates(module) else module(x, **kwargs)


def batched_call(module, x, cov, batch_size: int = 256, **kwargs):
    """:func:`call_module` over row chunks of ``batch_size``, outputs concatenated along the rows (a tensor,
    a NamedTuple or a dict of tensors / ``None``): the same output as one call, without the one-call peak
    memory (at 20,000 genes the GCN features of 1,500 rows alone are ~1 GB per layer)."""
    n = len(x)
    if n <= batch_size:
        return call_module(module, x, cov, **kwargs)
    outs = [call_module(module, x[lo:lo + batch_size], cov[lo:lo + batch_size], **kwargs)
            for lo in range(0, n, batch_size)]
    first = outs[0]

    def cat(vals):
        if all(isinstance(v, torch.Tensor) for v in vals):
            return torch.cat(vals)
        if all(v is None for v in vals):
            return None
        raise TypeError("cannot concatenate module outputs")

    try:
        if isinstance(first, torch.Tensor):
            return cat(outs)
        if isinstance(first, tuple) and hasattr(first, "_fields"):
            return type(first)(*(cat([o[i] for o in outs]) for i in range(len(first))))
        if isinstance(first, dict):
            return {k: cat([o[k] for o in outs]) for k in first}
    except TypeError:
        pass
    return call_module(module, x, cov, **kwargs)  # an output type we cannot stitch: one call


def task_output(out):
    """Logits (classification) or predictions (regression) tensor from a module output."""
    if hasattr(out, "logits") and out.logits is not None:
        return out.logits
    if hasattr(out, "prediction") and out.prediction is not None:
        return out.prediction
    if isinstance(out, dict):
        return out.get("logits", out.get("prediction"))
    return out


def pathway_attention(module, out):
    """Per-pathway attention (B, P) from the module's own readout, or ``None`` without attention."""
    att = _field(out, "attention")
    if att is None:
        return None
    inner = getattr(module, "module", module)
    if hasattr(inner, "pathway_attention"):
        return inner.pathway_attention(out)
    return att if att.ndim == 2 else None


def _field(out, name: str):
    if isinstance(out, dict):
        return out.get(name)
    return getattr(out, name, None)


@dataclass
class LossOutput:
    """Total loss to back-propagate, the prediction (task) loss, and float components for logging."""

    total: Any
    prediction: Any
    metrics: dict[str, float] = field(default_factory=dict)


def compute_loss(out, x_clean, y, task: str, recon_weight: float, class_weights=None) -> LossOutput:
    """Generic loss for modules without a ``loss`` method: cross-entropy (optionally class-weighted) or MSE,
    plus ``recon_weight`` * reconstruction MSE against the clean input, plus any ``aux_loss``."""
    pred = task_output(out)
    if task == "classification":
        task_loss = F.cross_entropy(pred, y, weight=class_weights)
    else:
        task_loss = F.mse_loss(pred.reshape(-1), y.reshape(-1).to(pred.dtype))
    total = task_loss
    metrics = {"prediction_loss": float(task_loss.detach())}
    rec = _field(out, "reconstruction")
    if rec is not None and recon_weight > 0:
        rl = F.mse_loss(rec, x_clean)
        total = total + recon_weight * rl
        metrics["reconstruction_loss"] = float(rl.detach())
    aux = _field(out, "aux_loss")
    if aux is not None:
        total = total + aux
        metrics["aux_loss"] = float(aux.detach())
    metrics["loss"] = float(total.detach())
    return LossOutput(total, task_loss, metrics)


def module_loss(module, out, x_clean, y, task: str, recon_weight: float, class_weights=None) -> LossOutput:
    """The module's own ``loss(output, expression, target, class_weight)`` when it has one (the module
    knows its branches: reconstruction, KL...), else :func:`compute_loss`."""
    inner = getattr(module, "module", module)  # unwrap DDP
    if hasattr(inner, "loss") and callable(inner.loss):
        res = inner.loss(out, x_clean, y, class_weight=class_weights)
        metrics = {k: float(v) for k, v in getattr(res, "metrics", {}).items()}
        pred = getattr(res, "prediction", res.total)
        metrics.setdefault("prediction_loss", float(pred.detach()))
        metrics.setdefault("loss", float(res.total.detach()))
        return LossOutput(res.total, pred, metrics)
    return compute_loss(out, x_clean, y, task, recon_weight, class_weights)


def clip_grad_norm(parameters, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` (same norm, same scale ``max_norm / (norm + 1e-6)`` when it is
    below 1), but on CPU the gradients are only rescaled when the norm exceeds ``max_norm``: torch always
    multiplies them (by 1.0 when not clipping, to avoid a device sync), a full read and write of every
    gradient per step; on CPU the sync is free."""
    params = [p for p in parameters if p.grad is not None]
    if not params or params[0].grad.device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params]
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
    coef = max_norm / (norm + 1e-6)
    if not coef >= 1.0:  # also NaN/inf norms, which torch propagates into the gradients the same way
        torch._foreach_mul_(grads, coef)


# --------------------------------------------------------------------------------------------- schedule
def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``ceil(warmup_fraction * total_steps)`` steps, then cosine to 0."""
    warm = max(1, math.ceil(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's global mini-batches: a seeded permutation cut into ``ceil(n / batch_size)`` near-equal
    parts (no tiny last batch, so every DDP rank always gets rows)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.array_split(perm, max(1, math.ceil(n / batch_size)))


# --------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    module: Any
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stopped_epoch: int
    target_mean: float = 0.0
    target_std: float = 1.0
    seconds: float = 0.0


class Trainer:
    """Train any module on :class:`TensorData` with the settings of a :class:`TrainConfig`.

    Parameters
    ----------
    config : TrainConfig
    callbacks : sequence of callable ``(epoch, metrics) -> None``
        Called on every rank's main process after each epoch (MLflow logging, progress, pruning).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from genexflow.training import TrainConfig, Trainer, TensorData
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 5)).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> data = TensorData(X, np.zeros((40, 0)), y)
    >>> res = Trainer(TrainConfig(epochs=3, lr=1e-2)).fit(torch.nn.Linear(5, 2), data.take(np.arange(30)),
    ...                                                  data.take(np.arange(30, 40)))
    >>> len(res.history)
    3
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[EpochCallback] = ()):
        self.config = config
        self.callbacks = list(callbacks)

    # ------------------------------------------------------------------ fit
    def fit(self, module, train: TensorData, val: TensorData | None = None,
            start_is_candidate: bool = False) -> TrainResult:
        """Train ``module`` on ``train``; early-stop on ``val`` loss (or train loss when ``val`` is None).

        With ``start_is_candidate`` the untrained starting point (e.g. a GLM-initialized wide path) is
        scored first and kept when no epoch beats it (``best_epoch`` is then -1).

        Returns the module on the training device, in eval mode, with the best weights restored.
        """
        cfg = self.config
        if train.y is None:
            raise InputError("training data has no labels")
        t0 = time.perf_counter()
        dist_info = current_dist()
        device = resolve_device(cfg.device)
        if dist_info.active and device.type == "cuda":
            device = torch.device("cuda", dist_info.local_rank)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed, cfg.deterministic)

        # Targets: class indices, or standardized regression targets (de-standardized in predict).
        y_np = train.y
        t_mean, t_std = 0.0, 1.0
        if cfg.task == "regression":
            y_np = y_np.astype(np.float32)
            t_mean, t_std = float(np.mean(y_np)), float(np.std(y_np) or 1.0)

        def tensors(d: TensorData):
            x = torch.as_tensor(d.X, device=device)
            c = torch.as_tensor(d.covariates, device=device)
            if cfg.task == "classification":
                y = torch.as_tensor(d.y.astype(np.int64), device=device)
            else:
                y = torch.as_tensor(((d.y.astype(np.float32) - t_mean) / t_std), device=device)
            return x, c, y

        xt, ct, yt = tensors(train)
        val_t = tensors(val) if val is not None and len(val) and val.y is not None else None

        class_w = None
        if cfg.task == "classification" and cfg.class_weighted:
            k = int(max(train.y.max(), (val.y.max() if val_t else 0))) + 1
            counts = np.bincount(train.y.astype(int), minlength=k).astype(np.float64)
            w = np.where(counts > 0, len(train.y) / (k * np.maximum(counts, 1)), 0.0)
            class_w = torch.as_tensor(w, dtype=torch.float32, device=device)

        module = module.to(device)
        model = module
        if dist_info.active:
            # Every parameter takes part in each forward (true for PathwayNet); a module with optional
            # branches that skips some must disable them in its config rather than leave them unused.
            model = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)

        # fused: one kernel per parameter for the whole AdamW update (CPU and CUDA) instead of ~8 ops.
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
        n = len(train)
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps_per_epoch,
                                                                     cfg.warmup_fraction))

        history: list[dict[str, float]] = []
        best = (math.inf, -1)
        best_state = copy.deepcopy(module.state_dict())
        bad = 0
        step = 0
        if start_is_candidate:
            if val_t is not None:
                start = self._validate(module, val_t, val, class_w, t_mean, t_std)["val_loss"]
            else:
                module.eval()
                with torch.no_grad():
                    out = batched_call(module, xt, ct, attention=False)
                    start = module_loss(module, out, xt, yt, cfg.task, cfg.recon_weight, class_w).metrics[
                        "prediction_loss"]
            best = (start, -1)
        world, rank = dist_info.world_size, dist_info.rank
        for epoch in range(cfg.epochs):
            model.train()
            epoch_lr = float(opt.param_groups[0]["lr"])
            sums: dict[str, float] = {}
            for gb in global_batches(n, cfg.batch_size, cfg.seed, epoch):
                gsize = len(gb)
                gidx = torch.as_tensor(gb, device=device)
                x_clean = xt[gidx]
                x_in = self._augment(x_clean, cfg.seed, step)
                c_b, y_b = ct[gidx], yt[gidx]
                if world > 1:
                    lo, hi = _chunk(gsize, world, rank)
                    x_in, x_clean, c_b, y_b = x_in[lo:hi], x_clean[lo:hi], c_b[lo:hi], y_b[lo:hi]
                out = call_module(model, x_in, c_b)
                loss = module_loss(model, out, x_clean, y_b, cfg.task, cfg.recon_weight, class_w)
                total = loss.total
                if world > 1:
                    # Ranks average gradients; rescale each rank's (weighted) mean so the average equals the
                    # global-batch mean even when the slices differ in size.
                    if class_w is not None:
                        share = float(class_w[y_b].sum()) / float(class_w[yt[gidx]].sum())
                    else:
                        share = len(y_b) / gsize
                    total = total * (share * world)
                opt.zero_grad(set_to_none=True)
                total.backward()
                if cfg.grad_clip > 0:
                    clip_grad_norm(module.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                for k, v in loss.metrics.items():
                    # Row-weighted sums, reduced over ranks below, divided by n: epoch means.
                    sums[k] = sums.get(k, 0.0) + v * len(y_b)
            if world > 1:
                sums = _allreduce_sum(sums, device)
            rec = {f"train_{k}": v / n for k, v in sums.items()}
            rec["lr"] = epoch_lr
            rec["epoch"] = epoch
            if val_t is not None:
                rec.update(self._validate(module, val_t, val, class_w, t_mean, t_std))
                monitor = rec["val_loss"]
            else:
                monitor = rec["train_prediction_loss"]
            history.append(rec)
            if monitor < best[0] - cfg.min_delta:
                best = (monitor, epoch)
                best_state = copy.deepcopy(module.state_dict())
                bad = 0
            else:
                bad += 1
            if dist_info.is_main:
                for cb in self.callbacks:
                    cb(epoch, rec)
            if bad >= cfg.patience:
                break
        # Auxiliary heads (a module's ``auxiliary_prefixes``, e.g. PathwayNet's pathway heads) do not feed
        # the monitored loss, so the best epoch says nothing about them: they keep their last weights.
        aux = tuple(getattr(module, "auxiliary_prefixes", ()))
        if aux:
            best_state.update({k: v for k, v in module.state_dict().items() if k.startswith(aux)})
        module.load_state_dict(best_state)
        module.eval()
        return TrainResult(module=module, history=history, best_epoch=best[1], best_val_loss=best[0],
                           stopped_epoch=len(history) - 1, target_mean=t_mean, target_std=t_std,
                           seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------------ pieces
    def _augment(self, x, seed: int, step: int):
        """Gaussian noise and gene dropout for one global batch, from a step-seeded generator (so DDP
        ranks draw identical noise for the whole batch and slice it)."""
        cfg = self.config
        if cfg.noise_std <= 0 and cfg.gene_dropout <= 0:
            return x
        g = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + step)
        out = x
        if cfg.noise_std > 0:
            out = out + cfg.noise_std * torch.randn(x.shape, generator=g).to(x.device)
        if cfg.gene_dropout > 0:
            keep = (torch.rand(x.shape, generator=g) >= cfg.gene_dropout).to(x.device, x.dtype)
            out = out * keep
        return out

    def _validate(self, module, val_t, val: TensorData, class_w, t_mean: float, t_std: float) -> dict[str, float]:
        cfg = self.config
        x, c, y = val_t
        module.eval()
        with torch.no_grad():
            # In row chunks, without attention weights (the loss needs none).
            out = batched_call(module, x, c, attention=False)
            loss = module_loss(module, out, x, y, cfg.task, cfg.recon_weight, class_w)
            pred = task_output(out)
        # Early stopping watches the prediction loss: the reconstruction keeps improving long after the
        # task starts to overfit.
        rec = {"val_loss": loss.metrics["prediction_loss"]}
        if "reconstruction_loss" in loss.metrics:
            rec["val_reconstruction_loss"] = loss.metrics["reconstruction_loss"]
        if cfg.task == "classification":
            proba = torch.softmax(pred.float(), dim=1).cpu().numpy()
            m = evaluate("classification", val.y.astype(int), proba)
            rec.update({f"val_{k}": m[k] for k in ("accuracy", "balanced_accuracy", "roc_auc") if k in m})
        else:
            p = pred.reshape(-1).float().cpu().numpy() * t_std + t_mean
            m = evaluate("regression", val.y, p)
            rec.update({f"val_{k}": m[k] for k in ("r2", "rmse")})
        return rec


def _chunk(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a global batch of ``n`` for ``rank`` (np.array_split sizes)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _allreduce_sum(d: dict[str, float], device) -> dict[str, float]:
    # lazy: only needed for DDP runs
    import torch.distributed as dist

    keys = sorted(d)
    t = torch.tensor([d[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist(), strict=True))


# --------------------------------------------------------------------------------------------- inference
def predict_module(module, data: TensorData, task: str, target_mean: float = 0.0, target_std: float = 1.0,
                   batch_size: int = 512, device: str | None = None) -> dict[str, np.ndarray]:
    """Run a trained module in eval mode, batched, without gradients.

    Returns
    -------
    dict
        ``proba`` (n, n_classes) or ``prediction`` (n,), plus ``latent``, ``attention`` and
        ``pathway_output`` (the pathway-specific heads: (n, P, K) probabilities or (n, P) predictions) when
        the module's output carries them (numpy arrays, first axis samples).
    """
    dev = next(module.parameters()).device if device is None else torch.device(device)
    module = module.to(dev).eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for lo in range(0, len(data), batch_size):
            x = torch.as_tensor(data.X[lo:lo + batch_size], device=dev)
            c = torch.as_tensor(data.covariates[lo:lo + batch_size], device=dev)
            out = call_module(module, x, c)
            pred = task_output(out).float()
            if task == "classification":
                parts.setdefault("proba", []).append(torch.softmax(pred, dim=1).cpu().numpy())
            else:
                parts.setdefault("prediction", []).append(pred.reshape(-1).cpu().numpy() * target_std + target_mean)
            v = _field(out, "latent")
            if isinstance(v, torch.Tensor):
                parts.setdefault("latent", []).append(v.float().cpu().numpy())
            ph = _field(out, "pathway_logits")
            if isinstance(ph, torch.Tensor):  # pathway-specific heads: (n, P, K) probabilities / (n, P)
                ph = torch.softmax(ph.float(), -1) if task == "classification" else ph[..., 0] * target_std + target_mean
                parts.setdefault("pathway_output", []).append(ph.float().cpu().numpy())
            att = pathway_attention(module, out)
            if att is not None:
                parts.setdefault("attention", []).append(att.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
