"""The import contracts in pyproject.toml (``[tool.importlinter]``) hold: layers import one way.

``cli/``, ``components/``, ``pipelines/``, ``serving/`` and ``monitoring/`` live at the repository top level
but install as ``genexflow.<folder>`` (setup.py's ``MAPPED``). import-linter reads a package from one folder,
so the test builds the installed layout as a tree of symlinks (``genexflow/`` = ``src/genexflow/*`` plus
the mapped folders) and runs ``lint-imports`` on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("cli", "components", "pipelines", "serving", "monitoring")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_layout(dst: Path) -> Path:
    """``dst/genexflow``: symlinks to every entry of ``src/genexflow`` and to the mapped folders."""
    pkg = dst / "genexflow"
    pkg.mkdir()
    for entry in (ROOT / "src" / "genexflow").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for top in MAPPED:
        (pkg / top).symlink_to(ROOT / top)
    return pkg


def lint_imports(tree: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "250"}  # no wrapped contract names
    return subprocess.run([str(LINT_IMPORTS), str(config), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def broken_contracts(output: str) -> list[str]:
    """Names of the contracts ``lint-imports`` reports as BROKEN."""
    return re.findall(r"^(.+?) BROKEN$", output, flags=re.MULTILINE)


def test_import_contracts_hold(tmp_path):
    res = lint_imports(tmp_path, ROOT / "pyproject.toml") if installed_layout(tmp_path) else None
    out = res.stdout + res.stderr
    assert "Contracts:" in out, out  # it read the config and analysed the graph
    broken = broken_contracts(out)
    assert res.returncode == 0 and not broken, f"broken import contracts: {broken}\n{out}"


def test_a_core_module_importing_an_outer_layer_breaks_the_contract(tmp_path):
    """The check can fail: a core module that imports serving is reported, naming the contract."""
    tree = tmp_path / "tree"
    tree.mkdir()
    pkg = installed_layout(tree)
    bad = tmp_path / "errors.py"
    bad.write_text((ROOT / "src" / "genexflow" / "errors.py").read_text()
                   + "\nfrom genexflow.serving import client  # noqa: E402,F401\n")
    (pkg / "errors.py").unlink()
    (pkg / "errors.py").symlink_to(bad)
    res = lint_imports(tree, ROOT / "pyproject.toml")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert any(name.startswith("layers: cli") for name in broken_contracts(out)), out
    assert "genexflow.errors -> genexflow.serving.client" in out, out


@pytest.mark.parametrize("folder", MAPPED)
def test_mapped_folders_match_setup(folder):
    # the layout above must follow setup.py's MAPPED, or the contracts check a package nobody installs
    assert re.search(rf'MAPPED = \(.*"{folder}"', (ROOT / "setup.py").read_text())


#: Libraries that take seconds to import: the CLI's command modules (all imported at start, so
#: ``genexflow --help`` lists them) import them inside the commands that use them.
HEAVY_AT_CLI_START = ("torch", "sklearn", "mlflow", "kfp", "evidently", "great_expectations", "tritonclient",
                      "onnx", "onnxruntime", "matplotlib", "optuna", "shap", "captum", "torch_geometric", "dvc",
                      "anndata")


def test_cli_start_imports_no_heavy_library():
    code = ("import sys, genexflow.cli.main; "
            f"print(' '.join(m for m in {HEAVY_AT_CLI_START!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert res.stdout.split() == [], (
        f"`genexflow --help` imports {res.stdout.split()}: import them inside the command (with a '# lazy:' "
        "comment); `python -X importtime -c 'import genexflow.cli.main'` shows which module pulls them")
