"""The images, built for real (buildah, local Debian base; infra/scripts/build_images.py = ``make images``)
and used: the pipeline's own component executors run inside the CPU image as its non-root user and give
the host's results, the MLflow image serves /health, the CPU Triton image serves an exported model equal
to onnxruntime, every image has an SBOM, and the compiled pipelines name exactly the tags built.

One build per session (the module fixture); buildah keeps the base image and the layers between runs, so
a warm run rebuilds nothing. Skips with a message where buildah/mmdebstrap are missing (`make sysdeps`).
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects of image_steps

import json
import os
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil
import pytest
import torch
import yaml
from _buildah import REPO, BuildahTaskHandler, Container, image_config, load_build_script, stop
from kfp import dsl, local
from kfp.dsl import Dataset, Model
from kfp.local import docker_task_handler

from genexflow import datasets, images
from genexflow.bundle import load_bundle
from genexflow.cli.pipeline import DEMO_TRAIN_CONFIG
from genexflow.cohort import Cohort
from genexflow.components.data import ingest_validate
from genexflow.components.serving import export_onnx
from genexflow.components.training import preprocess_fit, train
from genexflow.export import load_artifact, run_onnx
from genexflow.pipelines.compile import compile_pipeline, compiled_dir
from genexflow.serving.client import TritonClient
from genexflow.serving.inputs import build_inputs
from genexflow.serving.repository import deploy

build_images = load_build_script()
pytestmark = pytest.mark.skipif(build_images.have_buildah() is not None,
                                reason=f"images cannot be built here: {build_images.have_buildah()}")
#: The CPU component image is always built (the in-image pipeline steps). The MLflow and CPU Triton images
#: are built and checked where this machine already holds them (``make images`` built them once; buildah
#: keeps them, so the check is warm) or with GENEXFLOW_TEST_ALL_IMAGES=1: built cold on a fresh machine they
#: add ~12 minutes that would push ``make test`` past CI's 45-minute budget (docs/infra.md).
OPTIONAL = ("mlflow", "triton-cpu")
BUILT = ("component-cpu", *(name for name in OPTIONAL
                            if os.environ.get("GENEXFLOW_TEST_ALL_IMAGES") == "1"
                            or build_images.have_buildah() is None
                            and build_images.image_info(build_images.IMAGES[name].tag) is not None))


def _needs(name: str) -> None:
    if name not in BUILT:
        pytest.skip(f"the {name} image is not on this machine: `make images` builds it (or set "
                    "GENEXFLOW_TEST_ALL_IMAGES=1); make test skips its cold build to stay in CI's time budget")
#: Both sides of the host-vs-image comparison use one thread (thread count changes float summation order).
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
TOL = 1e-6


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """``make images`` for the three images (warm: every build key matches, nothing is rebuilt)."""
    out = tmp_path_factory.mktemp("images")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "infra" / "scripts" / "build_images.py"),
                           "--images", ",".join(BUILT), "--no-lint", "--out", str(out)],
                          capture_output=True, text=True, timeout=3000, env=dict(os.environ, QUIET="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    report["seconds"] = time.monotonic() - t0
    report["out"] = out
    print(proc.stdout)
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the server in the container exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - 127.0.0.1
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} not ready after {timeout} s: {log.read_text()[-3000:]}")


# --- the build -------------------------------------------------------------------------------------------------
def test_images_built_within_budget(built):
    got = {r["name"]: r for r in built["images"]}
    assert set(got) == set(BUILT)
    for name, r in got.items():
        assert r["tag"] == build_images.IMAGES[name].tag
        assert build_images.image_info(r["tag"]) is not None
        assert 0 < r["size_mb"] <= r["budget_mb"], f"{name}: {r['size_mb']:.0f} MB over {r['budget_mb']} MB"
    print(json.dumps({n: {k: got[n][k] for k in ("seconds", "size_mb", "budget_mb", "cached")} for n in got}))


def test_budget_check_fails_an_oversized_image(built, monkeypatch, capsys):
    """The same script with a 1 MB budget: the (cached) image is over it and the build exits 1."""
    spec = build_images.IMAGES["component-cpu"]
    monkeypatch.setitem(build_images.IMAGES, "component-cpu", build_images.ImageSpec(spec.dockerfile, 1))
    assert build_images.main(["--images", "component-cpu", "--no-lint", "--no-sbom",
                              "--out", str(built["out"] / "b")]) == 1
    assert "OVER BUDGET" in capsys.readouterr().out


def test_production_dockerfiles_lint_and_default_to_public_bases():
    for df in build_images.LINT_ONLY:
        build_images.lint_only(df)  # raises with hadolint's findings
    for name in [*build_images.LINT_ONLY, *(s.dockerfile for s in build_images.IMAGES.values())]:
        text = (REPO / "infra" / "docker" / name).read_text()
        if name != "triton.Dockerfile":
            assert "ARG BASE_IMAGE=python:3.11.7-slim-bookworm" in text and "FROM ${BASE_IMAGE}" in text


def test_the_image_holds_this_checkout_of_genexflow(built):
    """Every module of the package in the image is byte-identical to this checkout's: a cached build step
    must not keep an earlier build's genexflow (buildah keyed a RUN --mount=from=build install on its text
    alone, so the image kept old code after a change; the wheel is now COPYed, keyed on its content)."""
    import hashlib

    import genexflow

    host_root = Path(genexflow.__file__).parent
    host = {str(p.relative_to(host_root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(host_root.rglob("*.py"))}
    probe = ("import genexflow, hashlib, json, pathlib; r = pathlib.Path(genexflow.__file__).parent; "
             "print(json.dumps({str(p.relative_to(r)): hashlib.sha256(p.read_bytes()).hexdigest() "
             "for p in r.rglob('*.py')}))")
    with Container(images.COMPONENT_CPU) as ctr:
        proc = ctr.run(["python", "-c", probe])
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)
    stale = sorted(f for f, digest in host.items() if image.get(f) != digest)
    assert len(host) > 50 and not stale, f"{len(stale)} modules differ from this checkout, e.g. {stale[:5]}"


def test_torch_in_the_image_is_the_hosts_cpu_wheel(built):
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    rel = lib.relative_to(Path(torch.__file__).parents[1])
    with Container(images.COMPONENT_CPU) as ctr:
        proc = ctr.run(["sh", "-c", f"python -c 'import torch; print(torch.__version__)' && "
                                    f"sha256sum /opt/venv/lib/python3.11/site-packages/{rel}"])
    assert proc.returncode == 0, proc.stderr
    version, digest = proc.stdout.split()[:2]
    assert version == torch.__version__ == "2.13.0+cpu"
    host = subprocess.run(["sha256sum", str(lib)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert digest == host


# --- the CPU component image ---------------------------------------------------------------------------------
def test_user_healthcheck_and_writable_paths(built):
    cfg = image_config(images.COMPONENT_CPU)
    assert cfg["User"] == "10001:10001" and cfg["Entrypoint"] == ["genexflow"]
    check = cfg["Healthcheck"]["Test"]
    assert check[0] == "CMD"
    probe = "; ".join(f"touch {p}/.w 2>/dev/null && echo {p}=yes || echo {p}=no"
                      for p in ("/home/genexflow", "/tmp", "/", "/opt/venv", "/opt/venv/bin", "/usr/local/bin",
                                "/etc", "/var", "/usr/lib/python3.11"))
    with Container(images.COMPONENT_CPU) as ctr:
        health = ctr.run(check[1:])
        broken = ctr.run([*check[1:3], "import genexflow_missing"])
        who = ctr.run(["sh", "-c", f"id -u; id -g; {probe}"])
        helped = ctr.run(["genexflow", "--help"])
    assert health.returncode == 0, health.stderr
    assert broken.returncode != 0  # the check can fail
    lines = who.stdout.split()
    assert lines[:2] == ["10001", "10001"]
    writable = dict(line.split("=") for line in lines[2:])
    assert writable == {"/home/genexflow": "yes", "/tmp": "yes", "/": "no", "/opt/venv": "no",
                        "/opt/venv/bin": "no", "/usr/local/bin": "no", "/etc": "no", "/var": "no",
                        "/usr/lib/python3.11": "no"}
    assert helped.returncode == 0 and "ingest" in helped.stdout and "train" in helped.stdout


class Outputs(NamedTuple):
    cohort: Dataset
    preprocessor: Model
    test: Dataset
    bundle: Model
    onnx: Model


@dsl.pipeline(name="image-steps")
def image_steps(expression_uri: str, samples_uri: str, tracking_uri: str, config: dict) -> Outputs:
    """The training pipeline's first steps, as its components (the same executors) chain them."""
    ing = ingest_validate(expression_uri=expression_uri, samples_uri=samples_uri, label_column="label",
                          ingest_config={"data_docs": False}, run_id="images-test")
    pre = preprocess_fit(cohort=ing.outputs["cohort"], label_column="label", config=config, seed=0)
    tr = train(train=pre.outputs["train"], preprocessor=pre.outputs["preprocessor"], label_column="label",
               pipeline_job="images-test", config=config,
               cv_folds=0, baselines=["logreg_l2"], explain_samples=0, seed=0, mlflow_tracking_uri=tracking_uri)
    exp = export_onnx(bundle=tr.outputs["bundle"])
    return Outputs(ing.outputs["cohort"], pre.outputs["preprocessor"], pre.outputs["test"], tr.outputs["bundle"],
                   exp.outputs["onnx"])


@pytest.fixture(scope="module")
def steps(built, tmp_path_factory):
    """ingest-validate -> preprocess-fit -> train (2 epochs) -> export-onnx on the shipped golub cohort, with
    kfp.local: once in the CPU image (the Docker runner, buildah underneath), once on the host (subprocess
    runner), same arguments and seed. Returns both runs' output paths and times."""
    base = tmp_path_factory.mktemp("steps")
    golub = datasets.load("golub")
    config = {**DEMO_TRAIN_CONFIG, "epochs": 2}

    def run(root: Path, runner) -> dict:
        root.mkdir()
        root.chmod(0o777)  # the image's user (uid 10001) writes the outputs
        cohort_dir = golub.write(root / "golub")  # inside the pipeline root: the one folder mounted
        local.init(runner=runner, pipeline_root=str(root), raise_on_error=True, enable_caching=False)
        t0 = time.monotonic()
        task = image_steps(expression_uri=str(cohort_dir / "expression.parquet"),
                           samples_uri=str(cohort_dir / "samples.csv"), tracking_uri=f"sqlite:///{root}/mlflow.db",
                           config=config)
        return {"seconds": time.monotonic() - t0, **{k: Path(v.path) for k, v in task.outputs.items()}}

    mp = pytest.MonkeyPatch()
    try:
        for k, v in THREADS.items():
            mp.setenv(k, v)
        mp.setattr(BuildahTaskHandler, "ENV", dict(THREADS))
        mp.setattr(docker_task_handler, "DockerTaskHandler", BuildahTaskHandler)
        image = run(base / "image", local.DockerRunner())
        host = run(base / "host", local.SubprocessRunner(use_venv=False))
    finally:
        mp.undo()
    return {"image": image, "host": host, "base": base}


def test_component_image_in_pipeline_spec_is_the_built_tag(built, tmp_path):
    # the components were imported without GENEXFLOW_BASE_IMAGE: their image is the constant
    assert ingest_validate.component_spec.implementation.container.image == images.COMPONENT_CPU
    fresh = [compile_pipeline("training", tmp_path / f"training-{t}.{'k8s.' if t == 'cluster' else ''}yaml", target=t)
             for t in ("portable", "cluster")]
    for f in [*fresh, *sorted(compiled_dir().glob("*.yaml"))]:
        spec = next(yaml.safe_load_all(f.read_text()))
        used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        allowed = {images.COMPONENT_CPU, images.COMPONENT_CUDA} if f.name.endswith(".k8s.yaml") else {images.COMPONENT_CPU}
        assert images.COMPONENT_CPU in used and used <= allowed, (f.name, used)
    assert build_images.image_info(images.COMPONENT_CPU) is not None  # what they name is what was built


def test_k8s_manifests_pin_the_same_tags():
    tags = {}
    for k in ("base", "training"):
        for entry in yaml.safe_load((REPO / "infra" / "k8s" / k / "kustomization.yaml").read_text()).get("images", []):
            tags[f"{entry.get('newName', entry['name'])}@{k}"] = f"{entry.get('newName', entry['name'])}:{entry['newTag']}"
    assert set(tags.values()) >= {images.COMPONENT_CPU, images.MLFLOW, images.TRITON, images.COMPONENT_CUDA}, tags


def test_steps_in_the_image_equal_the_host(steps):
    im, ho = steps["image"], steps["host"]
    assert len(BuildahTaskHandler.LOG) == 4  # the four steps ran in the image
    # ingest: the same validated cohort
    a, b = (Cohort.read(r["cohort"]) for r in (im, ho))
    assert a.sample_ids.tolist() == b.sample_ids.tolist() and a.genes.tolist() == b.genes.tolist()
    np.testing.assert_array_equal(a.X, b.X)
    # preprocess: same split, same fitted preprocessing (applied here to the held-out rows)
    test_a, test_b = (Cohort.read(r["test"]) for r in (im, ho))
    assert test_a.sample_ids.tolist() == test_b.sample_ids.tolist() and test_a.n_samples > 0
    pres = []
    for r in (im, ho):
        with open(r["preprocessor"], "rb") as fh:
            pres.append(pickle.load(fh))  # noqa: S301 - the test's own artifacts
    za, zb = (p.transform(test_a) for p in pres)
    za, zb = (np.asarray(getattr(z, "X", z), dtype=np.float64) for z in (za, zb))
    pre_diff = float(np.abs(za - zb).max())
    assert pre_diff <= TOL
    # train: the same weights after 2 epochs and the same held-out probabilities
    (_, _, sa), (_, _, sb) = (load_bundle(r["bundle"]) for r in (im, ho))
    wa, wb = sa["state_dict"], sb["state_dict"]
    assert wa.keys() == wb.keys()
    w_diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())
    assert w_diff <= TOL
    arts = [load_artifact(r["onnx"]) for r in (im, ho)]
    feeds, _ = build_inputs(arts[0].info, test_a.frame(), test_a.samples, [i.name for i in arts[0].inputs])
    pa, pb = (run_onnx(art.onnx_path, feeds)["probabilities"] for art in arts)
    p_diff = float(np.abs(pa - pb).max())
    assert p_diff <= TOL
    print(f"host vs image: preprocess max|diff| {pre_diff:.3g}, weights {w_diff:.3g}, held-out probabilities "
          f"{p_diff:.3g}; steps took {im['seconds']:.0f} s in the image, {ho['seconds']:.0f} s on the host")


# --- MLflow and Triton images --------------------------------------------------------------------------------
def test_mlflow_image_serves_health(built, tmp_path):
    _needs("mlflow")
    port = _free_port()
    env = {"MLFLOW_BACKEND_STORE_URI": "sqlite:////tmp/mlflow.db", "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/artifacts",
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"}
    cfg = image_config(images.MLFLOW)
    assert cfg["User"] == "10001:10001"
    with Container(images.MLFLOW) as ctr:
        # the image's own entry point; chroot isolation shares the host's network: 127.0.0.1 is the same
        proc = ctr.popen(cfg["Entrypoint"], tmp_path / "mlflow.log", env=env)
        try:
            waited = _wait_http(f"http://127.0.0.1:{port}/health", proc, tmp_path / "mlflow.log")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:  # noqa: S310
                assert r.read() == b"OK"
            # the HEALTHCHECK command, run in the image next to the server it checks (MLFLOW_PORT differs
            # from the default 5000 here, so point it at this port)
            check = cfg["Healthcheck"]["Test"][1:]
            health = ctr.run([*check[:-1], check[-1].replace(":5000/", f":{port}/")])
            assert health.returncode == 0, health.stderr
            # the same PID namespace: the server's processes are visible here, and run as the image's user
            # (buildah's own helper processes in the group run as root; the server's are python/mlflow)
            server = [p for p in psutil.process_iter(["cmdline", "uids", "name"])
                      if _pgid(p.pid) == proc.pid and "buildah" not in p.info["name"]
                      and any("mlflow" in a for a in p.info["cmdline"] or [])]
            assert server and {p.info["uids"].real for p in server} == {10001}, \
                [(p.info["name"], p.info["uids"], p.info["cmdline"][:3]) for p in server]
        finally:
            stop(proc)
    print(f"mlflow image: /health after {waited:.1f} s")


def test_triton_cpu_image_serves_the_exported_model(built, steps, tmp_path):
    _needs("triton-cpu")
    art = load_artifact(steps["image"]["onnx"])  # exported inside the CPU image
    repo = tmp_path / "models"
    res = deploy(art, repo, "golub")
    # deploy writes version folders atomically (private temp folders, then renamed): as root here, so let
    # the image's user read them (in a cluster the deploy step runs as that user)
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
    cfg = image_config(images.TRITON_CPU)
    assert cfg["User"] == "10001:10001"
    ports = [_free_port() for _ in range(3)]
    bind = [f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    test = Cohort.read(steps["image"]["test"])
    feeds, _ = build_inputs(art.info, test.frame(), test.samples, [i.name for i in art.inputs])
    want = run_onnx(art.onnx_path, feeds)["probabilities"]
    with Container(images.TRITON_CPU) as ctr:
        proc = ctr.popen([*cfg["Entrypoint"], *bind], tmp_path / "triton.log", volumes={str(repo): "/models:ro"})
        try:
            waited = _wait_http(f"http://127.0.0.1:{ports[0]}/v2/health/ready", proc, tmp_path / "triton.log")
            with TritonClient(f"http://127.0.0.1:{ports[0]}", "golub") as client:
                df, contract, missing = client.predict(test.frame(), test.samples)
            got = df.filter(like="p_").to_numpy()
        finally:
            stop(proc)
    assert contract.version == res.triton_version and contract.sha256 == art.sha256 and not missing
    diff = float(np.abs(got - want).max())
    assert got.shape == want.shape and diff <= TOL
    print(f"triton-cpu image: ready after {waited:.1f} s; Triton vs onnxruntime max|diff| {diff:.3g}")


# --- SBOM + audit ----------------------------------------------------------------------------------------------
def test_sbom_and_audit_per_image(built):
    for r in built["images"]:
        frozen = (built["out"] / f"{r['name']}.requirements.txt").read_text().split()
        pins = dict(line.split("==", 1) for line in frozen)
        if r["audit"].get("status") == "skipped":
            pytest.skip(f"no SBOM tools ({r['audit']['reason']})")
        sbom = json.loads((built["out"] / f"{r['name']}.cdx.json").read_text())
        assert sbom["bomFormat"] == "CycloneDX"
        listed = {c["name"].lower(): c["version"] for c in sbom["components"]}
        assert listed == {k.lower(): v for k, v in pins.items()}
        key, version = {"component-cpu": ("torch", "2.13.0+cpu"), "mlflow": ("mlflow", images.MLFLOW_VERSION),
                        "triton-cpu": ("nvidia-pytriton", None)}[r["name"]]
        assert key in listed and listed[key] == (version or listed[key])
        # report, never fail, when the advisory database cannot be reached
        assert r["audit"]["status"] in {"clean", "vulnerable", "unreachable"}, r["audit"]
        print(f"{r['name']}: {len(listed)} packages in the SBOM, audit {r['audit']['status']} "
              f"({r['audit'].get('not_audited', 0)} not audited: {r['audit'].get('reason', '')[:80]})")
