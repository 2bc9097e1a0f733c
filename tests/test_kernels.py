"""The fused CPU kernel (kernels.py) against the plain PyTorch chain (model.nb_terms), which is
the reference: values and gradients, over the regimes the kernel treats differently."""
import numpy as np
import pytest
import torch

from cellassign_nf import CellAssign, kernels, marker_list_to_matrix
from cellassign_nf.model import PHI_LOWER_BOUND, basis_means, nb_terms
from cellassign_nf.simulate import simulate


def _both(x, log_mu, log_a, v, b):
    """(terms, d/dlog_mu, d/dlog_a) of sum(grad * terms): plain chain in float64 from the same
    float32 inputs, fused kernel in float32."""
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = []
    for fn, dtype in ((lambda *t: nb_terms(*t, v, b), torch.float64),
                      (lambda *t: kernels.fused_nb_terms(*t, v, b, PHI_LOWER_BOUND), torch.float32)):
        lm = log_mu.to(dtype).clone().requires_grad_()
        la = log_a.to(dtype).clone().requires_grad_()
        terms = fn(x.to(dtype), lm, la)
        (terms * grad.to(dtype)).sum().backward()
        out.append([t.detach().double() for t in (terms, lm.grad, la.grad)])
    return out


def _close(ref, got, rtol):
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=rtol, atol=rtol * float(r.abs().max()))


@pytest.mark.parametrize("case", ["small counts", "large counts", "mean beyond the centres", "tiny phi", "huge phi"])
def test_fused_kernel_equals_plain_chain(case):
    g = torch.Generator().manual_seed(0)
    M, W = 64, 37
    v, b = basis_means(60.0)
    x = torch.poisson(torch.rand(M, W, generator=g) * 6, generator=g)
    log_mu = torch.randn(M, W, generator=g) + 1.0
    log_a = 0.5 * torch.randn(10, generator=g)
    if case == "large counts":  # lgamma / digamma path (x >= SMALL_COUNT) and x far above the centres
        x = torch.poisson(torch.rand(M, W, generator=g) * 400 + kernels.SMALL_COUNT, generator=g)
        log_mu = torch.log(x + 1) + 0.3 * torch.randn(M, W, generator=g)
    elif case == "mean beyond the centres":  # walk from the last centre; e[i] underflow, no NaN
        log_mu = log_mu + torch.rand(M, W, generator=g) * 8.0
    elif case == "tiny phi":  # phi at its lower bound
        log_a = log_a - 30.0
    elif case == "huge phi":  # phi > PHI_PRODUCT_MAX: lgamma path for small counts too
        log_a = log_a + 24.0
    ref, got = _both(x.float(), log_mu.float(), log_a.float(), v, b)
    assert all(torch.isfinite(t).all() for t in got)
    if case == "huge phi":
        # phi log phi - (phi + x) log(phi + mu) cancels ~11 digits in either chain, and d/d log_a
        # (d term/d phi ~ 1e-10 times a ~ 1e10) is rounding in both: values and d/d log_mu only
        _close(ref[:2], got[:2], rtol=1e-3)
    else:
        _close(ref, got, rtol=2e-5)


def test_fused_kernel_same_on_one_and_two_threads():
    g = torch.Generator().manual_seed(3)
    x = torch.poisson(torch.rand(300, 20, generator=g) * 5, generator=g)
    log_mu = torch.randn(300, 20, generator=g)
    v, b = basis_means(30.0)
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_both(x, log_mu, torch.zeros(10), v, b)[1])
    finally:
        torch.set_num_threads(before)
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-9)


def test_fused_kernel_needs_equally_spaced_centres():
    x = log_mu = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="equally spaced"):
        kernels.fused_nb_terms(x, log_mu, torch.zeros(3), [0.0, 1.0, 3.0], 0.5, PHI_LOWER_BOUND)


MARKERS = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "C": ["c1", "c2", "c3"], "D": ["d1", "d2", "a1"]}


def test_fit_with_fused_kernel_equals_plain_fit():
    adata = simulate(MARKERS, n_cells=600, n_other_genes=20, batches=("b0", "b1"), seed=4)
    fits = [CellAssign(adata, marker_list_to_matrix(MARKERS), size_factor_key="size_factor", batch_key="batch")
            .train(fuse=fuse, device="cpu", n_restarts=1, seed=2, batch_size=128, max_epochs=8, early_stopping=False,
                   progress=False) for fuse in ("on", "off")]
    assert fits[0].module.fused and not fits[1].module.fused
    np.testing.assert_allclose(fits[0].history["train_loglik"], fits[1].history["train_loglik"], rtol=1e-5)
    np.testing.assert_allclose(fits[0].predict().to_numpy(), fits[1].predict().to_numpy(), atol=1e-4)
