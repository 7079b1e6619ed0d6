"""``genexflow export | serve | predict | score``: one ONNX artifact, a local Triton, online and batch inference."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from genexflow.cli._common import console, progress, step
from genexflow.errors import InputError
from genexflow.io import (
    atomic_output,
    check_output,
    check_unique_ids,
    read_matrix,
    read_sample_sheet,
    write_text_atomic,
)
from genexflow.paths import workspace_dir
from genexflow.serving import local_stack
from genexflow.serving.triton_server import TritonServer
from genexflow.stack import signals

_MODEL = typer.Option("genexflow_classifier", "--model-name", help="Triton model name.")


def export(
    bundle: Path = typer.Argument(..., help="Trained model bundle folder (bundle.json, preprocessing.pkl, model.pt)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: the bundle folder)."),
    latent: bool = typer.Option(False, "--latent", help="Add the autoencoder latent as a second output."),
) -> None:
    """Export preprocessing + model as ONE ONNX graph (raw expression in) with its JSON sidecar."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.export import export_bundle

    with step(f"export {bundle}"):
        art = export_bundle(bundle, out, include_latent=latent)
    console.print(f"{art.onnx_path} sha256 {art.sha256[:16]}… inputs "
                  f"{', '.join(f'{i.name}{i.shape}' for i in art.inputs)}", markup=False)


def serve(
    model: str = typer.Option("champion", "--model", help="Registry alias or version to serve."),
    name: str = typer.Option("genexflow-classifier", "--name", "-n", help="Registered model name."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI [default: "
                                            "$MLFLOW_TRACKING_URI or the workspace's store]."),
    artifact: Path | None = typer.Option(None, help="Serve this exported artifact instead of a registry version."),
    repository: Path | None = typer.Option(None, "--repository", help="Triton model repository [default: "
                                           "<workspace>/triton/models; workspace = $GENEXFLOW_WORKSPACE or "
                                           "./.genexflow]."),
    model_name: str = _MODEL,
    http_port: int | None = typer.Option(None, help="HTTP port (gRPC = +1, metrics = +2); default: free ports."),
    no_block: bool = typer.Option(False, "--no-block", help="Start, load, print the URL and return (the server "
                                  "keeps running, listed by `genexflow stack status`, stopped by `genexflow "
                                  "stack down`)."),
) -> None:
    """Start the local tritonserver (explicit model control), deploy + load the model, serve until Ctrl-C.

    Whatever goes wrong before the model serves (deploy, load, Ctrl-C, SIGTERM), the server is stopped:
    only a serving server is left running, and only with --no-block.
    """
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.registry import Registry
    from genexflow.serving.repository import deploy

    repository = repository or workspace_dir() / "triton" / "models"
    repository.mkdir(parents=True, exist_ok=True)
    service = f"serve-{model_name}"
    # models=[]: start empty, then deploy + load exactly the model asked for (explicit control mode)
    ports = (http_port, http_port + 1, http_port + 2) if http_port else (None, None, None)
    server = TritonServer(repository, *ports, models=[], run_dir=local_stack.default_state_dir() / service)
    detached = False
    try:
        with step("start tritonserver"):
            server.start()
        with step(f"deploy + load {model_name}"):
            if artifact is not None:
                res = deploy(artifact, repository, model_name, server.url)
            else:
                res = Registry(tracking_uri).deploy(name, model, repository, url=server.url, model_name=model_name)
        console.print(f"serving {model_name} (Triton version {res.triton_version}) at {server.url} "
                      f"and grpc://{server.grpc_url}", markup=False)
        if no_block:
            state = local_stack.record_service(service, {
                "pid": server.pid, "pid_file": str(server.pid_file), "url": server.url,
                "probe": f"/v2/models/{model_name}/ready", "grpc_url": server.grpc_url,
                "model_repository": str(repository), "log": str(server.log_file)})
            pid = server.detach()
            detached = True
            console.print(f"server pid {pid}; stop with: genexflow stack down (or kill -TERM {pid}); "
                          f"recorded in {state}", markup=False)
            return
        while True:  # until Ctrl-C or SIGTERM (raised as signals.Terminated by the CLI)
            time.sleep(0.5)
    except (KeyboardInterrupt, signals.Terminated):
        if no_block:
            raise
    finally:
        if not detached:
            server.stop()


def predict(
    file: Path = typer.Argument(..., help="Expression matrix (.csv/.tsv/.parquet; samples x genes or genes x samples)."),
    url: str = typer.Option(..., "--url", help="Triton URL, e.g. http://127.0.0.1:8000 or grpc://127.0.0.1:8001."),
    protocol: str | None = typer.Option(None, "--protocol", help="http or grpc (default: from the URL)."),
    samples: Path | None = typer.Option(None, "--samples", help="Sample sheet with covariate / batch columns."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Write predictions (.csv or .parquet); default stdout."),
    model_name: str = _MODEL,
    timeout: float = typer.Option(30.0, help="Per-request timeout (s)."),
    retries: int = typer.Option(3, help="Retries on connection errors."),
    max_missing: float = typer.Option(0.2, help="Refuse when more than this fraction of model genes is absent."),
) -> None:
    """Predict samples through a Triton server; genes are aligned to the model by ID."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.client import TritonClient

    if out is not None:
        check_output(out, [file, samples], what="-o/--out")
    sheet = read_sample_sheet(samples) if samples else None
    frame = read_matrix(file, sample_ids=list(sheet.index) if sheet is not None else None)
    check_unique_ids(frame, file)
    if sheet is not None:
        missing = frame.index.difference(sheet.index)
        if len(missing):
            raise InputError(f"{len(missing)} samples are not in the sample sheet (e.g. {', '.join(missing[:3])})")
        sheet = sheet.loc[frame.index]
    with TritonClient(url, model_name, protocol, timeout_s=timeout, retries=retries) as client:
        df, contract, absent = client.predict(frame, sheet, max_missing_fraction=max_missing)
    if absent:
        console.print(f"[yellow]{len(absent)} model genes absent from the input (filled as in training), "
                      f"e.g. {', '.join(absent[:5])}[/]")
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.batch import _version_label

    df.insert(len(df.columns), "model_version", _version_label(contract))
    if out is None:
        typer.echo(df.to_csv(), nl=False)
    elif out.suffix == ".parquet":
        with atomic_output(out) as tmp:
            df.to_parquet(tmp)
    else:
        write_text_atomic(out, df.to_csv())
    if out is not None:
        console.print(f"{len(df)} predictions -> {out}", markup=False)


def score(
    cohort: Path = typer.Argument(..., help="Cohort folder (expression.parquet + samples.csv), .parquet or .h5ad."),
    out: Path = typer.Option(..., "-o", "--out", help="Predictions Parquet file."),
    local: bool = typer.Option(False, "--local", help="Run onnxruntime in-process instead of calling Triton."),
    url: str | None = typer.Option(None, "--url", help="Triton URL (http:// or grpc://)."),
    protocol: str | None = typer.Option(None, "--protocol", help="http or grpc (default: from the URL)."),
    samples: Path | None = typer.Option(None, "--samples", help="Sample sheet (default: the cohort's samples.csv)."),
    chunk_size: int = typer.Option(1024, "--chunk-size", help="Rows per chunk (memory ~ chunk-size x concurrency)."),
    concurrency: int = typer.Option(4, "--concurrency", help="Chunks in flight."),
    artifact: Path | None = typer.Option(None, help="--local: exported artifact folder (model.onnx + model.json)."),
    model: str = typer.Option("champion", "--model", help="--local without --artifact: registry alias/version."),
    name: str = typer.Option("genexflow-classifier", "--name", "-n", help="Registered model name."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    model_name: str = _MODEL,
    threads: int = typer.Option(1, help="--local: onnxruntime threads per call."),
) -> None:
    """Score a cohort of any size in streamed chunks; resumes an interrupted run without duplicates."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.batch import PARTS_SUFFIX, CohortSource, LocalRunner, TritonRunner, score_cohort

    if local == (url is not None):
        raise InputError("choose one: --local (in-process onnxruntime) or --url URL (Triton)")
    check_output(out, [cohort, samples], what="-o/--out")
    src = CohortSource(cohort, samples)
    with tempfile.TemporaryDirectory() as tmp:
        if local:
            # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
            from genexflow.export import load_artifact

            if artifact is not None:
                runner = LocalRunner(load_artifact(artifact), threads)
            else:
                # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
                from genexflow.serving.registry import Registry

                art, v = Registry(tracking_uri).download(name, model, Path(tmp) / "artifact")
                runner = LocalRunner(art, threads, version_label=f"{name}/{v.version}")
        else:
            runner = TritonRunner(url, model_name, protocol)
        try:
            with progress() as bar:
                task = bar.add_task(f"score {cohort.name}", total=None)
                res = score_cohort(src, out, runner, chunk_size=chunk_size, concurrency=concurrency,
                                   on_progress=lambda n: bar.advance(task, n),
                                   on_total=lambda n: bar.update(task, total=n))
        except (KeyboardInterrupt, signals.Terminated):
            parts = out.with_name(out.name + PARTS_SUFFIX)
            n_done = len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0
            # plain echo: rich would shorten the path that the user needs in full
            typer.echo(f"interrupted: {n_done} finished chunk(s) are kept in {parts}; rerun the same command "
                       "(same input, -o and --chunk-size) to resume where it stopped", err=True)
            raise typer.Exit(130) from None
    skipped = f" ({res.n_skipped_chunks} chunks resumed from an earlier run)" if res.n_skipped_chunks else ""
    console.print(f"{res.n_rows} predictions -> {res.output} in {res.seconds:.1f} s "
                  f"({res.samples_per_s:,.0f} samples/s, model {', '.join(res.model_versions)}){skipped}",
                  markup=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("serve")(serve)
    app.command("predict")(predict)
    app.command("score")(score)
