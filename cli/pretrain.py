"""``genexflow pretrain``: a denoising autoencoder on all available expression (no labels), for
``genexflow train --init-from``."""

from __future__ import annotations

from pathlib import Path

import typer

from genexflow.cli._common import console, progress


def pretrain(
    cohorts: list[str] = typer.Argument(..., help="Cohort folders, .h5ad files or shipped dataset names: the "
                                                  "training cohort plus any unlabeled cohorts (one platform)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for encoder.pt + encoder.json."),
    ae_hidden: int = typer.Option(256, "--ae-hidden", help="Encoder hidden width (the model's model.ae_hidden)."),
    latent_dim: int = typer.Option(32, "--latent-dim", help="Latent size (the model's model.latent_dim)."),
    epochs: int = typer.Option(100, "--epochs", help="Maximum epochs (early stopping on held-out reconstruction)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Mini-batch size."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    mask: float = typer.Option(0.25, "--mask", help="Fraction of genes masked per sample and step."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    register_as: str = typer.Option("genexflow-encoder", "--register-as", help="MLflow registered model name."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI [default: "
                                                                  "$MLFLOW_TRACKING_URI or sqlite .genexflow/mlflow.db]."),
    experiment: str = typer.Option("genexflow", "--experiment", help="MLflow experiment."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Write the encoder only; no MLflow run."),
) -> None:
    """Pretrain the autoencoder branch without labels; fine-tune with `genexflow train --init-from OUT`.

    Example: genexflow pretrain bladderbatch extra_arrays/ --out encoders/bladder --epochs 50
    """
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.training.inputs import load_training_cohort
    from genexflow.training.pretrain import PretrainConfig, register_encoder
    from genexflow.training.pretrain import pretrain as run_pretrain

    loaded = [load_training_cohort(c, None, None)[0] for c in cohorts]
    cfg = PretrainConfig(ae_hidden=ae_hidden, latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, lr=lr,
                         mask_fraction=mask, seed=seed)
    with progress() as bar:
        task = bar.add_task("pretraining epochs", total=epochs)

        def on_epoch(epoch: int, m: dict) -> None:
            bar.update(task, completed=epoch + 1, description=f"pretraining (val reconstruction {m['val_loss']:.3f})")

        enc = run_pretrain(loaded, cfg, on_epoch=on_epoch)
    enc.save(out)
    best = min(h["val_loss"] for h in enc.history)
    console.print(f"encoder: {len(enc.genes)} genes x {enc.n_samples} samples from {', '.join(enc.sources)}; "
                  f"{len(enc.history)} epochs, best held-out reconstruction MSE {best:.4f}", markup=False)
    if not no_tracking:
        # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
        from genexflow.training.tracking import default_tracking_uri

        reg = register_encoder(enc, out, tracking_uri or default_tracking_uri(), experiment, register_as)
        console.print(f"MLflow run {reg['run_id']}; registered {reg['model_name']} version {reg['version']}",
                      markup=False)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
