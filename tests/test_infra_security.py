"""Security gates: bandit (medium severity and up) is clean on the shipped code, no secrets are committed,
credentials files are git-ignored, and the local services bind to 127.0.0.1 by default."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from _infra_helpers import REPO, tool

BANDIT_TARGETS = ("src", "components", "serving", "monitoring", "pipelines")

# (name, pattern) - concrete credential shapes, anywhere in a text file
TOKEN_PATTERNS = [
    ("private key", re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")),
]
# credentials inside URLs: scheme://user:password@host
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@")
# key = value assignments of secret-looking keys in config files
CONFIG_SUFFIXES = {".yaml", ".yml", ".env", ".ini", ".cfg", ".toml", ".json", ".conf", ".properties", ".sh"}
# (the key must END in the secret word: secretName/secretKey are references, not values)
ASSIGNMENT = re.compile(
    r"(?i)(?<![\w-])(?:[\w-]*[_-])?(?:password|passwd|secret|secret_key|api_key|apikey|access_key|token)"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"'#,}]+)")
PLACEHOLDER = re.compile(r"(?i)^(?:change_?me|\*+|x+|pw|pass|password|secret|token|none|null|true|false|"
                         r"example\S*|<[^>]+>|\$.*|\{.*|\S*_FILE|\S*secretKeyRef\S*|/\S+|\.\S+)$")


def _repo_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [REPO / p for p in out.split("\0") if p]


def scan_text(path: Path, text: str) -> list[str]:
    """Findings for one file: ``path:line: kind``."""
    findings = []
    config = path.suffix in CONFIG_SUFFIXES or path.name.endswith(".env.example")
    for no, line in enumerate(text.splitlines(), 1):
        for name, pat in TOKEN_PATTERNS:
            if pat.search(line):
                findings.append(f"{path}:{no}: {name}")
        for m in URL_CREDENTIALS.finditer(line):
            if not PLACEHOLDER.match(m.group(1)):
                findings.append(f"{path}:{no}: credentials in URL")
        if config and not line.lstrip().startswith("#"):
            for m in ASSIGNMENT.finditer(line):
                value = m.group(1)
                if len(value) >= 6 and not PLACEHOLDER.match(value):
                    findings.append(f"{path}:{no}: secret-looking assignment")
    return findings


def test_no_secrets_in_the_repository():
    findings = []
    for path in _repo_files():
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary
        findings += scan_text(path.relative_to(REPO), data.decode("utf-8", errors="replace"))
    assert not findings, "possible secrets committed:\n" + "\n".join(findings)


@pytest.mark.parametrize("text,kind", [
    # assembled at run time so that this file does not trip its own scan
    ("key: -----BEGIN RSA " + "PRIVATE KEY-----", "private key"),
    ("aws_access_key_id = AKIA" + "IOSFODNN7EXAMPLF", "AWS access key id"),
    ("MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:" + "s3cr3tP4ss@db:5432/mlflow", "credentials in URL"),
    ("password: " + "hunter2hunter2", "secret-looking assignment"),
    ("MINIO_ROOT_PASSWORD: " + "minio-root-pw-1", "secret-looking assignment"),
    ("token = ghp_" + "a1B2" * 9, "GitHub token"),
])
def test_scanner_finds_planted_secrets(text, kind):
    assert any(kind in f for f in scan_text(Path("planted.env"), text))


@pytest.mark.parametrize("text", [
    "password=CHANGE_ME", "password: ${DB_PASSWORD}", "postgresql://user:pw@127.0.0.1:5432/mlflow",
    "DB_PASSWORD_FILE: /var/run/secrets/genexflow/db/password", "secretKeyRef: {name: x, key: password}",
    "url: postgresql://genexflow:***@127.0.0.1:5432/db",
])
def test_scanner_ignores_placeholders(text):
    assert scan_text(Path("ok.yaml"), text) == []


def test_credential_files_are_git_ignored():
    secrets_dir = REPO / "infra" / "k8s" / "overlays" / "dev" / "secrets"
    for example in secrets_dir.glob("*.env.example"):
        real = example.with_suffix("")
        rc = subprocess.run(["git", "check-ignore", "-q", str(real)], cwd=REPO).returncode
        assert rc == 0, f"{real.relative_to(REPO)} must be git-ignored"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [t for t in tracked if t.endswith(".env") or Path(t).name in (".env", "credentials")]


def test_bandit_medium_clean():
    bandit = tool("bandit")
    proc = subprocess.run([bandit, "-r", *BANDIT_TARGETS, "--severity-level", "medium", "-f", "json", "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    issues = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not issues, "\n".join(issues)
    assert report["metrics"]["_totals"]["loc"] > 1000  # it really scanned the code


def test_bandit_flags_unsafe_code(tmp_path):
    (tmp_path / "bad.py").write_text("import subprocess\n\ndef f(cmd):\n    subprocess.call(cmd, shell=True)\n")
    proc = subprocess.run([tool("bandit"), "-r", str(tmp_path), "--severity-level", "medium", "-f", "json", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert [r["test_id"] for r in json.loads(proc.stdout)["results"]] == ["B602"]


def test_local_services_default_to_localhost(tmp_path):
    from genexflow.serving.triton_server import TritonServer
    from genexflow.stack.mlflow_server import MlflowServer

    t = TritonServer(tmp_path, 1, 2, 3)
    argv = t.command()
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in argv
    m = MlflowServer(tmp_path, port=5)
    assert m.command()[m.command().index("--host") + 1] == "127.0.0.1"
