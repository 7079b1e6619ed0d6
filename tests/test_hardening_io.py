"""Hardening: no command overwrites its input, every output is written atomically, odd but valid files
(pandas-index Parquet) are read as pandas would, bad paths get a message that names the fix."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _hardening import cli, counts, digest, sheet

from genexflow.errors import InputError
from genexflow.io import atomic_output, check_output, read_matrix, write_matrix


@pytest.fixture()
def d(tmp_path):
    c = counts()
    c.to_csv(tmp_path / "counts.csv")
    np.log2(c + 1).to_csv(tmp_path / "log.csv")
    sheet(c.index).to_csv(tmp_path / "samples.csv")
    (tmp_path / "sub").mkdir()
    return tmp_path


COMMANDS = {
    "normalize": lambda d, src: ["normalize", src],
    "filter": lambda d, src: ["filter", src],
    "impute": lambda d, src: ["impute", src, "--k", "3"],
    "combat": lambda d, src: ["combat", src, "--samples", d / "samples.csv", "--batch-column", "batch"],
    "combat-seq": lambda d, src: ["combat-seq", src, "--samples", d / "samples.csv", "--batch-column", "batch"],
    "predict": lambda d, src: ["predict", src, "--url", "http://127.0.0.1:9"],
    "score": lambda d, src: ["score", src, "--url", "http://127.0.0.1:9"],
}


def _alias(d, target, how):
    if how == "same":
        return target
    if how == "dotdot":
        return d / "sub" / ".." / target.name
    alias = d / f"alias-{how}{target.suffix}"
    (os.symlink if how == "symlink" else os.link)(target, alias)
    return alias


@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_output_that_is_the_input_is_refused_and_the_input_kept(d, capsys, command, how):
    name = "log.csv" if command == "combat" else "counts.csv"
    if command == "score":  # score streams Parquet
        name = "counts.parquet"
        write_matrix(counts(), d / name)
    src = d / name
    before = digest(src)
    code, out = cli([*COMMANDS[command](d, src), "-o", _alias(d, src, how)], capsys)
    assert code == 2, out
    assert "is the input file" in out and "choose another output path" in out, out
    assert digest(src) == before


def test_sample_sheet_is_an_input_too(d, capsys):
    before = digest(d / "samples.csv")
    code, out = cli(["combat-seq", d / "counts.csv", "--samples", d / "samples.csv", "--batch-column", "batch",
                     "-o", d / "samples.csv"], capsys)
    assert code == 2 and "is the input file" in out, out
    assert digest(d / "samples.csv") == before


def test_interrupted_write_keeps_the_old_output(d, capsys, monkeypatch):
    """The writer dies half-way: the earlier output must be intact and no temporary file left behind."""
    code, out = cli(["normalize", d / "counts.csv", "-o", d / "out.parquet"], capsys)
    assert code == 0, out
    good = digest(d / "out.parquet")

    def dies_half_way(table, where, **kw):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    code, out = cli(["normalize", d / "counts.csv", "--method", "cpm", "-o", d / "out.parquet"], capsys)
    assert code == 130, out
    assert digest(d / "out.parquet") == good
    assert read_matrix(d / "out.parquet").shape == (8, 30)
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("new, but cut")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.csv"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.csv"]


def test_output_paths_that_cannot_work_name_the_fix(d, capsys):
    code, out = cli(["normalize", d / "counts.csv", "-o", d / "sub"], capsys)
    assert code == 2 and "is a folder; give a file name inside it" in out, out
    code, out = cli(["normalize", d / "counts.csv", "-o", d / "counts.csv" / "x.csv"], capsys)
    assert code == 2 and "is a file, not a folder" in out, out
    code, out = cli(["normalize", d / "counts.csv", "-o", "/proc/genexflow-test/x.csv"], capsys)
    assert code == 2 and "choose a writable output folder" in out, out
    code, out = cli(["combat-seq", d / "counts.csv", "--samples", d / "sub", "--batch-column", "batch",
                     "-o", d / "o.csv"], capsys)
    assert code == 2 and "is a folder; expected a file" in out and "unexpected" not in out, out
    with pytest.raises(InputError, match="is the input file"):
        check_output(d / "sub" / ".." / "counts.csv", [d])  # a folder input covers the files inside it


def test_pandas_index_parquet_is_read_as_pandas_reads_it(d, capsys):
    raw = pd.read_csv(d / "counts.csv")
    kept = raw[raw["G0"] > raw["G0"].median()]  # filtering leaves a non-default index
    kept.to_parquet(d / "filtered.parquet")
    assert "__index_level_0__" in pq.read_schema(d / "filtered.parquet").names
    got = read_matrix(d / "filtered.parquet")
    expect = pd.read_parquet(d / "filtered.parquet").set_index("sample_id")
    assert list(got.index) == list(expect.index) and list(got.columns) == list(expect.columns)
    np.testing.assert_array_equal(got.to_numpy(), expect.to_numpy())
    # a named index is the labels; an unnamed index with only numbers beside it too
    raw.set_index("sample_id").to_parquet(d / "named.parquet")
    raw.set_index("sample_id").rename_axis(None).to_parquet(d / "unnamed.parquet")
    for name in ("named", "unnamed"):
        m = read_matrix(d / f"{name}.parquet", orientation="samples")
        assert list(m.index) == list(raw["sample_id"]) and m.shape == (8, 30)
    code, out = cli(["normalize", d / "filtered.parquet", "-o", d / "n.parquet"], capsys)
    assert code == 0, out
    assert list(pd.read_parquet(d / "n.parquet")["sample_id"]) == list(kept["sample_id"])


@pytest.mark.parametrize("axis", ["sample", "gene"])
def test_repeated_ids_are_refused(d, capsys, axis):
    c = counts()
    if axis == "gene":
        c.columns = ["G1", *c.columns[1:]]
    else:
        c.index = ["s1", *c.index[1:]]
    c.index.name = "sample_id"
    c.to_csv(d / "dup.csv")
    code, out = cli(["normalize", d / "dup.csv", "-o", d / "n.parquet"], capsys)
    assert code == 2 and f"repeated {axis} ID(s): " in out and ("G1" in out or "s1" in out), out
    assert not (d / "n.parquet").exists()


def test_ingest_into_the_folder_of_its_inputs_is_refused(d, capsys):
    """Before: `ingest x/expression.csv -s x/samples.csv -o x` replaced the sample sheet with the validated one."""
    from _ingest_helpers import counts_frame, sheet_frame

    folder = d / "cohort"
    folder.mkdir()
    m = counts_frame(8, 40)
    m.to_csv(folder / "expression.csv")
    sheet_frame(m.index).to_csv(folder / "samples.csv")
    before = {p.name: digest(p) for p in folder.iterdir()}
    code, out = cli(["ingest", folder / "expression.csv", "-s", folder / "samples.csv", "--value-type", "counts",
                     "--no-data-docs", "--dvc", "off", "-o", folder, "--quarantine-root", d / "q"], capsys)
    assert code == 2 and "is the input file" in out and "samples.csv" in out, out
    assert {p.name: digest(p) for p in folder.iterdir()} == before


def test_score_reads_a_pandas_index_parquet_as_pandas_does(tmp_path, capsys):
    """The batch reader takes its row labels from the same rule as read_matrix (not the leftover index)."""
    from genexflow.serving.toy import make_toy_artifact, toy_cohort

    art = make_toy_artifact(tmp_path / "art", n_genes=20)
    co = toy_cohort(art.info, 12)
    frame = co.frame().reset_index()
    kept = frame[frame.index % 2 == 0]  # a filtered frame keeps its row numbers as the index
    kept.to_parquet(tmp_path / "kept.parquet")
    co.samples.to_csv(tmp_path / "s.csv")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "kept.parquet").names
    code, out = cli(["score", tmp_path / "kept.parquet", "--samples", tmp_path / "s.csv", "--local", "--artifact",
                     tmp_path / "art", "-o", tmp_path / "p.parquet"], capsys)
    assert code == 0, out
    assert list(pd.read_parquet(tmp_path / "p.parquet").index) == list(kept["sample_id"])
