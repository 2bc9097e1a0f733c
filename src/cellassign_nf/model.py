"""The CellAssign model: the math of docs/model.md, under its names.

For cell n, marker gene g and cell type c::

    log mu[n,g,c] = log s[n] + delta[g,c] * rho[g,c] + beta0[g] + sum_p beta[g,p] * D[n,p]
    phi[n,g,c]    = sum_i a[i] * exp(-b * (mu[n,g,c] - v[i])**2)
    x[n,g] | z[n]=c ~ NB(mean mu[n,g,c], inverse dispersion phi[n,g,c])
    z[n] ~ Categorical(pi),  pi ~ Dirichlet(0.01),  log delta[g,c] ~ Normal(delta_log_mean, delta_log_variance)

Exact shortcut used throughout: where ``rho[g,c] == 0``, ``mu[n,g,c]`` (hence ``phi`` and the NB
term) does not depend on ``c``. So the N x G x C likelihood is computed from N x (G + K) terms,
K = number of marker entries (non-zeros of ``rho``): one "base" column per gene and one column
per marker entry, combined per type by a fixed (G + K) x C matrix ``W``::

    sum_g log NB[n,g,c] = sum_g (1 - rho[g,c]) * base[n,g] + sum_k [type_k == c] * marker[n,k]

No N x G x C (or N x G x C x B) tensor is ever built, and the RBF sum over the B centres is
accumulated in place with a hand-written backward pass, so memory does not depend on B.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import kernels
from .settings import N_CENTRES, ModelSettings

log = logging.getLogger(__name__)

PHI_LOWER_BOUND = 1e-10  # added to phi, as in the original implementation
PI_LOWER_BOUND = 1e-20  # added to pi inside the Dirichlet prior, as in the original


def basis_means(max_count: float, min_count: float = 0.0, n_centres: int = N_CENTRES) -> tuple[list[float], float]:
    """RBF centres ``v`` (equally spaced from the minimum to the maximum count) and width ``b``."""
    if max_count <= min_count:
        max_count = min_count + 1.0
    v = [min_count + (max_count - min_count) * i / (n_centres - 1) for i in range(n_centres)]
    b = 1.0 / (2.0 * (v[1] - v[0]) ** 2)
    return v, b


class _RBFInverseDispersion(torch.autograd.Function):
    """phi = sum_i a_i exp(-b (mu - v_i)^2), accumulated over i; backward recomputes the terms."""

    @staticmethod
    def forward(ctx, mu: Tensor, log_a: Tensor, v: Sequence[float], b: float) -> Tensor:  # type: ignore[override]
        a = log_a.exp()
        phi = torch.full_like(mu, PHI_LOWER_BOUND)
        for i, v_i in enumerate(v):
            phi.add_(torch.exp((mu - v_i).square_().mul_(-b)).mul_(a[i]))
        ctx.save_for_backward(mu, a)
        ctx.v, ctx.b = v, b
        return phi

    @staticmethod
    def backward(ctx, grad_phi: Tensor):  # type: ignore[override]
        mu, a = ctx.saved_tensors
        v, b = ctx.v, ctx.b
        grad_mu = torch.zeros_like(mu)
        grad_log_a = torch.empty_like(a)
        for i, v_i in enumerate(v):
            d = mu - v_i
            t = torch.exp(d.square().mul_(-b)).mul_(grad_phi).mul_(a[i])  # dL/dphi * a_i * e_i
            grad_log_a[i] = t.sum()
            grad_mu.addcmul_(t, d, value=-2.0 * b)
        return grad_mu, grad_log_a, None, None


def rbf_inverse_dispersion(mu: Tensor, log_a: Tensor, v: Sequence[float], b: float) -> Tensor:
    """phi(mu): the inverse dispersion as a sum of B radial basis functions of the mean."""
    return _RBFInverseDispersion.apply(mu, log_a, tuple(v), b)


def nb_log_prob_kernel(x: Tensor, log_mu: Tensor, phi: Tensor, mu: Tensor | None = None) -> Tensor:
    """log NB(x; mean mu, inverse dispersion phi) without the ``-lgamma(x + 1)`` term."""
    mu = log_mu.exp() if mu is None else mu
    log_phi_mu = torch.log(phi + mu)
    return torch.lgamma(x + phi) - torch.lgamma(phi) + phi * torch.log(phi) + x * log_mu - (phi + x) * log_phi_mu


def nb_terms(x: Tensor, log_mu: Tensor, log_a: Tensor, v: Sequence[float], b: float) -> Tensor:
    """log NB terms (without ``-lgamma(x+1)``) with phi(mu) from the RBF; memory independent of B."""
    mu = log_mu.exp()
    return nb_log_prob_kernel(x, log_mu, rbf_inverse_dispersion(mu, log_a, v, b), mu)


def nb_log_prob(x: Tensor, mu: Tensor, phi: Tensor) -> Tensor:
    """Full negative binomial log density with mean ``mu`` and inverse dispersion ``phi``."""
    return nb_log_prob_kernel(x, torch.log(mu), phi) - torch.lgamma(x + 1)


class CellAssignModule(nn.Module):
    """Parameters and likelihood of CellAssign for a fixed marker matrix ``rho`` (G x C)."""

    def __init__(
        self,
        rho: Tensor,
        n_covariates: int,
        v: Sequence[float],
        b: float,
        min_delta: float = ModelSettings.min_delta,
        dirichlet_concentration: float = ModelSettings.dirichlet_concentration,
        shrinkage: bool = ModelSettings.shrinkage,
        beta0_init: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        rho = rho.float()
        G, C = rho.shape
        marker_gene, marker_type = rho.nonzero(as_tuple=True)
        self.n_genes, self.n_types, self.n_covariates = G, C, n_covariates
        self.n_markers = int(marker_gene.numel())  # K
        self.v, self.b = [float(x) for x in v], float(b)
        self.min_delta = float(min_delta)
        self.dirichlet_concentration = float(dirichlet_concentration)
        self.shrinkage = shrinkage
        self.fused = False  # use the fused CPU kernel for the likelihood (see enable_fusion)
        self._layout: kernels.Layout | None = None  # the kernel's view of the marker columns

        self.register_buffer("rho", rho)
        self.register_buffer("marker_gene", marker_gene)
        self.register_buffer("marker_type", marker_type)
        self.register_buffer("column_gene", torch.cat([torch.arange(G), marker_gene]))
        W = torch.cat([1.0 - rho, nn.functional.one_hot(marker_type, C).float()], dim=0)
        self.register_buffer("W", W)  # (G + K) x C

        # log delta at the K marker entries. Started just above min_delta, nearly equal for all types:
        # a wide random start lets one type's markers overshoot and its cells drain to other types
        # (seen as collapses to one type on clearly separated simulated data).
        u = torch.rand(self.n_markers, generator=generator)
        self.delta_log = nn.Parameter(math.log(self.min_delta) + 0.2 * u)
        self.beta0 = nn.Parameter(beta0_init.clone().float() if beta0_init is not None else torch.zeros(G))
        self.beta = nn.Parameter(torch.zeros(G, n_covariates))
        self.log_a = nn.Parameter(torch.zeros(len(self.v)))
        self.theta_logit = nn.Parameter(0.1 * torch.randn(C, generator=generator))  # pi = softmax(theta_logit)
        self.delta_log_mean = nn.Parameter(torch.zeros(()))
        self.delta_log_log_variance = nn.Parameter(torch.zeros(()))

    # --- the quantities of docs/model.md section 2 -----------------------------------------------
    @property
    def delta(self) -> Tensor:
        """delta at the K marker entries (the G x C matrix is ``delta_matrix()``)."""
        return self.delta_log.exp()

    def delta_matrix(self) -> Tensor:
        """delta as a G x C matrix, 0 where rho is 0."""
        out = torch.zeros_like(self.rho)
        out[self.marker_gene, self.marker_type] = self.delta.detach()
        return out

    def log_pi(self) -> Tensor:
        return torch.log_softmax(self.theta_logit, dim=-1)

    def gene_offset(self, log_s: Tensor, D: Tensor | None) -> Tensor:
        """log s[n] + sum_p beta[g,p] D[n,p]: the per-cell part of log mu, M x G."""
        offset = log_s[:, None].expand(-1, self.n_genes)
        return offset + D @ self.beta.T if self.n_covariates else offset

    def column_constant(self) -> Tensor:
        """beta0[g] (+ delta[g,c] at marker columns): the per-column part of log mu, G + K."""
        return self.beta0[self.column_gene] + torch.cat([torch.zeros_like(self.beta0), self.delta])

    def log_mu(self, log_s: Tensor, D: Tensor | None) -> Tensor:
        """log mu for the G base columns and the K marker columns: M x (G + K)."""
        if not self.n_covariates:  # the offset is the same for every gene: no gather needed
            return log_s[:, None] + self.column_constant()
        return self.gene_offset(log_s, D)[:, self.column_gene] + self.column_constant()

    def log_likelihood(self, x: Tensor, log_s: Tensor, D: Tensor | None) -> Tensor:
        """sum_g log NB(x[n,g]; mu[n,g,c], phi[n,g,c]) for each cell and type, without the
        ``-sum_g lgamma(x+1)`` constant (see ``log_factorial``): M x C."""
        if self.uses_kernel(x):
            return kernels.fused_log_likelihood(x, self.gene_offset(log_s, D), self.column_constant(), self.log_a,
                                                self.kernel_layout(), self.v, self.b, PHI_LOWER_BOUND)
        terms = nb_terms(x[:, self.column_gene], self.log_mu(log_s, D), self.log_a, self.v, self.b)
        return terms @ self.W

    def uses_kernel(self, x: Tensor) -> bool:
        """Whether the fused kernel computes the likelihood of ``x`` (and the training step's
        gradients, :meth:`em_gradients_`)."""
        return self.fused and kernels.supported(x)

    def kernel_layout(self) -> kernels.Layout:
        """The fused kernel's view of the marker columns (made once)."""
        if self._layout is None:
            self._layout = kernels.layout(self.n_genes, self.n_types, self.marker_gene, self.marker_type)
        return self._layout

    def joint_log_prob(self, x: Tensor, log_s: Tensor, D: Tensor | None) -> Tensor:
        """log pi[c] + sum_g log NB (up to the per-cell constant): M x C."""
        return self.log_likelihood(x, log_s, D) + self.log_pi()

    def log_prior(self) -> Tensor:
        """log Dirichlet(pi; alpha) + log Normal(log delta; mean, variance) over marker entries."""
        C, alpha = self.n_types, self.dirichlet_concentration
        pi = self.log_pi().exp() + PI_LOWER_BOUND
        lp = math.lgamma(C * alpha) - C * math.lgamma(alpha) + (alpha - 1.0) * torch.log(pi).sum()
        if self.shrinkage and self.n_markers:
            var = self.delta_log_log_variance.exp()
            z = self.delta_log - self.delta_log_mean
            lp = lp + (-0.5 * z.square() / var - 0.5 * torch.log(2 * math.pi * var)).sum()
        return lp

    def enable_fusion(self, x: Tensor, log_s: Tensor, D: Tensor | None) -> bool:
        """Switch to the fused kernel (``kernels.py``) if it is available and agrees with the plain
        chain on a probe batch (forward and backward); otherwise stay plain. Returns the choice."""
        if not kernels.supported(x) or not kernels.available():
            self.fused = False
            return False
        try:
            grads = []
            for fused in (False, True):
                self.fused = fused
                self.zero_grad(set_to_none=True)
                out = self.log_likelihood(x, log_s, D)
                out.sum().backward()
                grads.append((out.detach(), *(p.grad.clone() for p in (self.beta0, self.log_a) if p.requires_grad)))
            self.zero_grad(set_to_none=True)
            ok = all(torch.allclose(p, f, rtol=1e-3, atol=1e-3 * float(p.abs().max()) + 1e-6)
                     for p, f in zip(grads[0], grads[1]))
            if not ok:
                log.warning("the fused likelihood kernel disagrees with the plain one; using the plain one")
            self.fused = ok
        except Exception as exc:  # a kernel broken on this platform or build
            log.warning("the fused likelihood kernel failed (%s); using the plain likelihood",
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            self.zero_grad(set_to_none=True)
            self.fused = False
        return self.fused

    @torch.no_grad()
    def em_gradients_(self, x: Tensor, log_s: Tensor, D: Tensor | None, n_train: int) -> Tensor:
        """One minibatch EM step's E step and gradients with the fused kernel, written out
        instead of taken by autograd through ~100 small operations (the same numbers; tests
        compare them): sets ``p.grad`` of every free parameter to the gradient of

            loss = -sum_{n,c} gamma[n,c] joint[n,c] / M - log_prior / n_train

        (gamma the E step of this minibatch of M cells, held fixed), leaves it None where the
        loss does not depend on ``p`` (as autograd does), and returns ``joint`` (M x C)."""
        M = x.shape[0]
        likelihood, backward = kernels.log_likelihood_and_backward(
            x, self.gene_offset(log_s, D), self.column_constant(), self.log_a, self.kernel_layout(), self.v, self.b,
            PHI_LOWER_BOUND)
        log_pi = self.log_pi()
        joint = likelihood + log_pi
        g_joint = gamma_from_joint(joint).mul_(-1.0 / M)  # d loss / d joint
        grad_offset, grad_col, grad_log_a = backward(g_joint)
        grads: dict[str, Tensor | None] = dict.fromkeys(name for name, _ in self.named_parameters())
        G = self.n_genes
        grads["beta0"] = grad_col[:G].index_add(0, self.marker_gene, grad_col[G:])
        delta_grad = grad_col[G:] * self.delta
        grads["log_a"] = grad_log_a
        if self.n_covariates:
            grads["beta"] = grad_offset.T @ D
        # log pi = log_softmax(theta); the Dirichlet prior is (alpha - 1) sum_c log(pi_c + eps)
        pi = log_pi.exp()
        g_log_pi = g_joint.sum(dim=0) - (self.dirichlet_concentration - 1.0) / n_train * pi / (pi + PI_LOWER_BOUND)
        grads["theta_logit"] = g_log_pi - pi * g_log_pi.sum()
        if self.shrinkage and self.n_markers:  # log delta ~ Normal(mean, exp(log variance))
            var = self.delta_log_log_variance.exp()
            z = self.delta_log - self.delta_log_mean
            delta_grad = delta_grad + z / var / n_train
            grads["delta_log_mean"] = -(z / var).sum() / n_train
            grads["delta_log_log_variance"] = -(0.5 * z.square() / var - 0.5).sum() / n_train
        grads["delta_log"] = delta_grad
        for name, grad in grads.items():
            param = getattr(self, name)
            param.grad = grad.to(param.dtype) if grad is not None and param.requires_grad else None
        return joint

    # what defines the cell types: held fixed when a saved model is refitted to a new batch
    TYPE_PARAMETERS = ("delta_log", "delta_log_mean", "delta_log_log_variance", "log_a")

    @torch.no_grad()
    def hold_types_fixed_(self, source: CellAssignModule) -> None:
        """Take delta (with its prior) and the dispersion weights a from ``source`` and hold them
        fixed; start pi from ``source``'s. beta0 and beta stay free: the batch refit of
        docs/model.md section 8."""
        for name in self.TYPE_PARAMETERS:
            param = getattr(self, name)
            param.copy_(getattr(source, name))
            param.requires_grad_(False)
        self.theta_logit.copy_(source.theta_logit)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Enforce delta >= min_delta (run after every optimiser step)."""
        self.delta_log.clamp_(min=math.log(self.min_delta))


def gamma_from_joint(joint: Tensor) -> Tensor:
    """E step: gamma[n,c] = softmax_c(log pi[c] + sum_g log NB), in ``joint``'s dtype.

    Written out in float64: on the CPU, ``torch.softmax`` over the few types of a 1,024-cell
    minibatch took 130-190 us in float32 or float64 (3-4% of a training step), these four
    operations 30 us."""
    joint64 = joint.double()
    weights = (joint64 - joint64.amax(dim=-1, keepdim=True)).exp_()
    return (weights / weights.sum(dim=-1, keepdim=True)).to(joint.dtype)


def log_factorial(x: Tensor, block_values: int = 2**22) -> Tensor:
    """sum_g lgamma(x[n,g] + 1): the per-cell constant of the NB log density, computed once
    (a block of about ``block_values`` values at a time: the float64 temporaries stay small)."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    block = max(1, block_values // max(x.shape[1], 1))
    for start in range(0, x.shape[0], block):
        out[start:start + block] = torch.lgamma(x[start:start + block].double() + 1).sum(dim=1)
    return out
