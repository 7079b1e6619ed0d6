"""Dockerfiles: hadolint finds nothing (any severity), checkov's Dockerfile checks pass, and the project's
image rules hold (multi-stage, pinned bases, dependencies from constraints.txt, non-root final stage, no
build tools in the final stage, official tritonserver base). No Docker engine here: nothing is built."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from _infra_helpers import INFRA, REPO, TOOLS_BIN, tool

DOCKERFILES = sorted((INFRA / "docker").glob("*.Dockerfile"))
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|cmake|git)\b")


def test_dockerfiles_present():
    names = {p.name for p in DOCKERFILES}
    assert {"component-cpu.Dockerfile", "component-cuda.Dockerfile", "triton.Dockerfile", "mlflow.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_problems(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install numpy\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3008" in proc.stdout


def _stages(text: str) -> list[list[str]]:
    """Logical instructions (continuations joined, comments dropped), split per FROM."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(buf)
            buf = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_rules(dockerfile):
    text = dockerfile.read_text()
    stages = _stages(text)
    # A base given as a build argument (make images passes a local base) must default to a pinned image.
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text.split("\nFROM ", 1)[0], re.M))
    for st in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), st[0].split()[1])
        assert "$" not in base and ":" in base and not base.endswith(":latest"), f"unpinned base {base}"
    final = stages[-1]
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage must run as a non-root user"
    assert not [ln for ln in final if ln.upper().startswith("RUN ") and BUILD_TOOLS.search(ln)], \
        "no package managers/compilers in the final stage"
    assert any(ln.upper().startswith("HEALTHCHECK ") for ln in final)
    if dockerfile.name == "triton.Dockerfile":
        assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", final[0].split()[1])
        entry = " ".join(ln for ln in final if ln.upper().startswith("ENTRYPOINT"))
        assert "--model-repository=/models" in entry and "--model-control-mode=explicit" in entry
        return
    assert len(stages) >= 2, "multi-stage build expected"
    build = " ".join(ln for st in stages[:-1] for ln in st)
    assert "-c constraints" in build, "dependencies must be installed with the pinned constraints"
    assert any(ln.upper().startswith("COPY --FROM=") for ln in final)
    if dockerfile.name == "component-cpu.Dockerfile":
        # CPU torch goes in first, from the CPU wheel index, at the pinned version
        torch = next(ln for ln in build.split(" && ") if "torch==" in ln)
        pin = next(ln.split("==", 1)[1] for ln in (REPO / "constraints.txt").read_text().splitlines()
                   if ln.startswith("torch=="))
        assert f'"torch=={pin}"' in torch and "TORCH_INDEX_URL" in torch
        assert build.index("torch==") < build.index("-c constraints.txt .")


def test_dockerignore_keeps_secrets_and_venvs_out():
    for df in DOCKERFILES:
        ignore = Path(f"{df}.dockerignore")
        assert ignore.exists(), f"{ignore.name} missing"
        rules = ignore.read_text().split()
        assert rules[0] == "**", "deny by default, then allow what the build needs"
        assert not [r for r in rules if r.startswith("!") and (".venv" in r or ".env" in r or "infra/k8s" in r)]


def test_checkov_dockerfiles(tmp_path):
    checkov = tool("checkov", where=TOOLS_BIN, hint="make tools-env (checkov lives in .venv-tools)")
    proc = subprocess.run([checkov, "-d", str(INFRA / "docker"), "--framework", "dockerfile", "--output", "json",
                           "--compact", "--skip-download"], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE"})
    data = json.loads(proc.stdout)
    data = data if isinstance(data, list) else [data]
    failed = [f"{c['check_id']} {c['file_path']}" for r in data for c in r["results"].get("failed_checks", [])]
    assert not failed, failed
    assert sum(r["summary"]["passed"] for r in data) > 100
