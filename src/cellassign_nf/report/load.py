"""Reading the report's inputs (annotated h5ad, training history, QC summary, parameters, model
file), each checked, with one clear error for a bad file."""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..keys import FITTED_KEY, MODEL_INFO_KEY, UNS_KEY
from .base import (
    CELLTYPE_KEY, HISTORY_COLUMNS, PROB_KEY, QC_WARNINGS_KEY, ModelLike, QCSummary, _is_number, _require_file,
)
from ..rules import SAMPLE_NAME_CHARACTERS, is_sample_name
from .summary import _strings

ANNOTATED_FIX = "Give the annotated h5ad written by `cellassign-nf annotate`."
FITTED_FIX = ("Give the model file with --model, or annotate again with --model-info (the model_info.json of "
              "`cellassign-nf train` or `predict`).")

if TYPE_CHECKING:
    import anndata as ad


def check_sample_name(sample: str) -> str:
    """Sample names become file names and MultiQC sample names: keep them simple."""
    if not is_sample_name(sample):
        raise InputError(None, f"sample name '{sample}' is not usable in file names",
                         f"Use {SAMPLE_NAME_CHARACTERS} only, starting with a letter or digit.")
    return sample


def load_annotated(path: str | Path) -> ad.AnnData:
    """Read the annotated h5ad of ``cellassign-nf annotate`` (all of it) and check what the report uses."""
    from ..io import read_h5ad

    path = Path(path)
    _require_file(path, "annotated h5ad")
    return check_annotated(_with_fix(lambda: read_h5ad(path)), path)


def load_annotated_parts(path: str | Path, genes: Sequence[str], cells: Callable[[pd.Series], np.ndarray] | None
                         ) -> tuple[ad.AnnData, ad.AnnData | None]:
    """The annotated h5ad in two parts, checked, read in one pass block by block
    (``io.read_h5ad_parts``): every cell with only those of ``genes`` that it holds, and (unless
    ``cells`` is None) the cells at the positions ``cells(assigned labels)`` with all genes."""
    from ..io import open_h5ad, read_h5ad_parts

    path = Path(path)
    _require_file(path, "annotated h5ad")
    backed = _with_fix(lambda: open_h5ad(path))
    try:
        held = set(backed.var_names)
        check_annotated(backed, path)
        positions = cells(backed.obs[CELLTYPE_KEY]) if cells else None
    finally:
        backed.file.close()
    return _with_fix(lambda: read_h5ad_parts(path, [g for g in genes if g in held], positions))


def _with_fix(read: Callable[[], Any]) -> Any:
    """``read()``, whose InputError (naming the file and the problem) gets the report's fix."""
    try:
        return read()
    except InputError as exc:
        exc.fix = ANNOTATED_FIX
        raise


def check_annotated(adata: ad.AnnData, path: str | Path) -> ad.AnnData:
    """``adata`` when it has cells, assigned types and probabilities in [0, 1]; else one clear error."""
    if adata.n_obs == 0:
        raise InputError(path, "has no cells", "Check the QC thresholds: every cell was filtered out.")
    for key in (CELLTYPE_KEY, PROB_KEY):
        if key not in adata.obs:
            raise InputError(path, f"has no obs['{key}']", ANNOTATED_FIX)
    probs = pd.to_numeric(adata.obs[PROB_KEY], errors="coerce")
    if (probs < 0).any() or (probs > 1 + 1e-6).any():  # NaN (cells the model could not score) is allowed
        raise InputError(path, f"obs['{PROB_KEY}'] holds values outside [0, 1]", ANNOTATED_FIX)
    return adata


def load_history(path: str | Path) -> pd.DataFrame:
    """Read ``history.tsv`` (``restart, epoch, train_loglik, val_loglik, selected``)."""
    path = Path(path)
    _require_file(path, "training history")
    try:
        hist = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise InputError(path, f"cannot be read as a TSV table ({exc})",
                         "Give the history.tsv written by `cellassign-nf train`.") from exc
    return check_history(hist, path)


def check_history(hist: pd.DataFrame, path: str | Path | None = None) -> pd.DataFrame:
    """Check and normalise a training-history table (columns as in history.tsv)."""
    missing = [c for c in HISTORY_COLUMNS if c not in hist.columns]
    if missing:
        raise InputError(path, f"training history lacks column(s) {', '.join(missing)}",
                         "Give the history.tsv written by `cellassign-nf train`.")
    hist = hist.copy()
    for col in ("restart", "epoch"):
        hist[col] = pd.to_numeric(hist[col], errors="coerce")
    for col in ("train_loglik", "val_loglik"):
        hist[col] = pd.to_numeric(hist[col], errors="coerce")
    if hist[["restart", "epoch"]].isna().any().any():
        raise InputError(path, "training history has non-numeric restart or epoch values",
                         "Give the history.tsv written by `cellassign-nf train`.")
    hist["restart"] = hist["restart"].astype(int)
    hist["epoch"] = hist["epoch"].astype(int)
    hist["selected"] = hist["selected"].map(_as_bool)
    return hist.sort_values(["restart", "epoch"]).reset_index(drop=True)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "t")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


_QC_ALIASES: dict[str, tuple[str, ...]] = {
    "cells_before": ("cells_before", "n_cells_before", "cells_in", "n_cells_in", "input_cells", "cells_input"),
    "cells_after": ("cells_after", "n_cells_after", "cells_out", "n_cells_out", "cells_passed", "n_cells_passed",
                    "cells_kept", "output_cells"),
    "genes_before": ("genes_before", "n_genes_before", "genes_in", "n_genes_in", "input_genes", "genes_input"),
    "genes_after": ("genes_after", "n_genes_after", "genes_out", "n_genes_out", "genes_passed", "n_genes_passed",
                    "genes_kept", "output_genes"),
}
_QC_THRESHOLD_KEYS = ("thresholds", "params", "parameters", "filters", "settings")
_QC_THRESHOLD_NAMES = ("min_counts", "min_genes", "max_mito_pct", "min_cells", "mito_prefix", "max_counts",
                       "max_genes", "layer")


def load_qc_summary(path: str | Path) -> QCSummary:
    """Read the QC step's summary JSON."""
    path = Path(path)
    _require_file(path, "QC summary")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})",
                         "Give the summary JSON written by `cellassign-nf qc --summary`.") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "is not a JSON object", "Give the summary JSON written by `cellassign-nf qc --summary`.")
    return parse_qc_summary(raw)


def qc_removed_rows(other: Mapping[str, Any]) -> list[list[Any]]:
    """Rows (reason, rule, cells removed) of a QC summary's ``removed`` and ``rules``; [] if absent."""
    removed, rules = other.get("removed"), other.get("rules")
    if not isinstance(removed, Mapping) or not isinstance(rules, Mapping):
        return []
    return [[reason, str(rules.get(reason, "")), n] for reason, n in removed.items()]


def parse_qc_summary(raw: Mapping[str, Any]) -> QCSummary:
    """Normalise a QC summary dict: cell and gene counts before/after, thresholds, warnings, the rest."""
    flat = dict(raw)
    # Accept {"cells": {"before": .., "after": ..}, "genes": {...}} as well as flat keys.
    for what in ("cells", "genes"):
        sub = flat.get(what)
        if isinstance(sub, Mapping):
            for when in ("before", "after"):
                if when in sub:
                    flat.setdefault(f"{what}_{when}", sub[when])
            flat.pop(what)
    qc = QCSummary()
    used: set[str] = set()
    for attr, names in _QC_ALIASES.items():
        for name in names:
            if name in flat and _is_number(flat[name]):
                setattr(qc, attr, int(flat[name]))
                used.add(name)
                break
    for key in _QC_THRESHOLD_KEYS:
        if isinstance(flat.get(key), Mapping):
            qc.thresholds.update(flat[key])
            used.add(key)
    if QC_WARNINGS_KEY in flat:  # absent from older summaries: qc.warnings stays None
        warnings = flat[QC_WARNINGS_KEY]
        warnings = [warnings] if isinstance(warnings, str) else list(warnings or [])
        qc.warnings = [str(w) for w in warnings]
        used.add(QC_WARNINGS_KEY)
    for name in _QC_THRESHOLD_NAMES:
        if name in flat and name not in used:
            qc.thresholds.setdefault(name, flat[name])
            used.add(name)
    for key, value in flat.items():
        if key in used or key in ("cells", "genes"):
            continue
        qc.other[key] = value
    return qc


def load_params(path: str | Path | None) -> dict[str, Any]:
    """Read the run's parameters JSON (``--params``); ``{}`` when not given."""
    if path is None:
        return {}
    path = Path(path)
    _require_file(path, "parameters JSON")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})", "Give a JSON object of parameter names and values.") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "is not a JSON object", "Give a JSON object of parameter names and values.")
    return raw


def load_model(path: str | Path) -> ModelLike:
    """Load the fitted model file with ``cellassign_nf.api.CellAssign.load``."""
    path = Path(path)
    _require_file(path, "model file")
    from ..api import CellAssign

    try:
        model = CellAssign.load(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot be read as a cellassign-nf model ({type(exc).__name__}: {exc})",
                         "Give the model file written by `cellassign-nf train`.") from exc
    return model  # type: ignore[return-value]


@dataclass
class FittedModel:
    """What the report needs of a fitted model (a :class:`~cellassign_nf.report.base.ModelLike`),
    built from the fitted parameters its description carries (``CellAssign.fitted_parameters``)
    rather than from the model file, so that the report runs without torch."""

    genes: list[str]
    cell_types: list[str]
    delta: pd.DataFrame
    rho: pd.DataFrame
    train_params: dict[str, Any]
    history: pd.DataFrame = field(default_factory=pd.DataFrame)


def fitted_model(description: Mapping[str, Any], source: str | Path) -> FittedModel:
    """The :class:`FittedModel` of a model's description (``steps.model_info``: model_info.json,
    or ``uns[UNS_KEY][MODEL_INFO_KEY]`` of the annotated h5ad, where lists come back as arrays)."""
    fitted = description.get(FITTED_KEY)
    if not isinstance(fitted, Mapping) or not {"genes", "rho", "delta"} <= set(fitted):
        raise InputError(source, "does not carry the fitted parameters of the model that made its labels "
                                 f"(uns['{UNS_KEY}']['{MODEL_INFO_KEY}']['{FITTED_KEY}'])", FITTED_FIX)
    genes, cell_types = _strings(fitted["genes"]), _strings(description.get("cell_types"))
    index = pd.Index(genes, name="gene")

    def table(values: Any, dtype: type) -> pd.DataFrame:
        matrix = np.asarray(values, dtype=dtype).reshape(len(genes), len(cell_types))
        return pd.DataFrame(matrix, index=index, columns=cell_types)

    params = fitted.get("train_params")
    train_params = {str(k): v.item() if isinstance(v, np.generic) else v
                    for k, v in (params.items() if isinstance(params, Mapping) else ())}
    return FittedModel(genes, cell_types, table(fitted["delta"], float), table(fitted["rho"], int), train_params)


def load_fitted_model(path: str | Path) -> FittedModel:
    """The :class:`FittedModel` of the model that made an annotated h5ad's labels, read from the
    file's ``uns[UNS_KEY][MODEL_INFO_KEY]`` alone (neither the matrix nor ``obs``)."""
    from ..io import read_element

    path = Path(path)
    _require_file(path, "annotated h5ad")
    return fitted_model(read_element(path, f"uns/{UNS_KEY}/{MODEL_INFO_KEY}", {}, ANNOTATED_FIX), path)
