"""The cohort table: per-sample cell-type counts (report folders, counts files or predictions
TSVs) as one samples x cell types table."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..io import atomic_path
from ..keys import DOUBLET_COLUMNS, LABEL_COLUMNS, SAMPLE_KEY
from .base import CELLTYPE_KEY, COUNTS_SUFFIX, PREDICTIONS_SUFFIX, UNASSIGNED, _require_file


def read_counts_mqc(path: str | Path) -> pd.DataFrame:
    """Read a ``NAME_celltype_counts_mqc.tsv`` (comment header, then Sample + types)."""
    path = Path(path)
    _require_file(path, "cell-type counts file")
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    fix = "Give the *_celltype_counts_mqc.tsv written by `cellassign-nf report`."
    if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows):
        raise InputError(path, "is not a cell-type counts table (header and one row per sample)", fix)
    df = pd.DataFrame(rows[1:], columns=rows[0]).set_index(rows[0][0])
    try:
        df = df.apply(pd.to_numeric).astype(int)
    except (ValueError, TypeError) as exc:
        raise InputError(path, "has non-integer counts", fix) from exc
    df.index.name = SAMPLE_KEY
    return df


def read_predictions_counts(path: str | Path) -> pd.DataFrame:
    """Cell-type counts of one predictions TSV; the sample is the name before ``.predictions.tsv``."""
    path = Path(path)
    _require_file(path, "predictions file")
    fix = "Give the SAMPLE.predictions.tsv written by `cellassign-nf annotate`."
    try:
        pred = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise InputError(path, f"cannot be read as a TSV table ({exc})", fix) from exc
    if CELLTYPE_KEY not in pred.columns:
        raise InputError(path, f"has no '{CELLTYPE_KEY}' column", fix)
    name = path.name[: -len(PREDICTIONS_SUFFIX)] if path.name.endswith(PREDICTIONS_SUFFIX) else path.stem
    skip = {"cell", SAMPLE_KEY, *LABEL_COLUMNS, *DOUBLET_COLUMNS}
    types = [c for c in pred.columns if c not in skip]
    counts = pred[CELLTYPE_KEY].astype(str).value_counts()
    order = [t for t in types if t != UNASSIGNED] + [t for t in counts.index if t not in types and t != UNASSIGNED]
    order.append(UNASSIGNED)
    row = counts.reindex(order, fill_value=0).astype(int)
    return pd.DataFrame([row.to_numpy()], index=pd.Index([name], name=SAMPLE_KEY), columns=order)


def cohort_table(inputs: Sequence[str | Path]) -> pd.DataFrame:
    """Samples x cell types counts from report folders, counts files or predictions TSVs.

    Each input is a folder (every ``*_celltype_counts_mqc.tsv`` in it), a
    ``*_celltype_counts_mqc.tsv`` file, or a ``*.predictions.tsv`` file. Types are in order of
    first appearance, ``unassigned`` last; a type absent from a sample counts 0.
    """
    if not inputs:
        raise InputError(None, "no inputs given", "Give report folders, *_celltype_counts_mqc.tsv or "
                         "*.predictions.tsv files.")
    frames: list[pd.DataFrame] = []
    sources: dict[str, Path] = {}
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = sorted(p.glob(f"*{COUNTS_SUFFIX}"))
            if not files:
                raise InputError(p, f"holds no *{COUNTS_SUFFIX} file",
                                 "Give the --outdir of `cellassign-nf report`, or the files themselves.")
            parts = [(f, read_counts_mqc(f)) for f in files]
        elif p.name.endswith(COUNTS_SUFFIX):
            parts = [(p, read_counts_mqc(p))]
        elif p.name.endswith(PREDICTIONS_SUFFIX) or (p.suffix == ".tsv" and p.exists()):
            parts = [(p, read_predictions_counts(p))]
        else:
            _require_file(p, "input")
            raise InputError(p, "is neither a report folder, a counts file nor a predictions TSV",
                             f"Give report folders, *{COUNTS_SUFFIX} or *{PREDICTIONS_SUFFIX} files.")
        for src, df in parts:
            for name in df.index:
                if name in sources:
                    raise InputError(src, f"sample '{name}' also comes from {sources[name]}",
                                     "Give each sample once.")
                sources[name] = src
            frames.append(df)
    order: list[str] = []
    for df in frames:
        order += [c for c in df.columns if c not in order and c != UNASSIGNED]
    if any(UNASSIGNED in df.columns for df in frames):
        order.append(UNASSIGNED)
    table = pd.concat(frames).reindex(columns=order).fillna(0).astype(int)
    table.index.name = SAMPLE_KEY
    return table


def write_cohort_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the cohort table as TSV (``sample`` then one column per type) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=True, index_label=SAMPLE_KEY)
    return path
