"""Fused CPU kernel for the CellAssign likelihood terms (numba): forward and backward in one pass
each over the N x (G + K) terms, no temporaries per RBF centre, memory flat in B.

It computes exactly what :func:`cellassign_nf.model.nb_terms` computes (the reference, plain
PyTorch), for float32 tensors on the CPU::

    mu   = exp(log_mu)
    phi  = PHI_LOWER_BOUND + sum_i a[i] * exp(-b * (mu - v[i])**2),   a = exp(log_a)
    term = lgamma(x + phi) - lgamma(phi) + phi log phi + x log_mu - (phi + x) log(phi + mu)

and, for the backward pass, d term / d log_mu and d term / d phi (saved by the forward pass),
from which d loss / d log_a[i] = sum grad * d term/d phi * a[i] e[i] is reduced. Arithmetic is
in float64 inside the kernel. Three shortcuts make it cheap:

* the counts are integers, so for small x  lgamma(x + phi) - lgamma(phi) = log prod_j (phi + j)
  and  digamma(x + phi) - digamma(phi) = sum_j 1 / (phi + j)  (j < x): one log, no lgamma;
* the centres are equally spaced (``basis_means``): with t = (mu - v[0]) / h, h = v[1] - v[0],
  b = 1 / (2 h^2), each RBF term is e[i] = exp(-(t - i)^2 / 2) and neighbours differ by the
  factor exp(t - i - 1/2): two exponentials per term instead of B, walking out from the centre
  nearest to t so that nothing overflows;
* one pass per cell row; blocks of rows run on torch's number of threads (the compiled code
  releases the GIL), which keeps numba's own compile-heavy parallel machinery out.

Compiled on first use and cached on disk by numba (``cache=True``); see :func:`warm_up`.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

SMALL_COUNT = 24  # below this count the rising factorial replaces lgamma / digamma
PHI_PRODUCT_MAX = 1e10  # ... as long as the product (phi + j) stays far from overflowing
_E_HALF, _E_MINUS_ONE = math.exp(-0.5), math.exp(-1.0)

_numba = None
_STATE: dict[str, object] = {}


def _load_numba():
    global _numba
    if _numba is None:
        import numba

        _numba = numba
    return _numba


def _digamma(y: float) -> float:
    """digamma(y) for y > 0: recurrence up to y >= 6, then the asymptotic series (error < 1e-12)."""
    acc = 0.0
    while y < 6.0:
        acc -= 1.0 / y
        y += 1.0
    inv = 1.0 / y
    inv2 = inv * inv
    return acc + math.log(y) - 0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (
        1.0 / 240 - inv2 / 132))))


def _rbf(mu: float, a: np.ndarray, v0: float, h: float, eps: float, want_e: bool, e: np.ndarray):
    """phi(mu) and d phi / d mu; with ``want_e`` also the terms a[i] e[i] into ``e``."""
    n_centres = a.shape[0]
    t = (mu - v0) / h
    k = int(math.floor(t + 0.5))
    if k < 0:
        k = 0
    elif k > n_centres - 1:
        k = n_centres - 1
    d = t - k
    phi = eps
    dphi = 0.0
    if want_e:
        for i in range(n_centres):
            e[i] = 0.0
    if d * d > 1400.0:  # every e[i] < exp(-700): phi is the lower bound
        return phi, dphi
    ek = math.exp(-0.5 * d * d)
    r = math.exp(d)
    rinv = 1.0 / r
    # centre k and upwards: e[i+1] = e[i] * exp(d) * exp(k - i - 1/2)
    ei = ek
    c = _E_HALF  # exp(k - i + 1/2) for i = k + 1, k + 2, ...
    for i in range(k, n_centres):
        if i > k:
            ei *= r * c
            c *= _E_MINUS_ONE
        w = a[i] * ei
        phi += w
        dphi -= w * (t - i)
        if want_e:
            e[i] = w
    # downwards: e[i-1] = e[i] * exp(-d) * exp(-(k - i) - 1/2)
    ei = ek
    c = _E_HALF  # exp(i - k + 1/2) for i = k - 1, k - 2, ...
    for i in range(k - 1, -1, -1):
        ei *= rinv * c
        c *= _E_MINUS_ONE
        w = a[i] * ei
        phi += w
        dphi -= w * (t - i)
        if want_e:
            e[i] = w
    return phi, dphi / h


def _nb_term(x: float, log_mu: float, mu: float, phi: float, need_grad: bool):
    """(term, d term / d phi, d term / d mu with phi held fixed)."""
    log_phi = math.log(phi)
    log_phi_mu = math.log(phi + mu)
    if x == 0.0:
        lg, dg = 0.0, 0.0
    elif x < SMALL_COUNT and phi < PHI_PRODUCT_MAX:
        p, dp = 1.0, 0.0
        for j in range(int(x)):
            q = phi + j
            dp = dp * q + p
            p *= q
        lg = math.log(p)
        dg = dp / p
    else:
        lg = math.lgamma(x + phi) - math.lgamma(phi)
        dg = _digamma_j(x + phi) - _digamma_j(phi) if need_grad else 0.0
    term = lg + phi * log_phi + x * log_mu - (phi + x) * log_phi_mu
    ratio = (phi + x) / (phi + mu)
    return term, dg + log_phi + 1.0 - log_phi_mu - ratio, -ratio


def _forward(x, log_mu, a, v0, h, eps, terms, d_log_mu, d_phi, need_grad, lo, hi):
    W = x.shape[1]
    dummy = np.empty(1)
    for n in range(lo, hi):
        for j in range(W):
            lm = np.float64(log_mu[n, j])
            xv = np.float64(x[n, j])
            mu = math.exp(lm)
            phi, dphi_dmu = _rbf_j(mu, a, v0, h, eps, False, dummy)
            term, dt_dphi, dt_dmu = _nb_term_j(xv, lm, mu, phi, need_grad)
            terms[n, j] = term
            if need_grad:
                d_log_mu[n, j] = xv + mu * (dt_dmu + dt_dphi * dphi_dmu)
                d_phi[n, j] = dt_dphi


def _backward(grad, log_mu, d_log_mu, d_phi, a, v0, h, eps, grad_log_mu, partial, lo, hi):
    W = grad.shape[1]
    B = a.shape[0]
    e = np.empty(B)
    acc = np.zeros(B)
    for n in range(lo, hi):
        for i in range(B):
            acc[i] = 0.0
        for j in range(W):
            g = np.float64(grad[n, j])
            grad_log_mu[n, j] = g * d_log_mu[n, j]
            gp = g * d_phi[n, j]
            if gp != 0.0:
                _rbf_j(math.exp(np.float64(log_mu[n, j])), a, v0, h, eps, True, e)
                for i in range(B):
                    acc[i] += gp * e[i]
        for i in range(B):
            partial[n, i] = acc[i]


def _compiled() -> tuple:
    """The numba-compiled kernels (compiled on first call, cached on disk). They work on a range
    of rows and release the GIL, so that threads of ours run them side by side."""
    if "kernels" not in _STATE:
        numba = _load_numba()
        g = globals()
        jit = numba.njit(cache=True, nogil=True, inline="always")
        g["_digamma_j"] = jit(_digamma)
        g["_rbf_j"] = jit(_rbf)
        g["_nb_term_j"] = jit(_nb_term)
        rows = numba.njit(cache=True, nogil=True)
        _STATE["kernels"] = (rows(_forward), rows(_backward))
    return _STATE["kernels"]


_POOL: dict[int, ThreadPoolExecutor] = {}


def _run_rows(fn, n_rows: int, *args) -> None:
    """fn(*args, lo, hi) over row blocks, on torch's number of threads."""
    n_threads = max(1, min(torch.get_num_threads(), n_rows // 16 or 1))
    if n_threads == 1:
        fn(*args, 0, n_rows)
        return
    pool = _POOL.get(n_threads)
    if pool is None:
        pool = _POOL[n_threads] = ThreadPoolExecutor(n_threads, thread_name_prefix="cellassign-kernel")
    edges = [n_rows * i // n_threads for i in range(n_threads + 1)]
    for f in [pool.submit(fn, *args, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]:
        f.result()


def _spacing(v: Sequence[float], b: float) -> tuple[float, float]:
    """(v[0], h) of equally spaced centres with b = 1 / (2 h^2); raises otherwise."""
    v = [float(c) for c in v]
    h = v[1] - v[0] if len(v) > 1 else 1.0 / math.sqrt(2.0 * b)
    if len(v) > 1 and (h <= 0 or any(abs((v[i] - v[0]) - i * h) > 1e-6 * max(1.0, abs(v[i])) for i in range(len(v)))):
        raise ValueError("the fused kernel needs equally spaced RBF centres")
    if abs(2.0 * b * h * h - 1.0) > 1e-9:
        raise ValueError("the fused kernel needs b = 1 / (2 h^2) (basis_means)")
    return v[0], h


class _FusedNBTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, log_mu: Tensor, log_a: Tensor, v0: float, h: float, eps: float) -> Tensor:  # type: ignore[override]
        fwd, _ = _compiled()
        need_grad = log_mu.requires_grad or log_a.requires_grad
        xs = x.detach().contiguous()
        lm = log_mu.detach().contiguous()
        a = log_a.detach().double().exp().numpy()
        terms = torch.empty_like(lm)
        if need_grad:
            d_log_mu, d_phi = torch.empty_like(lm), torch.empty_like(lm)
        else:
            d_log_mu = d_phi = torch.empty((1, 1), dtype=lm.dtype)
        _run_rows(fwd, lm.shape[0], xs.numpy(), lm.numpy(), a, v0, h, eps, terms.numpy(), d_log_mu.numpy(),
                  d_phi.numpy(), need_grad)
        if need_grad:
            ctx.save_for_backward(lm, d_log_mu, d_phi, log_a)
            ctx.spacing = (v0, h, eps)
        return terms

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        _, bwd = _compiled()
        lm, d_log_mu, d_phi, log_a = ctx.saved_tensors
        v0, h, eps = ctx.spacing
        a = log_a.detach().double().exp().numpy()
        g = grad.contiguous()
        grad_log_mu = torch.empty_like(lm)
        partial = np.empty((lm.shape[0], a.shape[0]))
        _run_rows(bwd, lm.shape[0], g.numpy(), lm.numpy(), d_log_mu.numpy(), d_phi.numpy(), a, v0, h, eps,
                  grad_log_mu.numpy(), partial)
        grad_log_a = torch.from_numpy(partial.sum(axis=0)).to(log_a.dtype)
        return None, grad_log_mu, grad_log_a, None, None, None


def fused_nb_terms(x: Tensor, log_mu: Tensor, log_a: Tensor, v: Sequence[float], b: float,
                   eps: float) -> Tensor:
    """The fused kernel; same inputs and result as ``model.nb_terms`` (float32, CPU)."""
    v0, h = _spacing(v, b)
    return _FusedNBTerms.apply(x, log_mu, log_a, v0, h, eps)


def supported(x: Tensor, log_mu: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and log_mu.dtype == torch.float32


def available() -> bool:
    """numba importable and the kernels compiled (or loaded from numba's cache)."""
    try:
        warm_up()
        return True
    except Exception as exc:  # numba missing or broken on this platform
        log.warning("the fused likelihood kernel is not available (%s); using the plain one",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return False


def warm_up() -> float:
    """Compile (or load from the on-disk cache) both kernels by running them once on a tiny
    problem; returns the seconds it took. Installations and images call this once
    (``python -m cellassign_nf.kernels``) so that users never wait for the compiler."""
    with _LOCK:
        if _STATE.get("warm"):
            return 0.0
        t0 = time.perf_counter()
        x = torch.tensor([[0.0, 3.0, 40.0]])
        log_mu = torch.tensor([[0.1, 1.0, 3.5]], requires_grad=True)
        log_a = torch.zeros(4, requires_grad=True)
        fused_nb_terms(x, log_mu, log_a, [0.0, 1.0, 2.0, 3.0], 0.5, 1e-10).sum().backward()
        _STATE["warm"] = True
        return time.perf_counter() - t0


_LOCK = threading.Lock()


if __name__ == "__main__":  # python -m cellassign_nf.kernels: fill numba's cache (image builds)
    logging.basicConfig(level=logging.INFO)
    print(f"fused likelihood kernel ready in {warm_up():.2f} s (numba cache: "
          f"{os.environ.get('NUMBA_CACHE_DIR') or 'next to the module'})")
