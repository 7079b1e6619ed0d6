"""Data lineage: content hashes of inputs and the DVC md5 of the validated data.

:func:`dvc_md5` computes the md5 DVC records for a file or folder (dvc-data's own hashing, so the value
equals what ``dvc add`` writes into the ``.dvc`` file, ``<md5>.dir`` for folders) and works outside a DVC
repository too, so lineage always has a value. Inside a DVC repository :func:`dvc_add` tracks the data
folder (``dvc add data``; ``data.dvc`` at the top level, see DESIGN.md), caches it and optionally pushes
it to the default remote.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml

from genexflow.errors import GenexflowError, InputError


class LineageError(GenexflowError):
    """DVC could not track or push the data (another dvc process, an overlapping .dvc file, ...)."""


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """Plain md5 of a file's bytes (what DVC 3 records for a file)."""
    h = hashlib.md5(usedforsecurity=False)  # content fingerprint (DVC-compatible), not security
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC would record for ``path``: the file md5, or ``<md5>.dir`` for a folder.

    Uses dvc-data's tree hashing (a dry-run build into a throw-away object store), so the value is the
    one ``dvc add path`` writes, in or outside a DVC repository.
    """
    # lazy: dvc takes seconds to import
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import localfs

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(path)
    with tempfile.TemporaryDirectory(prefix="genexflow-dvc-") as tmp:
        odb = HashFileDB(localfs, tmp)
        _, _, obj = build(odb, str(path), localfs, "md5", dry_run=True)
        return str(obj.hash_info.value)


def find_dvc_root(path: str | Path) -> Path | None:
    """The nearest folder at or above ``path`` that holds a ``.dvc`` directory."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def tracked_target(path: str | Path, root: Path, data_dir: str = "data") -> Path | None:
    """The folder ``dvc add`` should track for ``path``: ``<root>/data`` when ``path`` lies inside it."""
    p = Path(path).resolve()
    data = (root / data_dir).resolve()
    try:
        p.relative_to(data)
    except ValueError:
        return None
    return data


def dvc_add(target: str | Path, root: str | Path, push: bool = False) -> dict:
    """``dvc add target`` (and ``dvc push`` if asked) in the repository at ``root``.

    Returns ``{"target", "dvc_file", "md5", "nfiles", "size", "pushed"}`` read back from the ``.dvc`` file.
    Raises :class:`LineageError` with DVC's message when DVC refuses (a lock held by another dvc process,
    an overlapping output, a missing remote).
    """
    root = Path(root).resolve()
    target = Path(target).resolve()
    rel = target.relative_to(root)
    # lazy: dvc takes seconds to import
    from dvc.repo import Repo

    push_error = None
    quiet = io.StringIO()  # dvc prints git hints ("git add data.dvc") meant for an interactive user
    try:
        with Repo(str(root)) as repo, redirect_stdout(quiet), redirect_stderr(quiet):
            repo.add(str(target))  # absolute: DVC resolves relative targets against the cwd
            if push:
                try:
                    repo.push(targets=[str(target) + ".dvc"])
                except Exception as exc:  # the data is tracked and cached even when the remote fails
                    push_error = f"dvc push failed: {type(exc).__name__}: {exc}"
    except Exception as exc:  # DVC raises many unrelated types (DvcException, LockError, OSError, ...)
        raise LineageError(f"dvc add {rel} failed in {root}: {type(exc).__name__}: {exc}") from exc
    dvc_file = target.with_name(target.name + ".dvc")
    out = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [{}])[0]
    record = {"target": str(rel), "dvc_file": str(dvc_file.relative_to(root)), "md5": out.get("md5"),
              "nfiles": out.get("nfiles"), "size": out.get("size"), "pushed": bool(push) and push_error is None}
    if push_error:
        record["push_error"] = push_error
    return record


def record_dvc(validated: str | Path, mode: str = "auto", push: bool = False, data_dir: str = "data") -> dict:
    """Lineage record for the validated data: its DVC md5, plus ``dvc add`` of the data folder.

    Parameters
    ----------
    validated : path of the validated cohort folder
    mode : {"auto", "add", "off"}
        ``auto`` runs ``dvc add <root>/data`` when ``validated`` lies inside the ``data/`` folder of a DVC
        repository and records a note otherwise; ``add`` requires it (errors propagate); ``off`` only hashes.
    push : bool
        Also ``dvc push`` to the default remote.

    Returns
    -------
    dict with ``md5`` (DVC md5 of ``validated``) and ``dvc`` (the ``dvc add`` record or a note).
    """
    if mode not in ("auto", "add", "off"):
        raise InputError(f"dvc mode must be auto, add or off, got {mode!r}")
    record: dict = {"path": str(validated), "md5": dvc_md5(validated)}
    if mode == "off":
        record["dvc"] = {"note": "dvc tracking off"}
        return record
    root = find_dvc_root(validated)
    target = tracked_target(validated, root, data_dir) if root else None
    if target is None:
        msg = ("not inside a DVC repository" if root is None
               else f"not inside {root / data_dir}, so not tracked by {data_dir}.dvc")
        if mode == "add":
            raise LineageError(f"{validated}: {msg}")
        record["dvc"] = {"note": msg}
        return record
    try:
        record["dvc"] = {"root": str(root), **dvc_add(target, root, push=push)}
    except LineageError as exc:
        if mode == "add":
            raise
        record["dvc"] = {"root": str(root), "error": str(exc)}
    return record
