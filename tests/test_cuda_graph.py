"""The CUDA-graph training step against the eager one (GPU machines only: CI has no GPU; the
results of a run on an H100 are in docs/performance.md)."""
import numpy as np
import pytest
import torch

from cellassign_nf import CellAssign, marker_list_to_matrix
from cellassign_nf.simulate import simulate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MARKERS = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "C": ["c1", "c2", "c3"], "D": ["d1", "d2", "a1"]}


def _fit(adata, fuse, **kw):
    model = CellAssign(adata, marker_list_to_matrix(MARKERS), size_factor_key="size_factor", batch_key="batch")
    return model.train(device="cuda", fuse=fuse, n_restarts=1, seed=2, batch_size=128, progress=False, **kw)


def test_graphed_step_equals_eager_step():
    # 900 training cells, minibatch 128: 3 eager warm-up steps, replays, and a partial last batch
    adata = simulate(MARKERS, n_cells=1000, n_other_genes=20, batches=("b0", "b1"), seed=4)
    graphed, eager = _fit(adata, "auto", max_epochs=6, early_stopping=False), _fit(adata, "off", max_epochs=6,
                                                                                   early_stopping=False)
    for p, q in zip(graphed.module.parameters(), eager.module.parameters()):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().cpu().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(graphed.history_table["train_loglik"], eager.history_table["train_loglik"], rtol=1e-6)
    np.testing.assert_allclose(graphed.predict().to_numpy(), eager.predict().to_numpy(), atol=1e-4)


def test_graphed_fit_follows_learning_rate_halving():
    # early stopping and ReduceLROnPlateau over a long fit: the graph must see every new learning rate
    adata = simulate(MARKERS, n_cells=1000, n_other_genes=20, batches=("b0", "b1"), seed=5)
    graphed, eager = _fit(adata, "auto", max_epochs=200, patience=3), _fit(adata, "off", max_epochs=200, patience=3)
    assert len(graphed.history_table) == len(eager.history_table) < 200
    np.testing.assert_allclose(graphed.history_table["val_loglik"], eager.history_table["val_loglik"], rtol=1e-5)
