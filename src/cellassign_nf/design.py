"""Design matrices (cells x covariates) from obs columns or a formula, via formulaic.

Categorical covariates are treatment-coded (one column per non-reference level: the model's
``beta0`` is the intercept); numeric covariates are standardised to mean 0, variance 1.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)


@dataclass
class DesignSpec:
    """How a design matrix was built, so the same columns can be rebuilt for new cells."""

    formula: str = ""
    levels: dict[str, list[str]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    sds: dict[str, float] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # redundant columns left out, and why

    def to_dict(self) -> dict:
        return asdict(self)


def covariates_to_formula(covariates: Sequence[str]) -> str:
    return "~ " + " + ".join(f"`{c}`" for c in covariates) if covariates else ""


def _formula_variables(formula: str) -> list[str]:
    from formulaic import Formula

    try:
        return sorted(Formula(formula).required_variables)
    except Exception as exc:
        raise InputError(None, f"cannot parse the design formula '{formula}' ({exc})",
                         "Write it like '~ batch + donor'.") from exc


def make_design(obs: pd.DataFrame, covariates: Sequence[str] | None = None, formula: str | None = None,
                source: str | Path | None = None) -> tuple[pd.DataFrame, DesignSpec]:
    """Build the design matrix for ``obs`` from covariate names or a formula (not both)."""
    if covariates and formula:
        raise InputError(None, "both covariates and a formula were given", "Give one of them.")
    formula = formula or covariates_to_formula(list(covariates or []))
    if not formula:
        return pd.DataFrame(index=obs.index), DesignSpec()
    variables = [str(v) for v in _formula_variables(formula)]
    missing = [v for v in variables if v not in obs.columns]
    if missing:
        raise InputError(source, f"unknown covariate column(s) {', '.join(missing)} "
                         f"(columns in obs: {', '.join(map(str, obs.columns)) or 'none'})",
                         "Name columns that exist in the cells' metadata.")
    spec = DesignSpec(formula=formula)
    for v in variables:
        col = obs[v]
        n_nan = int(col.isna().sum())
        if n_nan:
            raise InputError(source, f"covariate '{v}' is missing (NaN) for {n_nan} cells",
                             "Fill in the values, or remove those cells before annotation.")
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            sd = float(col.std(ddof=0))
            spec.means[v], spec.sds[v] = float(col.mean()), sd if sd > 0 else 1.0
        else:
            values = col.astype(str)
            cats = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else sorted(values.unique())
            present = set(values)
            spec.levels[str(v)] = [str(c) for c in cats if str(c) in present]
    design = apply_design(obs, spec, source)
    design, spec.dropped = drop_redundant_columns(design, source)
    spec.columns = list(design.columns)
    return design, spec


def drop_redundant_columns(design: pd.DataFrame, source: str | Path | None = None,
                           rtol: float = 1e-6) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drop design columns the model cannot tell apart: constant ones (the intercept ``beta0``
    holds them) and ones that are a linear combination of the intercept and earlier columns
    (e.g. a covariate equal to ``sample``). Each dropped column is named in a warning.

    Returns the kept columns and ``{dropped column: why}``.
    """
    if design.shape[1] == 0:
        return design, {}
    X = design.to_numpy(dtype=np.float64)
    names = [str(c) for c in design.columns]
    basis = [np.ones(len(X))]
    kept: list[int] = []
    dropped: dict[str, str] = {}
    for j, name in enumerate(names):
        v = X[:, j]
        spread = np.linalg.norm(v - v.mean())
        if spread <= rtol * max(np.linalg.norm(v), 1.0):
            dropped[name] = f"constant ({v[0]:g} for every cell)" if len(v) else "constant"
            continue
        A = np.column_stack(basis)
        coef, *_ = np.linalg.lstsq(A, v, rcond=None)
        if np.linalg.norm(v - A @ coef) <= rtol * spread:
            dropped[name] = "= " + _combination(coef, ["1"] + [names[k] for k in kept])
            continue
        basis.append(v)
        kept.append(j)
    if dropped:
        where = f"{source}: " if source else ""
        log.warning("%sdesign column(s) dropped, the model cannot estimate them: %s. Check the covariates "
                    "(a covariate equal to another one, e.g. to 'sample' in cohort mode, or constant in these "
                    "cells) and leave these out.", where, "; ".join(f"{k} {v}" for k, v in dropped.items()))
    return design.iloc[:, kept], dropped


def _combination(coef: np.ndarray, names: list[str]) -> str:
    """``[0, 1, -2], ["1", "a", "b"]`` -> ``'a - 2*b'``."""
    terms = []
    for c, name in zip(coef, names):
        if abs(c) < 1e-6:
            continue
        c = float(f"{c:.4g}")
        mag = "" if abs(c) == 1 and name != "1" else (f"{abs(c):g}" if name == "1" else f"{abs(c):g}*")
        text = f"{mag}{'' if name == '1' else name}"
        terms.append(("- " if c < 0 else "+ ") + text)
    out = " ".join(terms) or "0"
    return out[2:] if out.startswith("+ ") else "-" + out[2:] if out.startswith("- ") else out


def apply_design(obs: pd.DataFrame, spec: DesignSpec, source: str | Path | None = None,
                 unseen: str = "error") -> pd.DataFrame:
    """Rebuild the design matrix of ``spec`` for (possibly new) cells. A level of a categorical
    covariate that ``spec`` has not seen is an error, or with ``unseen="reference"`` one warning
    naming it, its cells coded as the reference (first) level."""
    from formulaic import model_matrix

    if not spec.formula:
        return pd.DataFrame(index=obs.index)
    df = pd.DataFrame(index=obs.index)
    for v, levels in spec.levels.items():
        values = obs[v].astype(str)
        unknown = sorted(set(values) - set(levels))
        if unknown and unseen != "reference":
            raise InputError(source, f"covariate '{v}' has levels not seen in training: {', '.join(unknown[:5])}",
                             "Predict on cells from the levels the model was trained on.")
        if unknown:
            used = not spec.columns or any(c == v or c.startswith(f"{v}[") for c in spec.columns)
            if used:  # a covariate the model dropped (constant in its cells) changes nothing
                log.warning("covariate '%s' has level(s) the model was not fitted on: %s; their %d cells are "
                            "scored at the reference level '%s' (refit the batch to estimate them: --refit batch)",
                            v, ", ".join(unknown[:5]), int(values.isin(unknown).sum()), levels[0])
            values = values.where(~values.isin(unknown), levels[0])
        df[v] = pd.Categorical(values, categories=levels)
    for v, mean in spec.means.items():
        df[v] = (obs[v].astype(float) - mean) / spec.sds[v]
    mm = model_matrix(spec.formula, df, na_action="raise")
    design = pd.DataFrame(np.asarray(mm, dtype=np.float64), index=obs.index, columns=[str(c) for c in mm.columns])
    design = design.drop(columns=[c for c in design.columns if c == "Intercept"])
    if spec.columns:
        design = design.reindex(columns=spec.columns, fill_value=0.0)
    return design


def read_design(path: str | Path, cells: pd.Index) -> pd.DataFrame:
    """Read a design TSV written by the ``design`` step and align it to ``cells``."""
    from .io import read_table

    design = read_table(path)
    design.index = design.index.astype(str)
    missing = cells.difference(design.index)
    if len(missing):
        raise InputError(path, f"design matrix lacks {len(missing)} cells of the data (e.g. {', '.join(missing[:3])})",
                         "Build the design from the same h5ad with 'cellassign-nf design'.")
    design = design.loc[cells]
    if design.isna().any().any():
        raise InputError(path, "design matrix has missing (NaN) values", "Fill in the covariates.")
    return design.astype(np.float64)
