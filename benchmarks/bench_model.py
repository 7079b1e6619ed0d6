"""Benchmark the pathway network against a straightforward PyTorch Geometric implementation.

Run on demand (never in the test suite)::

    .venv/bin/python benchmarks/bench_model.py            # full run, ~10 min on 2 busy cores
    .venv/bin/python benchmarks/bench_model.py --quick    # fewer repeats
    .venv/bin/python benchmarks/bench_model.py --threads 1 --sections 13   # busy box: read the CPU columns

Every timing is reported as wall time and process CPU time. On a shared, oversubscribed machine two
intra-op threads spend most of their time waiting for each other, so the 1-thread CPU time is the stable
measure of work there; on an idle machine read the wall columns.

Tables (peers side by side, ratios from the same run):

1. Training throughput (forward + backward + optimizer step, samples/s) at G = 5,000 genes, 200 KEGG
   pathways, batch 32: PathwayNet (full, and GCN branch only) vs PyG (one copy of the co-membership graph
   per sample, batched into a block-diagonal graph, ``GCNConv`` layers with the same widths), measured at
   ``--pyg-batch`` (batch 32 needs ~10 GB for PyG); rates per sample.
2. Peak memory and step time of one training step at G = 20,000 genes, 300 GO-BP pathways, batch 32 (fresh
   subprocess per row; peak RSS from ``VmHWM`` after resetting it, so it covers exactly one step). PyG runs
   at batch 1-2 and its batch-32 memory is extrapolated linearly.
3. Transformer overhead: step time with vs without the pathway-token branch.
4. Inference at batch 256: ONNX Runtime vs torch eager.

Before timing, the script checks that PyG's ``GCNConv`` propagation equals the factorized ``Â H`` (the two
implementations compute the same graph convolution).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------- problem setups
def kegg_problem(n_genes: int = 5000, n_pathways: int = 200):
    """Real KEGG sets on the first ``n_genes`` KEGG genes (sorted), first ``n_pathways`` sets >= 5 genes."""
    from genexflow.priors import load_gene_sets, restrict_gene_sets

    kegg = load_gene_sets("kegg")
    genes = sorted({g for v in kegg.values() for g in v})[:n_genes]
    sets = dict(list(restrict_gene_sets(kegg, genes, min_size=5).items())[:n_pathways])
    return genes, sets


def go_problem(n_genes: int = 20000, n_pathways: int = 300, seed: int = 0):
    """300 random GO-BP (15-500) sets over all GO genes padded with synthetic names to ``n_genes``."""
    from genexflow.priors import load_gene_sets, restrict_gene_sets

    go = load_gene_sets("go_bp")
    genes = sorted({g for v in go.values() for g in v})
    genes += [f"SYNTH_{i:05d}" for i in range(n_genes - len(genes))]
    names = list(go)
    pick = np.random.default_rng(seed).choice(len(names), n_pathways, replace=False)
    return genes[:n_genes], restrict_gene_sets({names[i]: go[names[i]] for i in pick}, genes[:n_genes], min_size=5)


def build_ours(genes, sets, n_classes=3, **config):
    from genexflow.models import PathwayNet
    from genexflow.priors import build_priors

    pri = build_priors(genes, sets, min_size=5)
    return PathwayNet.from_priors(pri, n_covariates=4, n_outputs=n_classes, **config), pri


class PygGCN:
    """Factory for the PyG reference: the same GCN branch (per-gene input embedding, L residual
    GCNConv + GELU + dropout layers, per-gene readout, MLP 512 -> 256, head), on per-sample graphs."""

    @staticmethod
    def build(n_genes, n_classes=3, dim=8, layers=2, readout=(512, 256)):
        import torch
        from torch import nn
        from torch_geometric.nn import GCNConv

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.gene_scale = nn.Parameter(torch.randn(n_genes, dim) * 0.5)
                self.gene_embed = nn.Parameter(torch.randn(n_genes, dim) * 0.1)
                self.convs = nn.ModuleList(GCNConv(dim, dim) for _ in range(layers))
                self.drop = nn.Dropout(0.1)
                self.gene_readout = nn.Linear(dim, 1)
                dims = (n_genes, *readout)
                mlp = []
                for a, b in zip(dims[:-1], dims[1:], strict=True):
                    mlp += [nn.Linear(a, b), nn.GELU(), nn.Dropout(0.1)]
                self.readout = nn.Sequential(*mlp)
                self.head = nn.Sequential(nn.Linear(readout[-1] + 4, 128), nn.GELU(), nn.Dropout(0.3),
                                          nn.Linear(128, n_classes))

            def forward(self, x, cov, edge_index, edge_weight):
                B = x.shape[0]
                h = (x.reshape(B, n_genes, 1) * self.gene_scale + self.gene_embed).reshape(B * n_genes, dim)
                for conv in self.convs:
                    h = h + self.drop(torch.nn.functional.gelu(conv(h, edge_index, edge_weight)))
                g = self.gene_readout(h).reshape(B, n_genes)
                return self.head(torch.cat([self.readout(g), cov], 1))

        return Net()

    @staticmethod
    def batched_edges(graph, batch):
        """Block-diagonal edge list of ``batch`` graph copies (what ``Batch.from_data_list`` builds)."""
        import torch

        A = graph.adjacency().tocoo()
        ei = np.vstack([A.row, A.col]).astype(np.int64)
        G = graph.n_genes
        offs = (np.arange(batch, dtype=np.int64) * G)[:, None, None]
        ei_b = (ei[None] + offs).transpose(1, 0, 2).reshape(2, -1)
        return torch.from_numpy(ei_b), torch.from_numpy(np.tile(A.data.astype(np.float32), batch))


def check_pyg_parity(graph) -> float:
    """max |GCNConv(H) − factorized Â H| with identity weights on one sample."""
    import torch
    from torch_geometric.nn import GCNConv

    from genexflow.models import make_propagation

    H = torch.randn(graph.n_genes, 3)
    conv = GCNConv(3, 3, bias=False)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(3))
        ei, ew = PygGCN.batched_edges(graph, 1)
        ref = conv(H, ei, ew)
        ours = make_propagation(graph)(H.t()).t()  # the module propagates rows (N, G)
    return float((ref - ours).abs().max())


# ---------------------------------------------------------------------- timing helpers
def train_step_fn(net, kind, B, G, extra=None):
    import torch

    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    x, cov = torch.randn(B, G, generator=g), torch.randn(B, 4, generator=g)
    y = torch.randint(0, 3, (B,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        if kind == "ours":
            loss = net.loss(net(x, cov), x, y).total
        else:
            loss = torch.nn.functional.cross_entropy(net(x, cov, *extra), y)
        loss.backward()
        opt.step()

    return step


def timed(fn, repeats, warmup=1) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) per call. On a shared box the CPU time of a 1-thread run is the
    stable measure of work; wall time is what a user waits for on an idle machine with that many threads."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - t, time.process_time() - c))
    return out


def best(ts: list[tuple[float, float]]) -> tuple[float, float]:
    return min(t[0] for t in ts), min(t[1] for t in ts)


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


# ---------------------------------------------------------------------- child processes (memory)
def child(spec: dict) -> dict:
    """One fresh process: build, warm up (allocates optimizer state), reset the peak, time one step."""
    import torch

    torch.set_num_threads(spec["threads"])
    rss_torch = _status("VmRSS")
    import genexflow.models  # noqa: F401  (pandas, scipy, scikit-learn come with the priors)
    import genexflow.priors  # noqa: F401

    if spec["impl"] == "pyg":
        import torch_geometric.nn  # noqa: F401
    rss_libs = _status("VmRSS")
    genes, sets = (go_problem if spec["problem"] == "go" else kegg_problem)(spec["G"], spec["P"])
    B = spec["batch"]
    if spec["impl"] == "ours":
        net, pri = build_ours(genes, sets, use_transformer=spec.get("transformer", True), **spec.get("config", {}))
        step = train_step_fn(net, "ours", B, len(genes))
    else:
        from genexflow.priors import comembership_graph

        net = PygGCN.build(len(genes))
        ei, ew = PygGCN.batched_edges(comembership_graph(sets, genes), B)
        step = train_step_fn(net, "pyg", B, len(genes), (ei, ew))
    step()  # warm-up: Adam state exists from here on
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t, c = time.perf_counter(), time.process_time()
    step()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    return {"rss_after_import_torch": rss_torch, "rss_libs": rss_libs, "rss_before_step": before,
            "peak": _status("VmHWM"),
            "step_s": dt, "step_cpu_s": dc, "n_params": sum(p.numel() for p in net.parameters())}


def run_child(spec: dict, env: dict | None = None, timeout: int = 600) -> dict | None:
    e = {**os.environ, **(env or {})}
    try:
        r = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec)], capture_output=True,
                           text=True, env=e, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-2000:])
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- sections
def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def section_throughput(args):
    import torch

    from genexflow.priors import comembership_graph

    print("\n## 1. Training throughput, G=5000, 200 KEGG pathways (fwd + bwd + Adam step)")
    genes, sets = kegg_problem(5000, 200)
    graph = comembership_graph(sets, genes)
    print(f"co-membership graph: {graph.n_genes} genes, {len(sets)} sets, {graph.adjacency().nnz:,} directed edges "
          f"per sample; PyG GCNConv vs factorized Â H max |diff| = {check_pyg_parity(graph):.2e}")
    B = 32
    full, _ = build_ours(genes, sets)
    gcn_only, _ = build_ours(genes, sets, use_transformer=False, use_autoencoder=False)
    steps = {"PathwayNet (full)": train_step_fn(full, "ours", B, 5000),
             "PathwayNet (GCN branch only)": train_step_fn(gcn_only, "ours", B, 5000)}
    E = graph.adjacency().nnz
    b_pyg = args.pyg_batch
    pyg = PygGCN.build(5000)
    ei, ew = PygGCN.batched_edges(graph, b_pyg)
    steps[f"PyG GCNConv (batch {b_pyg})"] = train_step_fn(pyg, "pyg", b_pyg, 5000, (ei, ew))
    batches = {k: (b_pyg if k.startswith("PyG") else B) for k in steps}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for fn in steps.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved so that load from other processes hits all alike
        for k, fn in steps.items():
            times[k] += timed(fn, 1, warmup=0)
    pyg_key = next(k for k in steps if k.startswith("PyG"))
    pw, pc = best(times[pyg_key])
    print("\n| implementation | batch | step wall (min / median) | step CPU | samples/s wall | samples/s CPU "
          "| vs PyG per sample (wall / CPU) |\n|---|---|---|---|---|---|---|")
    for k, ts in times.items():
        w, c = best(ts)
        b = batches[k]
        print(f"| {k} | {b} | {w:.3f} / {statistics.median(t[0] for t in ts):.3f} s | {c:.3f} s | {b / w:,.1f} | "
              f"{b / c:,.1f} | {(b / w) / (b_pyg / pw):,.0f}x / {(b / c) / (b_pyg / pc):,.0f}x |")
    print(f"(PyG per-sample graphs: {E * 32:,} edges at batch 32, ~{gb(E * 32 * 150)} of edge tensors by the "
          f"~150 B/edge measured in table 2's setup; the block-diagonal edge list is built once, outside the "
          f"timing, which favours PyG.)")
    del full, gcn_only, pyg, ei, ew
    torch.set_num_threads(args.threads)


def section_memory(args):
    print("\n## 2. One training step at G=20000, 300 GO-BP pathways (fresh process per row)")
    rows = []
    base = {"problem": "go", "G": 20000, "P": 300, "threads": args.threads}
    rows.append(("PathwayNet (full), batch 32", run_child({**base, "impl": "ours", "batch": 32}), 32))
    rows.append(("PathwayNet (full), batch 32, MALLOC_MMAP_THRESHOLD_=1MB",
                 run_child({**base, "impl": "ours", "batch": 32}, env={"MALLOC_MMAP_THRESHOLD_": str(2**20)}), 32))
    rows.append(("PathwayNet (full, without crosstalk and wide path), batch 32",
                 run_child({**base, "impl": "ours", "batch": 32,
                            "config": {"pathway_interactions": 0, "gene_linear": False}}), 32))
    rows.append(("PathwayNet (no transformer), batch 32", run_child({**base, "impl": "ours", "batch": 32,
                                                                       "transformer": False}), 32))
    for b in (1, 2):
        rows.append((f"PyG GCNConv, batch {b}", run_child({**base, "impl": "pyg", "batch": b}), b))
    print("\n| run | peak RSS (whole process) | peak above the imported libraries | step-only increase | "
          "step wall | step CPU |\n|---|---|---|---|---|---|")
    for name, r, _b in rows:
        if r is None:
            print(f"| {name} | failed / out of memory | | | | |")
            continue
        print(f"| {name} | {gb(r['peak'])} | {gb(r['peak'] - r['rss_libs'])} | "
              f"{gb(r['peak'] - r['rss_before_step'])} | {r['step_s']:.2f} s | {r['step_cpu_s']:.2f} s |")
    r0 = rows[0][1]
    if r0:
        print(f"\n(`import torch` alone: {gb(r0['rss_after_import_torch'])}; with pandas / scipy / scikit-learn "
              f"(genexflow.priors): {gb(r0['rss_libs'])}. The warm-up step before the measured one allocates "
              f"the Adam state; glibc keeps freed activation blocks, hence the MALLOC_MMAP_THRESHOLD_ row.)")
    pyg = [(b, r) for name, r, b in rows if name.startswith("PyG") and r is not None]
    ours = rows[0][1]
    if len(pyg) == 2 and ours:
        (b1, r1), (b2, r2) = pyg
        per = (r2["peak"] - r1["peak"]) / (b2 - b1)
        est = r1["peak"] + per * (32 - b1)
        print(f"\nPyG at batch 32, extrapolated linearly: ~{gb(est)} peak and ~{r2['step_cpu_s'] / b2 * 32:.1f} s "
              f"CPU per step; PathwayNet: {gb(ours['peak'])} ({est / ours['peak']:.0f}x less memory), "
              f"{ours['step_cpu_s']:.2f} s CPU per step.")


def section_transformer(args):
    import torch

    print("\n## 3. Transformer overhead (pathway-token branch on vs off, same run, interleaved)")
    print("\n| G / P | step without (wall / CPU) | step with (wall / CPU) | overhead (wall / CPU) |\n|---|---|---|---|")
    for problem, G, P in (("kegg", 5000, 200), ("go", 20000, 300)):
        genes, sets = (go_problem if problem == "go" else kegg_problem)(G, P)
        torch.manual_seed(0)
        on, _ = build_ours(genes, sets, use_transformer=True)
        off, _ = build_ours(genes, sets, use_transformer=False)
        s_on, s_off = train_step_fn(on, "ours", 32, G), train_step_fn(off, "ours", 32, G)
        t_on, t_off = [], []
        s_on(), s_off()
        for _ in range(args.repeats):
            t_off += timed(s_off, 1, 0)
            t_on += timed(s_on, 1, 0)
        (a, ac), (b, bc) = best(t_off), best(t_on)
        print(f"| {G} / {P} | {a:.3f} / {ac:.3f} s | {b:.3f} / {bc:.3f} s | {100 * (b - a) / a:+.0f}% / "
              f"{100 * (bc - ac) / ac:+.0f}% |")
        del on, off


def section_inference(args):
    import onnxruntime as ort
    import torch

    from genexflow.models import export_onnx

    print("\n## 4. Inference at batch 256: ONNX Runtime vs torch eager (probabilities + latent)")
    print("\n| G / P | torch eager (wall / CPU) | ONNX Runtime (wall / CPU) | speed-up (wall / CPU) | max abs diff |"
          "\n|---|---|---|---|---|")
    for problem, G, P in (("kegg", 5000, 200), ("go", 20000, 300)):
        genes, sets = (go_problem if problem == "go" else kegg_problem)(G, P)
        net, _ = build_ours(genes, sets)
        net.eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(net, Path(tmp) / "m.onnx", verify=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).normal(size=(256, G)).astype(np.float32)
            c = np.random.default_rng(1).normal(size=(256, 4)).astype(np.float32)
            xt, ct = torch.from_numpy(x), torch.from_numpy(c)

            def eager(net=net, xt=xt, ct=ct):
                with torch.inference_mode():
                    out = net(xt, ct, return_attention=False)  # like the ONNX graph: fused attention
                    return torch.softmax(out.logits, -1).numpy(), out.latent.numpy()

            def onnx_run(sess=sess, x=x, c=c):
                return sess.run(["probabilities", "latent"], {"expression": x, "covariates": c})

            t_e, t_o = [], []
            eager(), onnx_run()
            for _ in range(args.repeats):
                t_e += timed(eager, 1, 0)
                t_o += timed(onnx_run, 1, 0)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(eager(), onnx_run(), strict=True))
        (a, ac), (b, bc) = best(t_e), best(t_o)
        print(f"| {G} / {P} | {a * 1e3:.0f} / {ac * 1e3:.0f} ms | {b * 1e3:.0f} / {bc * 1e3:.0f} ms | "
              f"{a / b:.2f}x / {ac / bc:.2f}x | {diff:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--pyg-batch", type=int, default=4, help="batch size of the PyG reference in table 1")
    ap.add_argument("--sections", default="1234", help="which tables to run, e.g. 13")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.repeats = 3
    import torch

    torch.set_num_threads(args.threads)
    print(f"# bench_model: torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f}; min over {args.repeats} interleaved repeats")
    for s, fn in (("1", section_throughput), ("2", section_memory), ("3", section_transformer),
                  ("4", section_inference)):
        if s in args.sections:
            fn(args)


if __name__ == "__main__":
    main()
