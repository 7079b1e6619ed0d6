"""Property-based hardening: randomly corrupted matrices and sample sheets go through the readers,
``genexflow ingest`` and ``genexflow normalize``. Whatever the corruption, the outcome is either one clear
``error:`` line with a non-zero exit, or a result that names every changed, quarantined or missing
cell/sample: never an unexplained success, never a modified input file.

Bounded for ``make test`` (derandomized, a fixed number of examples per target, well under a minute).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _hardening import cli, digests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from genexflow.errors import InputError
from genexflow.io import read_matrix, read_sample_sheet

sys.path.insert(0, str(Path(__file__).parent))
from _ingest_helpers import counts_frame, sheet_frame  # noqa: E402

N_SAMPLES, N_GENES = 8, 30
CELL_KINDS = ("nan", "neg", "inf", "huge", "text", "frac")
BAD = {"neg": -5, "inf": np.inf, "huge": 1e308}
STRUCTURE = ("dup_gene", "dup_sample", "sheet_missing_row", "sheet_extra_row", "blank_label", "truncate",
             "header_only")

cells = st.lists(st.tuples(st.integers(0, N_SAMPLES - 1), st.integers(0, N_GENES - 1), st.sampled_from(CELL_KINDS)),
                 max_size=3, unique_by=lambda c: (c[0], c[1]))
structure = st.lists(st.sampled_from(STRUCTURE), max_size=2, unique=True)
PROFILE = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _write(folder: Path, cell_edits, struct, truncate_at: float = 0.6):
    """The corrupted ``expression.csv`` + ``samples.csv``, and what was done (for the checks)."""
    m = counts_frame(N_SAMPLES, N_GENES).astype(object)
    sheet = sheet_frame(m.index)
    for i, j, kind in cell_edits:
        m.iat[i, j] = {"nan": np.nan, "text": "x1", "frac": 2.5}.get(kind, BAD.get(kind))
    if "dup_gene" in struct:
        m.columns = [m.columns[1], *m.columns[1:]]
    if "dup_sample" in struct:
        m.index = [m.index[1], *m.index[1:]]
    m.index.name = "sample_id"
    if "sheet_missing_row" in struct:
        sheet = sheet.drop(index=sheet.index[-1])
    if "sheet_extra_row" in struct:
        sheet.loc["EXTRA"] = ["A", "b1", 40.0, "F"]
    if "blank_label" in struct:
        sheet.iloc[0, sheet.columns.get_loc("label")] = None
    folder.mkdir(parents=True, exist_ok=True)
    expr, samples = folder / "expression.csv", folder / "samples.csv"
    text = m.to_csv()
    if "header_only" in struct:
        text = text.splitlines()[0] + "\n"
    elif "truncate" in struct:
        text = text[: int(len(text) * truncate_at)]
    expr.write_text(text)
    sheet.to_csv(samples)
    return expr, samples, m


def _cell_names(m: pd.DataFrame, cell_edits, kinds) -> set[str]:
    return {f"{m.index[i]}/{m.columns[j]}" for i, j, k in cell_edits if k in kinds}


@PROFILE
@given(cell_edits=cells, struct=structure)
def test_readers_return_the_file_or_refuse_it(cell_edits, struct):
    with tempfile.TemporaryDirectory() as tmp:
        expr, samples, m = _write(Path(tmp), cell_edits, struct)
        before = digests(Path(tmp))
        try:
            df = read_matrix(expr, orientation="samples")
        except InputError as exc:
            assert str(exc).startswith(str(expr)), exc  # names the file
        else:
            assert "text" not in {k for *_, k in cell_edits} or "truncate" in struct, "a text cell was read"
            if "truncate" not in struct:
                # nothing changed on the way in: repeated IDs kept, every cell as written
                assert list(df.index) == list(m.index.astype(str)) and list(df.columns) == list(m.columns)
                np.testing.assert_array_equal(df.to_numpy(np.float64), m.to_numpy(np.float64))
        try:
            read_sample_sheet(samples)
        except InputError as exc:
            assert "duplicate" in str(exc) or "sample" in str(exc), exc
        assert digests(Path(tmp)) == before


@PROFILE
@given(cell_edits=cells, struct=structure)
def test_normalize_errors_or_names_what_it_left(capsys, cell_edits, struct):
    with tempfile.TemporaryDirectory() as tmp:
        expr, _, m = _write(Path(tmp), cell_edits, struct)
        before = digests(Path(tmp))
        out = Path(tmp) / "out" / "n.parquet"
        code, text = cli(["normalize", expr, "--orientation", "samples", "-o", out], capsys)
        assert digests(Path(tmp)) == {**before, **({"out/n.parquet": digests(Path(tmp))["out/n.parquet"]}
                                                   if out.exists() else {})}
        flat = " ".join(text.split())
        if code != 0:
            assert code == 2 and "error: " in text and "Traceback" not in text and "unexpected" not in text, text
            assert not out.exists()
            return
        kinds = {k for *_, k in cell_edits}
        assert not kinds & {"text", *BAD}, f"impossible counts were normalized: {cell_edits}\n{text}"
        assert not {"dup_gene", "dup_sample"} & set(struct), text
        res = pd.read_parquet(out)
        if "truncate" not in struct:
            assert res.shape == (N_SAMPLES, N_GENES + 1)
        for name in _cell_names(m, cell_edits, {"nan"}):
            if name.split("/")[0] in set(res["sample_id"]):
                assert f"{name}=nan" in flat, (name, text)  # a missing value left missing is named


@settings(PROFILE, max_examples=4)
@given(cell_edits=cells, struct=structure)
@example(cell_edits=[(2, 3, "neg"), (5, 1, "nan")], struct=[])
@example(cell_edits=[(1, 2, "nan"), (4, 5, "huge"), (6, 0, "inf")], struct=["sheet_extra_row", "blank_label"])
@example(cell_edits=[(0, 0, "frac")], struct=["dup_gene", "sheet_missing_row"])
def test_ingest_errors_or_names_every_change(capsys, cell_edits, struct):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expr, samples, m = _write(root / "in", cell_edits, struct)
        before = digests(root / "in")
        code, text = cli(["ingest", expr, "-s", samples, "--value-type", "counts", "--label-column", "label",
                          "--batch-column", "batch", "--no-data-docs", "--dvc", "off", "-o", root / "v",
                          "--quarantine-root", root / "q", "--report-dir", root / "r", "--json",
                          "--max-quarantine-fraction", "0.9", "--min-samples", "2"], capsys)
        assert digests(root / "in") == before
        if code != 0:
            assert code == 2 and "error: " in text and "Traceback" not in text and "unexpected" not in text, text
            return
        summary = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]
        report = json.loads((root / "r" / "validation.json").read_text())
        got = pd.read_parquet(root / "v" / "expression.parquet").set_index("sample_id")
        reasons = pd.read_csv(next((root / "q").iterdir()) / "reasons.csv", dtype={"id": str}) \
            if (root / "q").exists() and any((root / "q").iterdir()) else pd.DataFrame(columns=["kind", "id"])
        named = set(reasons["id"])
        sheet_ids = set(pd.read_csv(samples, dtype={"sample_id": str})["sample_id"])
        matrix_ids = set(m.index.astype(str)) if "truncate" not in struct else set()
        # every sample that went in and did not come out is named with a reason
        for sid in (sheet_ids | matrix_ids) - set(got.index):
            assert sid in named, (sid, reasons)
        # impossible values never reach the validated cohort, and their samples carry the cell in the reason
        for name in _cell_names(m, cell_edits, set(BAD)):
            sid, gene = name.split("/")
            assert sid not in set(got.index), (name, text)
            assert reasons["message"].str.contains(f"{name}=", regex=False).any() or "dup_sample" in struct, name
        # kept cells are the input cells, unchanged; missing ones are listed
        if "truncate" not in struct and "dup_gene" not in struct and "dup_sample" not in struct:
            src = m.astype(np.float64)
            for sid in got.index:
                np.testing.assert_array_equal(got.loc[sid, src.columns].to_numpy(np.float64),
                                              src.loc[sid].to_numpy(np.float64))
            kept_nan = {n for n in _cell_names(m, cell_edits, {"nan"}) if n.split("/")[0] in set(got.index)}
            assert {c.removesuffix("=nan") for c in report["missing_values"]["cells"]} == kept_nan
            assert summary["missing_values"] == len(kept_nan)
