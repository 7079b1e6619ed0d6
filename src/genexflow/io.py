"""Reading and writing expression matrices, sample sheets, cohorts and Salmon quantifications.

Matrices are CSV, TSV or Parquet in either orientation. The ``orientation`` argument says which:
``"samples"`` (samples as rows, the ``shared/data`` layout), ``"genes"`` (genes as rows, as most
count tables are) or ``"auto"``, which decides only when the answer is unambiguous and otherwise
asks the user to say.
"""

from __future__ import annotations

import contextlib
import gzip
import io as _io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError

Orientation = Literal["auto", "samples", "genes"]

SAMPLE_ID_COLUMNS = ("sample_id", "sample", "samples", "sampleid", "id")
GENE_ID_COLUMNS = ("gene_id", "gene", "genes", "geneid", "symbol", "ensembl_gene_id", "probe", "probe_id")
_GENE_LIKE = re.compile(
    r"^(ENS[A-Z]*G\d{6,}(\.\d+)?|\d+_(s_|x_|i_|f_|g_|r_)?at|AFFX-.*|[A-Z][A-Z0-9-]{1,14}(orf\d+)?|\d{1,9})$"
)
_PARQUET_CHUNK = 2048  # columns per read; bounds peak memory for wide Parquet files


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a file here (a matrix .csv/.tsv/.parquet or a "
                         "sample sheet .csv)")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


def _sep_for(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","


def _looks_like_genes(labels: Sequence[str]) -> float:
    labels = [str(x) for x in labels[:200]]
    return float(np.mean([bool(_GENE_LIKE.match(x)) for x in labels])) if labels else 0.0


# --------------------------------------------------------------------------- safe outputs
def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: equal resolved paths (``./x/../x``, symlinks) or one
    inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: it cannot be the other
        return False


def _input_files(inputs: Iterable[str | Path | None]) -> list[Path]:
    """Input paths, with a folder expanded to the files inside it (a cohort folder is an input too)."""
    files: list[Path] = []
    for p in inputs:
        if p is None:
            continue
        p = Path(p)
        files.append(p)
        if p.is_dir():
            files.extend(q for q in p.rglob("*") if q.is_file())
    return files


def check_output(out: str | Path, inputs: Iterable[str | Path | None] = (), *, what: str = "output") -> Path:
    """Refuse an output path that would overwrite an input, is a folder, or lies in a folder that cannot
    be written; return it as a :class:`~pathlib.Path`.

    Parameters
    ----------
    out : path of the file to be written
    inputs : paths the command reads (files or folders; ``None`` entries are skipped)
    what : how the message names the output (e.g. ``"-o/--out"``)

    Raises
    ------
    InputError
        naming the clash and the fix. Same file means the same resolved path or the same inode, so
        ``./x/../x/counts.csv``, a symlink and a hard link to an input are all refused.
    """
    out = Path(out)
    for src in _input_files(inputs):
        if _same_file(out, src):
            raise InputError(f"{what} {out} is the input file {src}: writing it would destroy the input; "
                             "choose another output path")
    if out.is_dir():
        raise InputError(f"{what} {out} is a folder; give a file name inside it (e.g. {out / 'result.parquet'})")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{what} {out}: {parent} is a file, not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {out}: folder {parent} is not writable; choose a writable folder "
                         "(or fix its permissions)")
    return out


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it over ``path`` (``os.replace``,
    atomic on one file system), on any error delete it. An interrupted write never leaves a half file
    where a good one was: ``path`` holds either its old content or the complete new one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_output(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # keep the real suffix last: writers pick the format from it (pandas, pyarrow)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write {path}: folder {path.parent} is not writable ({exc.strerror}); "
                         "choose a writable output folder") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if path.exists():  # keep the permission bits of the file being replaced
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_default(o: object) -> object:
    """``json.dumps(..., default=json_default)``: numpy scalars as Python numbers, arrays as lists, anything
    else (paths, enums, ...) as its string."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


# --------------------------------------------------------------------------- matrices
def read_matrix(
    path: str | Path,
    orientation: Orientation = "auto",
    sample_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read an expression matrix into a samples x genes DataFrame.

    Parameters
    ----------
    path : path to ``.parquet``, ``.csv``, ``.tsv`` (optionally ``.gz``)
        First column holds the row labels (``sample_id`` or ``gene_id``).
    orientation : {"auto", "samples", "genes"}
        ``"samples"``: rows are samples. ``"genes"``: rows are genes (transposed on read).
        ``"auto"`` uses the first column's name (``sample_id`` / ``gene_id``), then the sample
        sheet's IDs (``sample_ids``), and raises when still ambiguous.
    sample_ids : optional sequence of str
        Known sample IDs (from the sample sheet), used by ``"auto"``.

    Returns
    -------
    DataFrame of shape (n_samples, n_genes), index named ``sample_id``, columns are gene IDs.
    """
    path = Path(path)
    _check_file(path)
    if orientation not in ("auto", "samples", "genes"):
        raise InputError(f"orientation must be auto, samples or genes, got {orientation!r}")
    suffix = path.name.lower()
    if suffix.endswith(".parquet") or suffix.endswith(".pq"):
        df, first = _read_parquet(path, orientation, sample_ids)
    elif suffix.endswith((".csv", ".tsv", ".txt", ".tab", ".csv.gz", ".tsv.gz", ".txt.gz")):
        df, first = _read_text(path)
    else:
        raise InputError(f"{path}: unsupported matrix format; use .parquet, .csv or .tsv")

    orient = orientation if orientation != "auto" else _detect_orientation(path, df, first, sample_ids)
    if orient == "genes":
        df = df.T
    df.index = pd.Index(df.index.astype(str), name="sample_id")
    df.columns = pd.Index(df.columns.astype(str), name="gene_id")
    _check_numeric(df, path)
    return df


def check_unique_ids(df: pd.DataFrame, path: str | Path) -> None:
    """Refuse repeated sample (row) or gene (column) IDs, naming them."""
    for what, labels in (("sample", df.index), ("gene", df.columns)):
        dup = pd.Index(labels)[pd.Index(labels).duplicated()].unique()
        if len(dup):
            raise InputError(
                f"{path}: {len(dup)} repeated {what} ID(s): {', '.join(map(str, dup[:5]))}; each {what} must "
                f"appear once (genexflow ingest merges repeated genes with --duplicates and reports repeated "
                "samples)")


def _detect_orientation(path: Path, df: pd.DataFrame, first: str, sample_ids: Sequence[str] | None) -> str:
    key = first.lower()
    if key in SAMPLE_ID_COLUMNS:
        return "samples"
    if key in GENE_ID_COLUMNS:
        return "genes"
    if sample_ids is not None:
        ids = set(map(str, sample_ids))
        rows = len(ids & set(df.index.astype(str)))
        cols = len(ids & set(df.columns.astype(str)))
        if rows > cols:
            return "samples"
        if cols > rows:
            return "genes"
    row_gene, col_gene = _looks_like_genes(list(df.index)), _looks_like_genes(list(df.columns))
    if col_gene > 0.9 and row_gene < 0.1:
        return "samples"
    if row_gene > 0.9 and col_gene < 0.1:
        return "genes"
    raise InputError(
        f"{path}: cannot tell whether rows are samples or genes (first column {first!r}); "
        "name the first column sample_id or gene_id, or pass --orientation samples|genes"
    )


def parquet_labels(schema) -> tuple[str, str, set[str]]:
    """Which column of a Parquet schema holds the row labels: ``(label column, its display name,
    pandas index columns that are neither labels nor data)``.

    A pandas index is the row labels when it has a name (``df.set_index("sample_id")``) or when no
    text column holds them. An unnamed index next to a text first column is a leftover row number (a
    DataFrame filtered and saved with its index): pandas reads it back as the index and the first column
    as data; genexflow takes the labels from that first column and ignores the row numbers.
    """
    names = schema.names
    pandas_index = {c for c in names if c.startswith("__index_level_")}
    meta = schema.pandas_metadata or {}
    index_col = meta["index_columns"][0] if meta.get("index_columns") and isinstance(
        meta["index_columns"][0], str) else None
    index_name = next((c.get("name") for c in meta.get("columns", []) if c.get("field_name") == index_col), None)
    others = [c for c in names if c != index_col and c not in pandas_index]
    first_is_text = bool(others) and not _is_number_type(schema.field(others[0]).type)
    if index_col is not None and (index_name is not None or not first_is_text):
        return index_col, str(index_name or index_col), pandas_index
    label = others[0] if others else names[0]
    return label, label, pandas_index


def _read_parquet(path: Path, orientation: str, sample_ids) -> tuple[pd.DataFrame, str]:
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file (truncated or corrupt?): {exc}") from exc
    names = schema.names
    if not names:
        raise InputError(f"{path}: Parquet file has no columns")
    label_col, first, skipped = parquet_labels(schema)
    positions = [i for i, c in enumerate(names) if c != label_col and c not in skipped]
    # Columns are addressed by position: a file may repeat a gene ID, and selecting by name would
    # then fail (or pick one); repeated IDs are kept so the caller can report them.
    value_cols = [names[i] for i in positions]
    dup_names = len(set(value_cols)) != len(value_cols)
    try:
        labels = pf.read(columns=[label_col]).column(0).to_pylist()
        n = len(labels)
        bad = [names[i] for i in positions if not _is_number_type(schema.field(i).type)]
        if bad:
            raise InputError(
                f"{path}: {len(bad)} non-numeric column(s), e.g. {bad[:3]} "
                f"(type {schema.field(names.index(bad[0])).type}); expression values must be numbers"
            )
        types = {schema.field(i).type for i in positions}
        dtype = np.float32
        if types and all(pa.types.is_integer(t) for t in types):
            dtype = np.int64 if any(t.bit_width > 32 for t in types) else np.int32
        elif any(pa.types.is_floating(t) and t.bit_width > 32 for t in types):
            dtype = np.float64
        out = np.empty((n, len(value_cols)), dtype=dtype)
        # Read in column chunks straight into the preallocated matrix: peak memory stays near one
        # matrix plus one chunk instead of an Arrow table plus a pandas copy plus a numpy copy.
        whole = pf.read() if dup_names else None
        for j0 in range(0, len(value_cols), _PARQUET_CHUNK):
            cols = value_cols[j0:j0 + _PARQUET_CHUNK]
            if whole is not None:
                tbl = whole.select(positions[j0:j0 + _PARQUET_CHUNK])
            else:
                tbl = pf.read(columns=cols)
            for k, col in enumerate(tbl.columns):
                arr = col.to_numpy(zero_copy_only=False)
                if col.null_count:
                    if np.issubdtype(out.dtype, np.integer):
                        raise InputError(f"{path}: column {cols[k]!r} has {col.null_count} missing values "
                                         "in an integer matrix")
                    arr = np.asarray(col.to_pandas(), dtype=out.dtype)
                out[:, j0 + k] = arr
            del tbl
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: Parquet data could not be read (truncated or corrupt?): {exc}") from exc
    df = pd.DataFrame(out, index=pd.Index(labels), columns=pd.Index(value_cols), copy=False)
    return df, str(first)


def _is_number_type(t) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _read_text(path: Path) -> tuple[pd.DataFrame, str]:
    sep = _sep_for(path)
    try:
        df = pd.read_csv(path, sep=sep, index_col=0, compression="infer")
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: file is empty") from exc
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: malformed table (truncated or ragged rows?): {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save as UTF-8") from exc
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: could not read compressed file (truncated?): {exc}") from exc
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise InputError(f"{path}: table has no data rows or no value columns (wrong separator?)")
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, compression="infer").iloc[0]
    if len(header) == df.shape[1] + 1 and list(header.iloc[1:].astype(str)) != list(df.columns.astype(str)):
        # pandas renames a repeated column (TP53 -> TP53.1); keep the file's names so a repeated gene
        # ID is reported instead of silently becoming a new "gene"
        df.columns = pd.Index(header.iloc[1:].astype(str).to_numpy())
    _check_truncated(path, df)
    first = str(df.index.name or "")
    return df, first


def _check_truncated(path: Path, df: pd.DataFrame) -> None:
    """A cut-off text file parses as a short last row padded with NaN; catch it instead."""
    if path.name.lower().endswith(".gz"):
        return  # gzip detects truncation itself (EOFError above)
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - 1, 0))
        ends_with_newline = fh.read(1) in (b"\n", b"\r")
    last = df.iloc[-1]
    if not ends_with_newline and pd.isna(last.iloc[-1]):
        have = int(last.notna().sum())
        raise InputError(
            f"{path}: file looks truncated: the last row {df.index[-1]!r} has {have} of {df.shape[1]} "
            "values and the file does not end with a newline; re-export or re-download it"
        )


def _check_numeric(df: pd.DataFrame, path: Path) -> None:
    bad_pos = [j for j, t in enumerate(df.dtypes) if not np.issubdtype(t, np.number)]
    bad = [df.columns[j] for j in bad_pos]
    if bad:
        col = df.iloc[:, bad_pos[0]]
        coerced = pd.to_numeric(col, errors="coerce")
        offending = col[coerced.isna() & col.notna()]
        example = f"{offending.index[0]!r}={offending.iloc[0]!r}" if len(offending) else "?"
        raise InputError(
            f"{path}: {len(bad)} column(s) hold non-numeric values, e.g. column {bad[0]!r} at {example}; "
            "expression values must be numbers (is a text column or a header row inside the matrix?)"
        )


def write_matrix(df: pd.DataFrame, path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write a samples x genes DataFrame as zstd Parquet (first column ``sample_id``) or CSV/TSV.

    The write is atomic (:func:`atomic_output`), and a ``path`` that is one of ``inputs`` is refused
    (:func:`check_output`).
    """
    path = check_output(path, inputs)
    out = df.copy(deep=False)
    out.index = pd.Index(out.index.astype(str), name=out.index.name or "sample_id")
    out.columns = out.columns.astype(str)
    with atomic_output(path) as tmp:
        if path.suffix in (".parquet", ".pq"):
            dtypes = set(out.dtypes)
            if len(dtypes) == 1 and np.issubdtype(next(iter(dtypes)), np.number):
                # One numeric dtype (every expression matrix): build the columns from one transposed copy.
                # from_pandas spends ~0.2 ms per column in pandas overhead (3 s for 20,000 genes).
                cols = np.ascontiguousarray(out.to_numpy().T)
                arrays = [pa.array(out.index.to_numpy(dtype=object))]
                arrays += [pa.array(cols[j], from_pandas=True) for j in range(cols.shape[0])]  # NaN -> null
                table = pa.Table.from_arrays(arrays, names=[str(out.index.name), *map(str, out.columns)])
            else:
                table = pa.Table.from_pandas(out.reset_index(), preserve_index=False)
            pq.write_table(table, tmp, compression="zstd")
        else:
            out.to_csv(tmp, sep=_sep_for(path))
    return path


# --------------------------------------------------------------------------- sample sheets
def read_sample_sheet(path: str | Path, id_column: str | None = None, check_unique: bool = True) -> pd.DataFrame:
    """Read a CSV/TSV sample sheet indexed by ``sample_id`` (or ``id_column``).

    ``check_unique=False`` keeps repeated sample IDs (for validators that report them themselves).
    """
    path = Path(path)
    _check_file(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: sample sheet is not UTF-8 ({exc.reason} at byte {exc.start}); "
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from exc

    try:
        df = pd.read_csv(_io.StringIO(text), sep=_sep_for(path), dtype={0: str})
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: sample sheet is empty") from exc
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: malformed sample sheet: {exc}") from exc
    if df.empty:
        raise InputError(f"{path}: sample sheet has a header but no rows")
    col = id_column or next((c for c in df.columns if str(c).lower() in SAMPLE_ID_COLUMNS), None)
    if col is None:
        raise InputError(f"{path}: no sample ID column (expected 'sample_id'; columns: {', '.join(df.columns)})")
    if col not in df.columns:
        raise InputError(f"{path}: no column {col!r}")
    ids = df[col].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup) and check_unique:
        raise InputError(f"{path}: duplicate sample IDs ({len(dup)}): {', '.join(dup[:5])}")
    df = df.drop(columns=[col])
    df.index = pd.Index(ids, name="sample_id")
    return df


# --------------------------------------------------------------------------- cohorts
def read_cohort(
    expression: str | Path,
    samples: str | Path | pd.DataFrame | None = None,
    value_type: str | ValueType = ValueType.LOG,
    orientation: Orientation = "auto",
    name: str | None = None,
    meta: dict | None = None,
    allow_missing_samples: bool = False,
) -> Cohort:
    """Read a matrix and a sample sheet into a :class:`Cohort`, matching samples by ID.

    The sample sheet's row order follows the matrix. IDs in one file but not the other are an error
    naming them (``allow_missing_samples=True`` keeps the intersection instead and records the rest in
    ``meta["unmatched_samples"]``).
    """
    expression = Path(expression)
    if expression.suffix == ".h5ad" or expression.is_dir():
        return Cohort.read(expression)
    sheet = None
    if samples is not None:
        sheet = samples if isinstance(samples, pd.DataFrame) else read_sample_sheet(samples)
    df = read_matrix(expression, orientation, None if sheet is None else list(sheet.index))
    if sheet is None:
        sheet = pd.DataFrame(index=df.index.copy())
    meta = dict(meta or {})
    only_matrix = df.index.difference(sheet.index)
    only_sheet = sheet.index.difference(df.index)
    if len(only_matrix) or len(only_sheet):
        msg = (f"sample IDs of matrix and sheet differ: {len(only_matrix)} only in the matrix "
               f"({', '.join(map(str, only_matrix[:3]))}), {len(only_sheet)} only in the sheet "
               f"({', '.join(map(str, only_sheet[:3]))})")
        if not allow_missing_samples:
            raise InputError(msg)
        meta["unmatched_samples"] = {"matrix_only": list(map(str, only_matrix)),
                                     "sheet_only": list(map(str, only_sheet))}
        keep = df.index.isin(sheet.index)
        df = df.loc[keep]
    sheet = sheet.reindex(df.index)
    meta.setdefault("source", str(expression))
    return Cohort(
        X=df.to_numpy(copy=False), genes=df.columns, samples=sheet,
        value_type=value_type, name=name or expression.stem, meta=meta,
    )


# --------------------------------------------------------------------------- Salmon / tximport
def read_salmon(
    quant_files: dict[str, str | Path] | str | Path,
    tx2gene: str | Path | pd.DataFrame,
) -> dict[str, pd.DataFrame]:
    """Aggregate Salmon ``quant.sf`` files to genes with tximport semantics.

    ``tximport(files, type="salmon", tx2gene=tx2gene)`` with ``countsFromAbundance="no"``:
    counts (``NumReads``) and abundance (``TPM``) are summed per gene; the gene length is the
    TPM-weighted mean of transcript ``EffectiveLength``. Where a gene's TPM is 0 in some samples its
    length there is the geometric mean of its lengths in the other samples, and where it is 0 in all
    samples, the plain mean over its transcripts of their sample-averaged lengths
    (tximport's ``replaceMissingLength``). Transcripts absent from ``tx2gene`` are dropped, as tximport does.

    Parameters
    ----------
    quant_files : dict sample -> path, or a folder of ``<sample>/quant.sf[.gz]`` sub-folders
    tx2gene : two-column table (transcript, gene) or a path to one (CSV, optionally gzipped)

    Returns
    -------
    dict with ``counts``, ``abundance`` and ``length``: DataFrames of shape (n_samples, n_genes),
    genes sorted by ID (R ``rowsum`` order).
    """
    if not isinstance(quant_files, dict):
        root = Path(quant_files)
        if not root.is_dir():
            raise InputError(f"{root}: expected a folder of Salmon runs (<run>/quant.sf)")
        quant_files = {}
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            for fname in ("quant.sf", "quant.sf.gz"):
                if (sub / fname).exists():
                    quant_files[sub.name] = sub / fname
                    break
        if not quant_files:
            raise InputError(f"{root}: no <run>/quant.sf or quant.sf.gz files found")
    if isinstance(tx2gene, pd.DataFrame):
        t2g = tx2gene
    else:
        _check_file(Path(tx2gene))
        t2g = pd.read_csv(tx2gene)
    if t2g.shape[1] < 2:
        raise InputError("tx2gene needs two columns: transcript ID, gene ID")
    t2g = t2g.iloc[:, :2].astype(str)
    t2g.columns = ["tx", "gene"]
    t2g = t2g.drop_duplicates("tx").set_index("tx")["gene"]

    samples = list(quant_files)
    reads, tpm, efflen = [], [], []
    tx_ids = None
    for s in samples:
        p = Path(quant_files[s])
        _check_file(p)
        try:
            q = pd.read_csv(p, sep="\t", usecols=["Name", "EffectiveLength", "TPM", "NumReads"])
        except (ValueError, pd.errors.ParserError, EOFError, OSError) as exc:
            raise InputError(f"{p}: not a Salmon quant.sf file ({exc})") from exc
        if tx_ids is None:
            tx_ids = q["Name"].astype(str).to_numpy()
        elif len(q) != len(tx_ids) or not np.array_equal(q["Name"].astype(str).to_numpy(), tx_ids):
            raise InputError(f"{p}: transcripts differ from the first file; all runs must use one index")
        reads.append(q["NumReads"].to_numpy(np.float64))
        tpm.append(q["TPM"].to_numpy(np.float64))
        efflen.append(q["EffectiveLength"].to_numpy(np.float64))
    assert tx_ids is not None
    genes_of_tx = t2g.reindex(tx_ids)
    keep = genes_of_tx.notna().to_numpy()
    if not keep.any():
        raise InputError("no transcript of the quant files is in tx2gene (version suffixes differ?)")
    gene = genes_of_tx.to_numpy()[keep].astype(str)
    uniq, inv = np.unique(gene, return_inverse=True)
    R = np.stack(reads, 1)[keep]
    A = np.stack(tpm, 1)[keep]
    L = np.stack(efflen, 1)[keep]

    def rowsum(M: np.ndarray) -> np.ndarray:
        out = np.zeros((len(uniq), M.shape[1]))
        np.add.at(out, inv, M)
        return out

    counts, abundance = rowsum(R), rowsum(A)
    with np.errstate(invalid="ignore", divide="ignore"):
        length = rowsum(A * L) / abundance
        ave_tx = L.mean(axis=1)
        n_tx = np.bincount(inv, minlength=len(uniq))
        ave_gene = np.bincount(inv, weights=ave_tx, minlength=len(uniq)) / n_tx
        nan = np.isnan(length)
        all_nan = nan.all(axis=1)
        length[all_nan] = ave_gene[all_nan, None]
        some = nan.any(axis=1) & ~all_nan
        if some.any():
            logs = np.where(nan[some], np.nan, np.log(length[some]))
            geo = np.exp(np.nanmean(logs, axis=1))
            block = length[some]
            block[nan[some]] = np.broadcast_to(geo[:, None], block.shape)[nan[some]]
            length[some] = block
    idx = pd.Index(samples, name="sample_id")
    cols = pd.Index(uniq, name="gene_id")
    return {
        "counts": pd.DataFrame(counts.T, index=idx, columns=cols),
        "abundance": pd.DataFrame(abundance.T, index=idx, columns=cols),
        "length": pd.DataFrame(length.T, index=idx, columns=cols),
    }
