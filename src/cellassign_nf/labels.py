"""Labels from assignment probabilities (docs/model.md section 7): no torch, so that the steps
that only label (annotate) start fast."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .keys import CELLTYPE_KEY, PROB_KEY, UNASSIGNED
from .settings import AnnotateSettings


def assign_labels(probabilities: pd.DataFrame, min_prob: float = AnnotateSettings.min_prob) -> pd.DataFrame:
    """Label each cell with its most probable type; ``unassigned`` below ``min_prob``.

    Returns a frame with ``CELLTYPE_KEY`` (categorical) and ``PROB_KEY`` columns.
    """
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob must be between 0 and 1, got {min_prob}")
    values = probabilities.to_numpy()
    best = values.argmax(axis=1)
    prob = values[np.arange(len(values)), best]
    labels = np.asarray(probabilities.columns, dtype=object)[best]
    labels[prob < min_prob] = UNASSIGNED
    categories = list(probabilities.columns) + ([UNASSIGNED] if UNASSIGNED not in probabilities.columns else [])
    return pd.DataFrame(
        {CELLTYPE_KEY: pd.Categorical(labels, categories=categories), PROB_KEY: prob},
        index=probabilities.index,
    )
