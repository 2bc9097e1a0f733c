"""The training loop (train.py) against independent computations: the M step's gradient, restart
selection, early stopping with the best state restored (the fused kernel against the plain
chain: test_kernels.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellassign_nf import CellAssign, marker_list_to_matrix
from cellassign_nf.predict import marginal_log_likelihood
from cellassign_nf.simulate import simulate
import cellassign_nf.train as train_mod
from cellassign_nf.optim import Adam
from cellassign_nf.train import split_cells

MARKERS = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "C": ["c1", "c2", "a1"]}


@pytest.fixture(scope="module")
def small():
    return simulate(MARKERS, n_cells=300, n_other_genes=30, delta_range=(1.0, 2.0), batches=("b0", "b1"),
                    batch_effect=0.5, seed=11)


def _reference_log_prior(m) -> torch.Tensor:
    """log Dirichlet(pi; alpha) + sum log Normal(log delta; mean, variance), written out here."""
    alpha = torch.full((m.n_types,), m.dirichlet_concentration, dtype=torch.float64)
    pi = torch.softmax(m.theta_logit.double(), -1)
    dirichlet = torch.distributions.Dirichlet(alpha).log_prob(pi)
    normal = torch.distributions.Normal(m.delta_log_mean.double(), m.delta_log_log_variance.double().exp().sqrt())
    return dirichlet + normal.log_prob(m.delta_log.double()).sum()


class _GradientRecorder(Adam):
    """Stands in for Adam: records the gradients of each step and leaves the parameters alone."""

    steps: list[dict[torch.nn.Parameter, torch.Tensor]] = []

    @torch.no_grad()
    def step(self) -> None:
        _GradientRecorder.steps.append({p: None if p.grad is None else p.grad.clone() for p in self.params})


def test_m_step_gradient_is_the_marginal_likelihood_gradient(small, monkeypatch):
    """One full-batch step of minibatch EM (gamma held fixed) has the gradient of
    -(log p(x) + log prior) / N: the EM identity. Catches gamma not detached (an entropy term),
    a missing or mis-scaled prior and a wrong minibatch scaling."""
    _GradientRecorder.steps = []
    monkeypatch.setattr(train_mod, "Adam", _GradientRecorder)
    # min_delta 0.2: delta starts small, the types overlap and gamma is far from 0/1
    model = CellAssign(small, marker_list_to_matrix(MARKERS), size_factor_key="size_factor", batch_key="batch",
                       min_delta=0.2, dirichlet_concentration=0.5)
    model.train(max_epochs=1, n_restarts=1, batch_size=10_000, validation_fraction=0.0, progress=False, fuse="off")
    assert len(_GradientRecorder.steps) == 1
    recorded = _GradientRecorder.steps[0]
    m, data = model.module, model._data  # parameters untouched by the recorder
    assert m.dirichlet_concentration == 0.5 and m.min_delta == 0.2 and m.shrinkage
    gamma = torch.softmax(m.joint_log_prob(data.x, data.log_s, data.D).detach(), -1)
    assert ((gamma > 0.05) & (gamma < 0.95)).any(dim=1).float().mean() > 0.2  # the entropy term would matter
    for p in m.parameters():
        p.grad = None
    n = data.n_cells
    objective = torch.logsumexp(m.joint_log_prob(data.x, data.log_s, data.D).double(), 1).sum() + _reference_log_prior(m)
    (-objective / n).backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(recorded[p].double(), p.grad.double(), rtol=2e-3, atol=1e-6, msg=name)


def test_minibatches_cover_every_training_cell_once_per_epoch(small, monkeypatch):
    """With batches of 64 cells, an epoch makes ceil(N_train / 64) steps."""
    _GradientRecorder.steps = []
    monkeypatch.setattr(train_mod, "Adam", _GradientRecorder)
    model = CellAssign(small, marker_list_to_matrix(MARKERS), size_factor_key="size_factor")
    model.train(max_epochs=2, n_restarts=1, batch_size=64, validation_fraction=0.1, progress=False,
                early_stopping=False, fuse="off")
    n_train = len(split_cells(small.n_obs, 0.1, 0)[0])
    assert n_train == 270
    assert len(_GradientRecorder.steps) == 2 * math.ceil(n_train / 64)


def test_kept_restart_has_the_best_likelihood(small):
    model = CellAssign(small, marker_list_to_matrix(MARKERS), size_factor_key="size_factor")
    model.train(max_epochs=4, n_restarts=3, seed=2, progress=False, fuse="off")
    r = model.restarts
    assert len(r) == 3 and r["final_loglik"].nunique() == 3  # the restarts really differ
    assert r["selected"].sum() == 1
    assert r.loc[r["selected"], "final_loglik"].item() == r["final_loglik"].max()
    # the module kept is the selected restart's: its marginal log likelihood + log prior is that value
    m = model.module
    value = marginal_log_likelihood(m, model._data) + float(m.log_prior().detach())
    assert value == pytest.approx(r["final_loglik"].max(), rel=1e-6)
    h = model.history_table
    assert set(h.loc[h["selected"], "restart"]) == {int(r.loc[r["selected"], "restart"].item())}


def test_early_stopping_stops_and_restores_the_best_state(small):
    model = CellAssign(small, marker_list_to_matrix(MARKERS), size_factor_key="size_factor")
    patience = 3
    model.train(max_epochs=200, n_restarts=1, patience=patience, rel_tol=1e-3, progress=False, fuse="off")
    h = model.history_table.reset_index(drop=True)
    assert len(h) < 200, "patience did not stop training"
    best = len(h) - 1 - patience  # the last epoch that improved by rel_tol
    values = h["val_loglik"].to_numpy()
    assert np.all(values[best + 1:] <= values[best] + 1e-3 * abs(values[best]))
    # the returned module is the state after the best epoch, not after the last one
    _, val_idx = split_cells(small.n_obs, 0.1, 0)
    val = marginal_log_likelihood(model.module, model._data, torch.as_tensor(val_idx)) / len(val_idx)
    assert val == pytest.approx(values[best], rel=1e-6)
    assert val != pytest.approx(values[-1], rel=1e-7)


def test_without_early_stopping_all_epochs_run_and_the_last_state_is_kept(small):
    model = CellAssign(small, marker_list_to_matrix(MARKERS), size_factor_key="size_factor")
    model.train(max_epochs=12, n_restarts=1, patience=1, rel_tol=0.5, early_stopping=False, progress=False,
                fuse="off")
    h = model.history_table
    assert len(h) == 12
    _, val_idx = split_cells(small.n_obs, 0.1, 0)
    val = marginal_log_likelihood(model.module, model._data, torch.as_tensor(val_idx)) / len(val_idx)
    assert val == pytest.approx(h["val_loglik"].iloc[-1], rel=1e-6)


@pytest.mark.parametrize("n_cells, fraction", [(300, 0.1), (300, 0.25), (1001, 0.5), (7, 0.3)])
def test_split_holds_out_a_disjoint_validation_set_of_the_asked_size(n_cells, fraction):
    """The split on its own: every cell in exactly one of the two sets, round(N x fraction) of them
    held out. Catches a split_cells that returns (some of) the training cells as validation cells."""
    train, val = split_cells(n_cells, fraction, seed=5)
    assert len(val) == round(n_cells * fraction) and len(train) == n_cells - len(val)
    assert not set(train.tolist()) & set(val.tolist()), "a cell is in both the training and the validation set"
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(n_cells))


def test_validation_likelihood_is_computed_on_the_cells_no_gradient_step_used(small, monkeypatch):
    """The held-out cells found from the training loop itself, not from split_cells: the cells of
    every gradient step are recorded, and the history's validation log likelihood must be the
    per-cell marginal log likelihood of all the other cells. Catches validation cells that are
    training cells (a split_cells that returns the training cells as the validation cells, or a fit
    that passes the wrong index set), which the tests that ask split_cells for the held-out cells
    would agree with."""
    stepped: list[torch.Tensor] = []
    em_step = train_mod._em_step

    def recording_em_step(module, optimizer, data, idx, n_train, train_ll):
        stepped.append(idx.clone())
        em_step(module, optimizer, data, idx, n_train, train_ll)

    monkeypatch.setattr(train_mod, "_em_step", recording_em_step)
    model = CellAssign(small, marker_list_to_matrix(MARKERS), size_factor_key="size_factor")
    model.train(max_epochs=1, n_restarts=1, batch_size=64, validation_fraction=0.1, early_stopping=False,
                progress=False, fuse="off")
    used = set(torch.cat(stepped).tolist())
    held_out = sorted(set(range(small.n_obs)) - used)
    assert len(used) == 270 and len(held_out) == 30  # 10% of the 300 cells held out
    # one epoch without early stopping: the module is the state the validation value was computed from
    val = marginal_log_likelihood(model.module, model._data, torch.as_tensor(held_out)) / len(held_out)
    assert model.history_table["val_loglik"].iloc[-1] == pytest.approx(val, rel=1e-6)
    train = marginal_log_likelihood(model.module, model._data, torch.as_tensor(sorted(used))) / len(used)
    assert val != pytest.approx(train, rel=1e-4), "the held-out and the training cells are alike here"
