"""Training throughput at cohort scale: seconds per epoch and peak RSS of the DEFAULT PathwayNet at
10,000 samples x 20,000 genes, on 1 and 2 CPU threads, through the real trainer loop.

Run on demand (never in the test suite)::

    .venv/bin/python benchmarks/bench_speed.py                          # "after" rows + peer, 2 and 1 threads
    .venv/bin/python benchmarks/bench_speed.py --rows before --before-src /tmp/speed-before/src
    .venv/bin/python benchmarks/bench_speed.py --render                 # rewrite speed.md from speed.json

``before`` is the code at commit dc16186 (``git worktree add --detach /tmp/speed-before dc16186``; the row
runs with ``PYTHONPATH=<that>/src`` in the same virtual environment), ``after`` the checked-out code.

Setup (stated in the results):

- Data: a synthetic standardized float32 matrix (N(0, 1) per gene, 10,000 x 20,000) with a planted
  pathway signal in the label, not ``simulate_cohort`` (which would spend minutes on counts and
  normalization that the model never sees). The product's preprocessing keeps the 2,000 most variable genes
  by default (``preprocessing.max_genes``); this benchmark is about the model at 20,000 genes
  (``max_genes=None``).
- Priors: the shipped KEGG sets (the default ``gene_sets="kegg"``) over every KEGG gene, padded with
  synthetic gene names to 20,000 genes; ``build_priors`` as in a real fold.
- Model: ``genexflow.training.fit.build_model`` with ``TrainConfig()`` defaults (empty ``model`` dict ->
  PathwayNetConfig defaults), 2 classes, no covariates.
- Training: ``Trainer(TrainConfig(...)).fit`` exactly as ``train_deep`` calls it: inner stratified split
  (val_fraction 0.15: 8,500 fit rows, 1,500 validation rows), batch 32, AdamW, warm-up + cosine, gradient
  clipping, validation pass and early-stopping bookkeeping every epoch, deterministic mode, the wide path
  started from a GLM and frozen (``wide_trainable=False``, the default). The GLM fit itself happens before
  the loop and is not timed: its weights are a fixed random draw here (``init_wide`` is emulated).
- Timing: epoch k's time is the interval between the trainer's epoch-end callbacks k-1 and k (training
  steps + validation pass + best-state bookkeeping); epoch 0 includes the trainer's setup and is reported
  separately. Wall and process CPU time; the table shows the best (minimum) of the timed epochs.
- Memory: peak RSS (``VmHWM``) of a fresh subprocess per row (data, model, optimizer state, training).
- Peer: a plain torch MLP (20,000 -> h -> 2, GELU, dropout 0.3) with the same trainable parameter count as
  the "after" PathwayNet, through the same trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results"
N_SAMPLES, N_GENES = 10_000, 20_000


def _vm(field: str) -> float:
    """``field`` of /proc/self/status in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_row(kind: str, threads: int, epochs: int, seed: int = 0) -> dict:
    """One row in this process: build data, priors and model, train ``epochs + 1`` epochs, time them."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import genexflow
    from genexflow.priors import build_priors, load_gene_sets
    from genexflow.training.config import TrainConfig
    from genexflow.training.fit import build_model
    from genexflow.training.splits import train_val_split
    from genexflow.training.trainer import TensorData, Trainer, seed_everything

    load0 = os.getloadavg()
    rng = np.random.default_rng(seed)
    kegg = load_gene_sets("kegg")
    genes = sorted({g for v in kegg.values() for g in v})
    genes += [f"SYNTH_{i:05d}" for i in range(N_GENES - len(genes))]
    priors = build_priors(genes, "kegg", min_size=5)
    X = rng.standard_normal((N_SAMPLES, N_GENES), dtype=np.float32)
    members = np.flatnonzero(priors.membership[:, 0])
    score = X[:, members].mean(1) * np.sqrt(len(members)) + rng.standard_normal(N_SAMPLES)
    y = (score > 0).astype(np.int64)
    data = TensorData(X, np.zeros((N_SAMPLES, 0), np.float32), y)
    del X

    cfg = TrainConfig(epochs=epochs + 1, num_threads=threads, patience=10**6)
    fit_idx, val_idx = train_val_split(data.y, cfg.val_fraction, cfg.seed, stratify=True)
    seed_everything(cfg.seed, cfg.deterministic)
    module = build_model(priors, 0, 2, cfg)
    start_is_candidate = False
    if kind == "peer":
        n_params = int(os.environ.get("BENCH_PEER_PARAMS", "0")) or sum(
            p.numel() for p in module.parameters() if p.requires_grad) - module.wide.weight.numel()
        hidden = max(1, round(n_params / (N_GENES + 1 + 2)))
        module = torch.nn.Sequential(torch.nn.Linear(N_GENES, hidden), torch.nn.GELU(), torch.nn.Dropout(0.3),
                                     torch.nn.Linear(hidden, 2))
    else:
        # init_wide emulated: a fixed GLM-like start for the wide path (frozen), head output zeroed.
        with torch.no_grad():
            module.wide.weight.copy_(torch.as_tensor(rng.normal(0, 1e-3, module.wide.weight.shape)))
            module.wide.bias.zero_()
            module.head[-1].weight.zero_()
            module.head[-1].bias.zero_()
        module.wide.weight.requires_grad_(False)
        module.wide.bias.requires_grad_(False)
        start_is_candidate = True
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)

    marks: list[tuple[float, float]] = []

    def mark(epoch, rec):
        marks.append((time.perf_counter(), time.process_time()))
        print(f"[{kind} t={threads}] epoch {epoch} done at {marks[-1][0] - t0:.0f} s wall", file=sys.stderr, flush=True)

    fit, val = data.take(fit_idx), data.take(val_idx)
    del data
    setup_peak = _vm("VmHWM")
    try:  # reset the high-water mark: the training peak alone (data and model included, priors build not)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    t0, c0 = time.perf_counter(), time.process_time()
    res = Trainer(cfg, [mark]).fit(module, fit, val, start_is_candidate=start_is_candidate)
    walls = [b[0] - a[0] for a, b in zip(marks[:-1], marks[1:], strict=False)]
    cpus = [b[1] - a[1] for a, b in zip(marks[:-1], marks[1:], strict=False)]
    return {
        "kind": kind, "threads": threads, "epochs_timed": len(walls),
        "epoch_wall_s": walls, "epoch_cpu_s": cpus,
        "first_epoch_wall_s": marks[0][0] - t0, "first_epoch_cpu_s": marks[0][1] - c0,
        "fit_wall_s": res.seconds, "peak_rss_mib": _vm("VmHWM"), "setup_peak_rss_mib": setup_peak,
        "trainable_params": n_trainable, "n_pathways": int(priors.n_pathways),
        "membership_nnz": int(priors.membership.sum()), "n_fit": len(fit), "n_val": len(val),
        "steps_per_epoch": -(-len(fit) // cfg.batch_size),
        "val_loss": [h.get("val_loss") for h in res.history],
        "genexflow_file": genexflow.__file__, "torch": torch.__version__,
        "loadavg_start": load0, "loadavg_end": os.getloadavg(),
    }


def spawn(kind: str, code: str, threads: int, epochs: int, before_src: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if code == "before":
        env["PYTHONPATH"] = before_src
    cmd = [sys.executable, str(HERE), "--row", kind, "--threads", str(threads), "--epochs", str(epochs)]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)  # progress on stderr
    if out.returncode:
        raise RuntimeError(f"row {code}/{kind}/{threads} failed (see its stderr above)")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["code"] = code
    return row


def machine_facts() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def render(store: dict) -> str:
    rows = store["rows"]
    by = {(r["code"], r["kind"], r["threads"]): r for r in rows}
    m = store.get("machine", {})
    lines = [
        "# Training throughput at 10,000 samples x 20,000 genes (issue 18)",
        "",
        "`benchmarks/bench_speed.py`: the DEFAULT PathwayNet (`TrainConfig()` -> PathwayNetConfig defaults: GCN 8 x 2, "
        "readout 512/256, transformer d_model 32 x 2, autoencoder 256/32, crosstalk rank 4, wide path) on "
        "KEGG priors over 20,000 genes, full epochs of the real trainer loop (8,500 fit rows at batch 32 = "
        "266 steps, then the 1,500-row validation pass and early-stopping bookkeeping). Synthetic "
        "standardized float32 matrix (not `simulate_cohort`); the product's preprocessing keeps the 2,000 "
        "most variable genes by default (`preprocessing.max_genes`), this is the model at "
        "`max_genes=None`. before = commit dc16186, after = this commit's code. Epoch time: best of the "
        "timed epochs (epoch 0, which includes setup, is not counted); peak RSS = the training peak: VmHWM of "
        "a fresh process per row, reset once data, priors and model are built (it covers the 0.8 GB "
        "fit/validation copies of the matrix, model, optimizer state and activations).",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB, Python {m.get('python')}, "
        f"torch {rows[0]['torch'] if rows else '?'}; shared with another engineer's runs: load average per row "
        "below (1-min, start -> end).",
        "",
        "| threads | model | code | s/epoch wall | s/epoch CPU | epochs timed | peak RSS MiB | trainable params "
        "| load avg | speed-up vs before (wall / CPU) | RSS vs before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in (2, 1):
        for kind, code in (("pathwaynet", "before"), ("pathwaynet", "after"), ("peer", "after")):
            r = by.get((code, kind, t))
            if r is None:
                continue
            w, c = min(r["epoch_wall_s"]), min(r["epoch_cpu_s"])
            b = by.get(("before", "pathwaynet", t))
            a = by.get(("after", "pathwaynet", t))
            ratio = rss = ""
            if kind == "peer":  # not a before/after pair: how much slower PathwayNet (after) is than the MLP
                if a is not None:
                    ratio = (f"PathwayNet after takes {min(a['epoch_wall_s']) / w:.1f}x / "
                             f"{min(a['epoch_cpu_s']) / c:.1f}x the peer's time")
            elif b is not None and r is not b:
                ratio = f"{min(b['epoch_wall_s']) / w:.2f}x / {min(b['epoch_cpu_s']) / c:.2f}x"
                rss = f"{r['peak_rss_mib'] / b['peak_rss_mib']:.2f}"
            name = "PathwayNet" if kind == "pathwaynet" else "peer: plain MLP, same params"
            lines.append(
                f"| {t} | {name} | {code} | {w:.1f} | {c:.1f} | {r['epochs_timed']} | {r['peak_rss_mib']:.0f} "
                f"| {r['trainable_params'] / 1e6:.2f} M | {r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f} "
                f"| {ratio} | {rss} |")
    lines += ["", store.get("notes", "").strip(), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--rows", default="after,peer", help="comma list of before, after, peer")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per row (after one untimed epoch)")
    ap.add_argument("--before-src", default="/tmp/speed-before/src")
    ap.add_argument("--render", action="store_true", help="only rewrite speed.md from speed.json")
    ap.add_argument("--store", default=str(RESULTS / "speed.json"), help="JSON file the rows go to")
    ap.add_argument("--merge", nargs="*", default=[], help="other stores whose rows replace/extend this one's")
    args = ap.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, int(args.threads), args.epochs)))
        return
    store_path = Path(args.store)
    store = json.loads(store_path.read_text()) if store_path.exists() else {"rows": []}
    for other in args.merge:  # rows measured by a concurrent invocation into another store
        extra = json.loads(Path(other).read_text())["rows"]
        keys = {(r["code"], r["kind"], r["threads"]) for r in extra}
        store["rows"] = [r for r in store["rows"] if (r["code"], r["kind"], r["threads"]) not in keys] + extra
    if args.merge:
        store_path.write_text(json.dumps(store, indent=1))
    if not args.render:
        store["machine"] = machine_facts()
        for t in (int(s) for s in args.threads.split(",")):
            for what in args.rows.split(","):
                kind, code = ("peer", "after") if what == "peer" else ("pathwaynet", what)
                row = spawn(kind, code, t, args.epochs, args.before_src)
                print(json.dumps({k: row[k] for k in ("code", "kind", "threads", "epoch_wall_s", "epoch_cpu_s",
                                                       "peak_rss_mib", "genexflow_file")}), flush=True)
                store["rows"] = [r for r in store["rows"]
                                 if (r["code"], r["kind"], r["threads"]) != (code, kind, t)] + [row]
                store_path.write_text(json.dumps(store, indent=1))
    (RESULTS / "speed.md").write_text(render(store))


if __name__ == "__main__":
    main()
