"""Distributed entry point: ``torchrun --nproc_per_node N -m genexflow.training COHORT --label COL --out DIR``.

Every rank reads the cohort and fits the (deterministic) preprocessing and priors itself, then the trainer
runs under DDP (gloo on CPU, NCCL on CUDA) with the global batch split across ranks. Rank 0 writes the
model bundle and ``metrics.json`` (per-epoch history and, with ``--eval``, metrics on an evaluation
cohort). Run without torchrun it trains in one process, which is how the equivalence test compares them.
The Kubeflow ``PyTorchJob`` in ``infra/k8s/training/`` runs this same module on several nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genexflow.metrics import evaluate
from genexflow.training.config import parse_overrides
from genexflow.training.cv import encode_labels
from genexflow.training.inputs import build_config, load_training_cohort
from genexflow.training.model import TrainedModel
from genexflow.training.trainer import init_distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m genexflow.training", description=__doc__.splitlines()[0])
    p.add_argument("cohort", help="cohort folder, .h5ad, matrix file (with --samples) or shipped dataset name")
    p.add_argument("--samples")
    p.add_argument("--label", required=True)
    p.add_argument("--task")
    p.add_argument("--value-type")
    p.add_argument("--batch-column")
    p.add_argument("--covariates", help="comma-separated")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across ranks)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--config", help="YAML/JSON TrainConfig file")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE override (repeatable)")
    p.add_argument("--eval", help="cohort to evaluate the trained model on (rank 0)")
    p.add_argument("--out", required=True, help="bundle folder (rank 0 writes it)")
    p.add_argument("--no-reference", action="store_true", help="skip the drift reference profile")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    cfg = build_config(
        args.config, parse_overrides(args.set), task=args.task, label=args.label, batch_column=args.batch_column,
        covariates=[c for c in (args.covariates or "").split(",") if c] or None, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
    )
    dist = init_distributed(cfg.device)
    try:
        cohort, _ = load_training_cohort(args.cohort, args.samples, args.value_type)
        model = TrainedModel.fit(cohort, cfg)
        if dist.is_main:
            out = Path(args.out)
            model.info.extra["world_size"] = dist.world_size
            model.save(out, reference=None if args.no_reference else cohort)
            record: dict = {"world_size": dist.world_size, "history": model.history,
                            "best_epoch": model.info.extra["best_epoch"]}
            if args.eval:
                ev, _ = load_training_cohort(args.eval, None, None)
                lab = encode_labels(ev, cfg, model.info.class_names or None)
                ev = ev.subset(lab.labeled)
                arr = model.predict_arrays(ev)
                o = arr["proba"] if cfg.task == "classification" else arr["prediction"]
                record["eval"] = evaluate(cfg.task, lab.y[lab.labeled], o)
                record["eval_output"] = o.tolist()
            (out / "metrics.json").write_text(json.dumps(record, indent=1, default=float))
    finally:
        if dist.active:
            # lazy: only needed for DDP runs
            import torch.distributed as tdist

            tdist.barrier()
            tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
