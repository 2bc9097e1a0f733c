"""Labels from assignment probabilities (docs/model.md section 7): no torch, so that the steps
that only label (annotate) start fast."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .keys import CELLTYPE_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY, PROB_KEY, UNASSIGNED
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
                ontology: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels of every cell of ``cells`` (the columns of :func:`assign_labels` with the ontology's)
    and the probabilities in the order of ``cells``: a cell without probabilities (zero counts,
    left out of the model) is ``unassigned``, with no probability. What ``annotate`` writes."""
    probs = probabilities.reindex(cells)
    labels = assign_labels(probs.fillna(0.0), min_prob)
    no_probs = probs.isna().any(axis=1).to_numpy()
    labels.loc[no_probs, CELLTYPE_KEY] = UNASSIGNED
    labels.loc[no_probs, PROB_KEY] = np.nan
    return with_ontology(labels, ontology or {}), probs


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
    pairs = obs[[CELLTYPE_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY]].astype(str).drop_duplicates(CELLTYPE_KEY)
    return {row[0]: (row[1], row[2]) for row in pairs.itertuples(index=False)}
