"""The model's math against independent computations (scipy, numpy)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from cellassign_nf.model import CellAssignModule, basis_means, log_factorial, rbf_inverse_dispersion


def _tiny_module(seed=0):
    rng = np.random.default_rng(seed)
    N, G, C, P = 7, 5, 3, 2
    rho = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=float)
    x = rng.poisson(3.0, size=(N, G)).astype(float)
    x[0, 0] = 25
    s = rng.uniform(0.5, 2.0, N)
    D = rng.normal(size=(N, P))
    v, b = basis_means(x.max(), 0.0, 10)
    m = CellAssignModule(torch.tensor(rho), P, v, b).double()
    with torch.no_grad():
        m.delta_log.copy_(torch.tensor(rng.uniform(0.7, 1.4, m.n_markers)))
        m.beta0.copy_(torch.tensor(rng.normal(0.5, 0.5, G)))
        m.beta.copy_(torch.tensor(rng.normal(0, 0.3, (G, P))))
        m.log_a.copy_(torch.tensor(rng.normal(0, 0.5, 10)))
        m.theta_logit.copy_(torch.tensor(rng.normal(0, 1, C)))
    return m, rho, x, s, D, np.asarray(v), b


def _numpy_reference(m, rho, x, s, D, v, b):
    """log p(x_n, z_n = c) computed independently: full N x G x C, scipy's nbinom."""
    delta = np.zeros_like(rho)
    delta[rho == 1] = np.exp(m.delta_log.detach().numpy())
    beta0, beta = m.beta0.detach().numpy(), m.beta.detach().numpy()
    a = np.exp(m.log_a.detach().numpy())
    log_mu = np.log(s)[:, None, None] + (delta * rho)[None] + beta0[None, :, None] + (D @ beta.T)[:, :, None]
    mu = np.exp(log_mu)
    phi = (a * np.exp(-b * (mu[..., None] - v) ** 2)).sum(-1) + 1e-10
    ll = stats.nbinom.logpmf(x[:, :, None], phi, phi / (phi + mu)).sum(axis=1)
    log_pi = np.log(np.exp(m.theta_logit.detach().numpy()) / np.exp(m.theta_logit.detach().numpy()).sum())
    return ll + log_pi


def test_joint_log_likelihood_matches_scipy():
    m, rho, x, s, D, v, b = _tiny_module()
    xt = torch.tensor(x)
    joint = m.joint_log_prob(xt, torch.tensor(np.log(s)), torch.tensor(D)) - log_factorial(xt)[:, None]
    expected = _numpy_reference(m, rho, x, s, D, v, b)
    np.testing.assert_allclose(joint.detach().numpy(), expected, rtol=1e-5)
    # in float32, as trained, still close
    m32 = m.float()
    joint32 = m32.joint_log_prob(xt.float(), torch.tensor(np.log(s)).float(), torch.tensor(D).float())
    np.testing.assert_allclose(joint32.detach().numpy() - log_factorial(xt)[:, None].numpy(), expected, rtol=1e-4)


def test_log_prior_matches_scipy():
    m, rho, *_ = _tiny_module()
    pi = torch.softmax(m.theta_logit, -1).detach().numpy()
    expected = stats.dirichlet.logpdf(pi, np.full(3, 0.01))
    dl = m.delta_log.detach().numpy()
    expected += stats.norm.logpdf(dl, 0.0, 1.0).sum()  # mean 0, variance 1 at initialisation
    assert float(m.log_prior().detach()) == pytest.approx(expected, rel=1e-6)


def test_rbf_gradient_is_exact():
    mu = torch.rand(6, 4, dtype=torch.float64) * 20
    mu.requires_grad_(True)
    log_a = torch.randn(10, dtype=torch.float64, requires_grad=True)
    v, b = basis_means(20.0, 0.0, 10)
    assert torch.autograd.gradcheck(lambda m, la: rbf_inverse_dispersion(m, la, v, b), (mu, log_a))


def test_rbf_matches_direct_sum():
    mu = torch.rand(50) * 30
    log_a = torch.randn(10)
    v, b = basis_means(30.0)
    direct = (log_a.exp() * torch.exp(-b * (mu[:, None] - torch.tensor(v)) ** 2)).sum(-1) + 1e-10
    torch.testing.assert_close(rbf_inverse_dispersion(mu, log_a, v, b), direct)


def test_basis_means_and_width():
    v, b = basis_means(90.0)
    assert v[0] == 0.0 and v[-1] == 90.0 and len(v) == 10
    assert b == pytest.approx(1 / (2 * 10.0**2))


def test_clamp_enforces_min_delta():
    m, *_ = _tiny_module()
    with torch.no_grad():
        m.delta_log.fill_(-3.0)
    m.clamp_()
    assert torch.all(m.delta >= 2.0 - 1e-6)
    assert math.isclose(float(m.delta.min()), 2.0, rel_tol=1e-6)


def test_delta_matrix_zero_off_markers():
    m, rho, *_ = _tiny_module()
    d = m.delta_matrix().numpy()
    assert np.all(d[rho == 0] == 0) and np.all(d[rho == 1] > 0)


# --- the priors at values where a wrong formula shows --------------------------------------------

@pytest.mark.parametrize("alpha", [0.01, 0.7])
def test_log_prior_away_from_the_starting_point(alpha):
    """Non-zero mean, variance != 1, a non-default Dirichlet concentration: an SD/variance mix-up,
    a sign flip of the mean or an ignored concentration changes the value."""
    m, rho, *_ = _tiny_module()
    m.dirichlet_concentration = alpha
    mean, variance = 0.9, 0.3
    with torch.no_grad():
        m.delta_log_mean.fill_(mean)
        m.delta_log_log_variance.fill_(math.log(variance))
    pi = torch.softmax(m.theta_logit, -1).detach().numpy()
    dl = m.delta_log.detach().numpy()
    expected = stats.dirichlet.logpdf(pi, np.full(3, alpha)) + stats.norm.logpdf(dl, mean, math.sqrt(variance)).sum()
    assert float(m.log_prior().detach()) == pytest.approx(expected, rel=1e-9)


def test_log_prior_without_shrinkage_is_the_dirichlet_alone():
    m, rho, *_ = _tiny_module()
    with torch.no_grad():
        m.delta_log_mean.fill_(0.5)
    m.shrinkage = False
    pi = torch.softmax(m.theta_logit, -1).detach().numpy()
    assert float(m.log_prior().detach()) == pytest.approx(stats.dirichlet.logpdf(pi, np.full(3, 0.01)), rel=1e-9)


def test_gamma_is_the_posterior_of_the_joint():
    """gamma[n,c] = p(z=c | x) from Bayes' rule on the scipy reference (not just rows summing to 1)."""
    from cellassign_nf.model import gamma_from_joint

    m, rho, x, s, D, v, b = _tiny_module()
    joint = m.joint_log_prob(torch.tensor(x), torch.tensor(np.log(s)), torch.tensor(D))
    expected = np.exp(_numpy_reference(m, rho, x, s, D, v, b))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(gamma_from_joint(joint).detach().numpy(), expected, rtol=1e-6)


def test_nb_log_prob_matches_scipy():
    from cellassign_nf.model import nb_log_prob

    x = torch.tensor([0.0, 1.0, 7.0, 40.0], dtype=torch.float64)
    mu = torch.tensor([0.3, 2.0, 5.0, 30.0], dtype=torch.float64)
    phi = torch.tensor([0.5, 3.0, 10.0, 1.5], dtype=torch.float64)
    expected = stats.nbinom.logpmf(x.numpy(), phi.numpy(), (phi / (phi + mu)).numpy())
    np.testing.assert_allclose(nb_log_prob(x, mu, phi).numpy(), expected, rtol=1e-10)


def test_clamp_leaves_larger_deltas_alone():
    m, *_ = _tiny_module()
    before = m.delta_log.detach().clone()  # all above log 2 (drawn in [0.7, 1.4])
    with torch.no_grad():
        m.delta_log[0] = -1.0
    m.clamp_()
    assert float(m.delta_log[0]) == pytest.approx(math.log(2.0))
    torch.testing.assert_close(m.delta_log.detach()[1:], before[1:])


def test_min_delta_and_start_of_delta():
    """delta starts just above min_delta (in [min_delta, min_delta * e^0.2)), for any min_delta."""
    rho = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    for min_delta in (2.0, 3.5):
        m = CellAssignModule(rho, 0, *basis_means(10.0), min_delta=min_delta,
                             generator=torch.Generator().manual_seed(1))
        assert m.n_markers == 4 and m.min_delta == min_delta
        assert torch.all(m.delta >= min_delta) and torch.all(m.delta < min_delta * math.exp(0.2))


# --- module construction and the choice of the fused kernel ------------------------------------

def test_module_starts_from_the_documented_values():
    rho = torch.eye(40)
    rho[0, 1] = 1.0
    m = CellAssignModule(rho, 3, *basis_means(10.0), generator=torch.Generator().manual_seed(0))
    assert (m.n_genes, m.n_types, m.n_covariates, m.n_markers) == (40, 40, 3, 41)
    assert m.fused is False and m.shrinkage is True and m.dirichlet_concentration == 0.01
    torch.testing.assert_close(m.W, torch.cat([1.0 - rho, torch.nn.functional.one_hot(m.marker_type, 40).float()]))
    assert m.column_gene.tolist() == list(range(40)) + m.marker_gene.tolist()
    assert m.beta.shape == (40, 3) and not m.beta.detach().any() and not m.beta0.detach().any()
    assert not m.log_a.detach().any() and len(m.log_a) == 10
    assert float(m.delta_log_mean) == 0.0 and float(m.delta_log_log_variance) == 0.0
    assert 0.0 < float(m.theta_logit.detach().abs().max()) < 0.5  # a small random start of pi
    beta0 = torch.linspace(-1, 1, 40)
    m2 = CellAssignModule(rho, 0, *basis_means(10.0), beta0_init=beta0)
    torch.testing.assert_close(m2.beta0.detach(), beta0)
    assert m2.beta0.data_ptr() != beta0.data_ptr()


def test_basis_means_of_an_all_zero_matrix():
    v, b = basis_means(0.0)
    assert v[0] == 0.0 and v[-1] == pytest.approx(1.0) and b == pytest.approx(1 / (2 * (1 / 9) ** 2))
    v, b = basis_means(30.0, 10.0, 5)
    assert v == [10.0, 15.0, 20.0, 25.0, 30.0] and b == pytest.approx(1 / 50)


def _fusion_case():
    m, rho, x, s, D, v, b = _tiny_module()
    return m.float(), torch.tensor(x).float(), torch.tensor(np.log(s)).float(), torch.tensor(D).float()


def _fake_kernel(monkeypatch, m, scale: float = 1.0, error: Exception | None = None):
    """Stand in for the C kernel (kernels.py, tested against the plain chain in test_kernels.py):
    these tests are about the probe that decides whether it is used. The stand-in computes the
    plain chain from the kernel's inputs, times ``scale``, or raises ``error``."""
    import cellassign_nf.model as model

    def kernel(x, offset, col, log_a, lay, v, b, eps):
        if error is not None:
            raise error
        return scale * (model.nb_terms(x[:, m.column_gene], offset[:, m.column_gene] + col, log_a, v, b) @ m.W)

    monkeypatch.setattr(model.kernels, "available", lambda: True)
    monkeypatch.setattr(model.kernels, "fused_log_likelihood", kernel)


def test_fusion_is_used_when_the_fused_kernel_agrees(monkeypatch):
    m, x, log_s, D = _fusion_case()
    _fake_kernel(monkeypatch, m)
    plain = m.log_likelihood(x, log_s, D).detach()
    assert m.enable_fusion(x, log_s, D) is True and m.fused is True
    assert all(p.grad is None for p in m.parameters())  # the probe leaves no gradients behind
    torch.testing.assert_close(m.log_likelihood(x, log_s, D).detach(), plain)


def test_fusion_is_refused_when_the_fused_kernel_disagrees(monkeypatch, caplog):
    m, x, log_s, D = _fusion_case()
    _fake_kernel(monkeypatch, m, scale=1.01)
    with caplog.at_level("WARNING", logger="cellassign_nf.model"):
        assert m.enable_fusion(x, log_s, D) is False
    assert m.fused is False
    assert "the fused likelihood kernel disagrees with the plain one; using the plain one" in caplog.text


def test_fusion_is_refused_when_the_fused_kernel_fails(monkeypatch, caplog):
    m, x, log_s, D = _fusion_case()
    _fake_kernel(monkeypatch, m, error=RuntimeError("the kernel cannot run here\nsecond line"))
    with caplog.at_level("WARNING", logger="cellassign_nf.model"):
        assert m.enable_fusion(x, log_s, D) is False
    assert m.fused is False and all(p.grad is None for p in m.parameters())
    assert "the fused likelihood kernel failed (the kernel cannot run here); using the plain likelihood" in caplog.text
    assert "second line" not in caplog.text


def test_log_factorial_is_the_per_cell_constant():
    x = torch.tensor([[0.0, 3.0, 5.0], [1.0, 0.0, 2.0]])
    expected = [math.lgamma(4) + math.lgamma(6), math.lgamma(3)]
    np.testing.assert_allclose(log_factorial(x).numpy(), expected, rtol=1e-12)
    assert log_factorial(x).dtype == torch.float64
    # in blocks of rows (here 1 and 2 rows of 3 values, plus a ragged end): the same sums, every row
    big = torch.tensor(np.random.default_rng(0).poisson(4.0, size=(7, 3)), dtype=torch.float32)
    whole = torch.lgamma(big.double() + 1).sum(dim=1).numpy()
    for block_values in (1, 3, 6, 2**22):
        np.testing.assert_array_equal(log_factorial(big, block_values=block_values).numpy(), whole)
    assert log_factorial(torch.zeros(0, 3)).shape == (0,)


def test_log_pi_and_delta_matrix_values():
    m, rho, *_ = _tiny_module()
    pi = np.exp(m.theta_logit.detach().numpy())
    np.testing.assert_allclose(m.log_pi().exp().detach().numpy(), pi / pi.sum(), rtol=1e-10)
    d = m.delta_matrix().numpy()
    np.testing.assert_allclose(d[m.marker_gene.numpy(), m.marker_type.numpy()], np.exp(m.delta_log.detach().numpy()))
