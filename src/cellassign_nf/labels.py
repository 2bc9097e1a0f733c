"""Labels from assignment probabilities (docs/model.md section 7): no torch, so that the steps
that only label (annotate) start fast."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .keys import (CELLTYPE_KEY, DOUBLET, LEVEL_KEY, LEVEL_PROB_KEY, LEVELS, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY,
                   PROB_KEY, UNASSIGNED)
from .settings import AnnotateSettings


def assign_labels(probabilities: pd.DataFrame, min_prob: float = AnnotateSettings.min_prob,
                  ontology: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Label each cell with its most probable type; ``unassigned`` below ``min_prob``.

    Returns a frame with ``CELLTYPE_KEY`` (categorical) and ``PROB_KEY`` columns; with
    ``ontology`` (``{type: "CL:..."}``, e.g. ``model.ontology``; may be empty) also each cell's
    Cell Ontology term and label (``ONTOLOGY_ID_KEY``, ``ONTOLOGY_LABEL_KEY``; :func:`with_ontology`).
    """
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob must be between 0 and 1, got {min_prob}")
    values = probabilities.to_numpy()
    best = values.argmax(axis=1)
    prob = values[np.arange(len(values)), best]
    labels = np.asarray(probabilities.columns, dtype=object)[best]
    labels[prob < min_prob] = UNASSIGNED
    categories = list(probabilities.columns) + ([UNASSIGNED] if UNASSIGNED not in probabilities.columns else [])
    out = pd.DataFrame(
        {CELLTYPE_KEY: pd.Categorical(labels, categories=categories), PROB_KEY: prob},
        index=probabilities.index,
    )
    return out if ontology is None else with_ontology(out, ontology)


def label_cells(probabilities: pd.DataFrame, cells: pd.Index, min_prob: float = AnnotateSettings.min_prob,
                ontology: Mapping[str, str] | None = None,
                rollup: bool = AnnotateSettings.rollup) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels of every cell of ``cells`` (the columns of :func:`assign_labels` with the ontology's
    and, with ``rollup``, the level of :func:`roll_up`) and the probabilities in the order of
    ``cells``: a cell without probabilities (zero counts, left out of the model) is
    ``unassigned``, with no probability. What ``annotate`` writes."""
    probs = probabilities.reindex(cells)
    labels = assign_labels(probs.fillna(0.0), min_prob)
    no_probs = probs.isna().any(axis=1).to_numpy()
    labels.loc[no_probs, CELLTYPE_KEY] = UNASSIGNED
    labels.loc[no_probs, PROB_KEY] = np.nan
    labels = with_ontology(labels, ontology or {})
    return roll_up(labels, probs, ontology or {}, min_prob if rollup else None), probs


def roll_up(labels: pd.DataFrame, probabilities: pd.DataFrame, ontology: Mapping[str, str],
            min_prob: float | None) -> pd.DataFrame:
    """``labels`` (of :func:`with_ontology`) with each cell's level (``LEVEL_KEY``: ``type``,
    ``ancestor`` or ``none``) and its probability (``LEVEL_PROB_KEY``).

    A cell with a type is labelled at ``type``. An ``unassigned`` cell gets, when ``min_prob`` is
    given, the most specific Cell Ontology term shared by two or more of the panel's types
    (:func:`~cellassign_nf.ontology.shared_ancestors`) whose summed probability reaches
    ``min_prob``: its term and label, at level ``ancestor``; otherwise level ``none``. Types
    without a term never roll up; ``cellassign_celltype`` is left as it is."""
    from .ontology import label, shared_ancestors

    out = labels.copy()
    assigned = (out[CELLTYPE_KEY].astype(str) != UNASSIGNED).to_numpy()
    level = np.where(assigned, LEVELS[0], LEVELS[2]).astype(object)
    level_prob = np.where(assigned, out[PROB_KEY].to_numpy(dtype=float), np.nan)
    terms = {t: term for t, term in ontology.items() if t in probabilities.columns}
    candidates = {} if min_prob is None or assigned.all() or len(terms) < 2 else shared_ancestors(terms)
    if candidates:
        member = np.array([[t in types for types in candidates.values()] for t in probabilities.columns], dtype=float)
        sums = np.nan_to_num(probabilities.to_numpy(dtype=float)) @ member  # cells x candidates
        reach = (sums >= min_prob) & ~assigned[:, None] & ~probabilities.isna().any(axis=1).to_numpy()[:, None]
        rolled = reach.any(axis=1)
        first = reach.argmax(axis=1)  # candidates are most specific first
        chosen = np.asarray(list(candidates), dtype=object)[first[rolled]]
        ids = out[ONTOLOGY_ID_KEY].astype(str).to_numpy(dtype=object)
        texts = out[ONTOLOGY_LABEL_KEY].astype(str).to_numpy(dtype=object)
        names = {term: label(term) for term in set(chosen)}  # each term's label looked up once
        ids[rolled], texts[rolled] = chosen, [names[term] for term in chosen]
        level[rolled], level_prob[rolled] = LEVELS[1], sums[rolled, first[rolled]]
        out[ONTOLOGY_ID_KEY], out[ONTOLOGY_LABEL_KEY] = pd.Categorical(ids), pd.Categorical(texts)
    out[LEVEL_KEY] = pd.Categorical(level, categories=list(LEVELS))
    out[LEVEL_PROB_KEY] = level_prob
    return out


def mark_doublets(labels: pd.DataFrame, predicted: pd.Series) -> pd.DataFrame:
    """``labels`` (of :func:`label_cells`) with the predicted doublets labelled ``doublet``: no
    type probability, level ``none``, Cell Ontology ``unknown`` (CELLxGENE's term for a cell
    that is not one type). Their probabilities stay where they are written (obsm, predictions)."""
    from .ontology import UNKNOWN

    out = labels.copy()
    doublet = predicted.reindex(out.index).fillna(False).to_numpy(dtype=bool)
    if not doublet.any():
        return out
    for key, value in ((CELLTYPE_KEY, DOUBLET), (ONTOLOGY_ID_KEY, UNKNOWN), (ONTOLOGY_LABEL_KEY, UNKNOWN),
                       (LEVEL_KEY, LEVELS[2])):
        if key in out:
            column = out[key]
            if hasattr(column, "cat") and value not in column.cat.categories:
                column = column.cat.add_categories([value])
            column = column.copy()
            column[doublet] = value
            out[key] = column
    out.loc[doublet, PROB_KEY] = np.nan
    if LEVEL_PROB_KEY in out:
        out.loc[doublet, LEVEL_PROB_KEY] = np.nan
    return out


def with_ontology(labels: pd.DataFrame, ontology: Mapping[str, str]) -> pd.DataFrame:
    """``labels`` with each cell's Cell Ontology term and label (categorical columns), by the
    conventions of :mod:`.ontology`: the type's term, ``unknown`` for ``unassigned`` and for a type
    without a term, ``CL:0000000`` (cell) for ``other``."""
    from .ontology import cell_terms

    celltype = labels[CELLTYPE_KEY]
    types = celltype.cat.categories if hasattr(celltype, "cat") else pd.unique(celltype.astype(str))
    terms = cell_terms([str(t) for t in types], ontology)
    names = celltype.astype(str)
    out = labels.copy()
    out[ONTOLOGY_ID_KEY] = pd.Categorical(names.map({t: term for t, (term, _) in terms.items()}))
    out[ONTOLOGY_LABEL_KEY] = pd.Categorical(names.map({t: name for t, (_, name) in terms.items()}))
    return out


def ontology_by_type(obs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Assigned type -> (Cell Ontology term, label), read from annotated cells (empty when the
    annotation has no ontology columns)."""
    if ONTOLOGY_ID_KEY not in obs or ONTOLOGY_LABEL_KEY not in obs:
        return {}
    pairs = obs[[CELLTYPE_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY]].astype(str)
    if LEVEL_KEY in obs:  # a cell labelled at an ancestor does not carry its type's term (rolled_up)
        pairs = pairs[(obs[LEVEL_KEY].astype(str) != LEVELS[1]).to_numpy()]
    pairs = pairs.drop_duplicates(CELLTYPE_KEY)
    terms = {row[0]: (row[1], row[2]) for row in pairs.itertuples(index=False)}
    if UNASSIGNED in set(obs[CELLTYPE_KEY].astype(str)):
        from .ontology import UNKNOWN

        terms.setdefault(UNASSIGNED, (UNKNOWN, UNKNOWN))
    return terms


def rolled_up(obs: pd.DataFrame) -> pd.DataFrame:
    """The cells labelled at an ancestor term (:func:`roll_up`), by term: term, label, cells, and
    the median summed probability; most cells first (empty when none, or annotated without levels)."""
    columns = ["term", "label", "cells", "median probability"]
    if LEVEL_KEY not in obs:
        return pd.DataFrame(columns=columns)
    cells = obs[(obs[LEVEL_KEY].astype(str) == LEVELS[1]).to_numpy()]
    table = cells.groupby([cells[ONTOLOGY_ID_KEY].astype(str), cells[ONTOLOGY_LABEL_KEY].astype(str)],
                          observed=True)[LEVEL_PROB_KEY].agg(["size", "median"]).reset_index()
    table.columns = columns
    return table.sort_values(["cells", "term"], ascending=[False, True], ignore_index=True)
