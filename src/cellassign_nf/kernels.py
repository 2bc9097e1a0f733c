"""The fused CPU kernel for the CellAssign log likelihood: the M x C matrix
``sum_j term[n, j] W[j, c]`` of a minibatch, forward and backward, in one pass per cell over its
G + K terms; no N x (G + K) input or term tensor, no temporaries per RBF centre, memory flat in B.

The arithmetic is C (``_nbkernel.c``, compiled when the package is installed; SIMD code for
AVX-512 and AVX2 CPUs and a baseline copy, picked at run time). This module is its Python side:
checks, threads, and the autograd function. It computes exactly what the plain PyTorch chain of
``model.py`` computes (the reference), for float32 tensors on the CPU, with gene = [0..G-1, marker_gene]::

    log_mu[n, j] = offset[n, gene[j]] + col[j]          (model.gene_offset, model.column_constant)
    mu   = exp(log_mu)
    phi  = PHI_LOWER_BOUND + sum_i a[i] * exp(-b * (mu - v[i])**2),   a = exp(log_a)
    term = lgamma(x + phi) - lgamma(phi) + phi log phi + x log_mu - (phi + x) log(phi + mu)
    out[n, c] = sum_j term[n, j] W[j, c]                (W from rho and the marker entries)

The forward pass also saves d term / d log_mu (through phi too) and d term / d phi; the backward
pass applies W^T per cell, and recomputes the RBF terms to reduce d loss / d log_a[i] =
a[i] sum grad * d term/d phi * e[i]. Arithmetic is in float64 inside the kernel; how each piece
is computed: docs/model.md section 4.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import threading
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

MIN_TERMS_PER_THREAD = 1 << 14  # below this, one thread: a thread hand-off costs more than it saves
_threads: int | None = None  # set_threads(); None: torch's number of threads


def threads() -> int:
    """Threads the kernel runs on: ``set_threads(n)``, else torch's number of threads."""
    return _threads or torch.get_num_threads()


def set_threads(n: int | None) -> None:
    """Run the kernel on ``n`` threads (None: follow torch's number of threads)."""
    global _threads
    _threads = None if n is None else max(1, int(n))


@contextmanager
def owning_threads() -> Iterator[None]:
    """While training with the kernel: the kernel runs on all of torch's threads and torch's own
    (small) operations on one. torch's OpenMP workers keep spinning after each operation and would
    take the cores from the kernel's threads (docs/performance.md has the step times of both)."""
    n = torch.get_num_threads()
    set_threads(n)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        set_threads(None)


class _Worker:
    """A thread that runs one call of :func:`_run` at a time. Two locks hand the call over and
    back, faster than a ThreadPoolExecutor's queue and futures (~70 against ~100 us a call on a
    2-core VM, twice per training step)."""

    def __init__(self) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._call: tuple | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name="cellassign-kernel", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            fn, args = self._call  # type: ignore[misc]
            self._call = None
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc
            self._done.release()

    def start(self, fn, args: tuple) -> None:
        self._call, self._error = (fn, args), None
        self._go.release()

    def wait(self) -> BaseException | None:
        """Block until the call is done; its exception, if it raised one."""
        self._done.acquire()
        return self._error


_WORKERS: list[_Worker] = []  # shared by all calling threads, one call at a time (_RUNNING)
_RUNNING = threading.Lock()


def _workers(n: int) -> list[_Worker]:
    while len(_WORKERS) < n:
        _WORKERS.append(_Worker())
    return _WORKERS[:n]


def _forget_workers() -> None:  # a forked child has none of its parent's threads
    global _RUNNING
    _WORKERS.clear()
    _RUNNING = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers)


def _extension():
    """The compiled C module; ImportError (with the reason) when the package was installed without it."""
    from . import _nbkernel

    return _nbkernel


def _ranges(n_rows: int, width: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of rows, one per thread (``threads()``), each of at least
    MIN_TERMS_PER_THREAD terms."""
    n_threads = max(1, min(threads(), n_rows * width // MIN_TERMS_PER_THREAD, n_rows))
    edges = [n_rows * i // n_threads for i in range(n_threads + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _run(fn, ranges: list[tuple[int, int]], args_for) -> None:
    """fn(*args_for(i, lo, hi)) for each range, side by side on our threads (the C code releases
    the GIL); the first range runs on the calling thread. Returns (or raises the first error)
    only when every range is done: the C code writes into buffers the caller owns."""
    if len(ranges) == 1:
        fn(*args_for(0, *ranges[0]))
        return
    with _RUNNING:  # fits in several threads of one process take turns (the cores are the same)
        started: list[_Worker] = []
        try:
            for worker, (i, (lo, hi)) in zip(_workers(len(ranges) - 1), enumerate(ranges[1:], start=1)):
                worker.start(fn, args_for(i, lo, hi))
                started.append(worker)
            fn(*args_for(0, *ranges[0]))
        finally:
            errors = [worker.wait() for worker in started]
    for error in errors:
        if error is not None:
            raise error


def _padded(width: int) -> int:
    """A row's width rounded up to a multiple of the C module's VEC: its loops run over whole
    vectors and pad their rows in the work buffers."""
    vec = _extension().VEC
    return -(-width // vec) * vec


def _whole_lines(n: int, line_bytes: int = 64) -> int:
    """``n`` doubles rounded up to whole cache lines."""
    per_line = line_bytes // 8
    return -(-n // per_line) * per_line


@functools.lru_cache(maxsize=16)
def _spacing(v: tuple[float, ...], b: float) -> tuple[float, float]:
    """(v[0], h) of equally spaced centres with b = 1 / (2 h^2); raises otherwise. Cached: every
    likelihood call of a fit asks for the same centres."""
    v = [float(c) for c in v]
    h = v[1] - v[0] if len(v) > 1 else 1.0 / math.sqrt(2.0 * b)
    if len(v) > 1 and (h <= 0 or any(abs((v[i] - v[0]) - i * h) > 1e-6 * max(1.0, abs(v[i])) for i in range(len(v)))):
        raise ValueError("the fused kernel needs equally spaced RBF centres")
    if abs(2.0 * b * h * h - 1.0) > 1e-9:
        raise ValueError("the fused kernel needs b = 1 / (2 h^2) (basis_means)")
    return v[0], h


@dataclass
class _Saved:
    """What the kernel's backward needs of its forward."""

    offset: Tensor
    col: Tensor
    a: Tensor  # exp(log_a), float64
    log_a_dtype: torch.dtype
    d_log_mu: Tensor
    d_phi: Tensor
    layout: Layout
    spacing: tuple[float, float, float]


def _forward(x: Tensor, offset: Tensor, col: Tensor, log_a: Tensor, layout: Layout, spacing: tuple[float, float, float],
             need_grad: bool) -> tuple[Tensor, _Saved | None]:
    """out (M x C) and, with ``need_grad``, what the backward needs."""
    ext = _extension()
    xs, off, cl = (t.detach().float().contiguous() for t in (x, offset, col))
    a = log_a.detach().double().exp().contiguous()
    M, width = xs.shape[0], layout.width
    out = torch.empty(M, layout.C)
    d_log_mu, d_phi = (torch.empty(M, width), torch.empty(M, width)) if need_grad else (out, out)
    ranges = _ranges(M, width)
    padded = _padded(width)
    work = torch.empty(len(ranges), 2 * padded)
    dwork = torch.empty(len(ranges), padded + layout.C, dtype=torch.float64)
    _run(ext.forward, ranges, lambda i, lo, hi: (
        xs.data_ptr(), off.data_ptr(), cl.data_ptr(), lo, hi, *layout.args(), a.data_ptr(), a.numel(), *spacing,
        out.data_ptr(), d_log_mu.data_ptr(), d_phi.data_ptr(), need_grad, work[i].data_ptr(),
        dwork[i].data_ptr()))
    return out, (_Saved(off, cl, a, log_a.dtype, d_log_mu, d_phi, layout, spacing) if need_grad else None)


def _backward(saved: _Saved, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """d / d (offset, col, log_a) of sum(grad_out * out), float32."""
    ext = _extension()
    layout, a = saved.layout, saved.a
    go = grad_out.float().contiguous()
    M, width = saved.offset.shape[0], layout.width
    grad_offset = torch.empty_like(saved.offset)
    ranges = _ranges(M, width)
    # each thread's sums on cache lines of their own: threads writing to one line take it from
    # each other on every write (false sharing)
    col_acc = torch.zeros(len(ranges), _whole_lines(width), dtype=torch.float64)
    rbf_acc = torch.zeros(len(ranges), _whole_lines(a.numel()), dtype=torch.float64)
    work = torch.empty(len(ranges), 2 * _padded(width))
    _run(ext.backward, ranges, lambda i, lo, hi: (
        go.data_ptr(), saved.offset.data_ptr(), saved.col.data_ptr(), lo, hi, *layout.args(), a.data_ptr(), a.numel(),
        *saved.spacing, saved.d_log_mu.data_ptr(), saved.d_phi.data_ptr(), grad_offset.data_ptr(),
        col_acc[i].data_ptr(), rbf_acc[i].data_ptr(), work[i].data_ptr()))
    grad_col = col_acc[:, :width].sum(dim=0).to(saved.col.dtype)
    grad_log_a = (rbf_acc[:, :a.numel()].sum(dim=0) * a).to(saved.log_a_dtype)
    return grad_offset, grad_col, grad_log_a


class _FusedLogLikelihood(torch.autograd.Function):
    """out[n, c] = sum_j term(x[n, gene(j)], offset[n, gene(j)] + col[j]) W[j, c] (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, offset: Tensor, col: Tensor, log_a: Tensor, layout: Layout,  # type: ignore[override]
                spacing: tuple[float, float, float]) -> Tensor:
        need_grad = offset.requires_grad or col.requires_grad or log_a.requires_grad
        out, ctx.saved = _forward(x, offset, col, log_a, layout, spacing, need_grad)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        return None, *_backward(ctx.saved, grad_out), None, None


@dataclass(frozen=True)
class Layout:
    """Which gene each marker column reads and which type it counts for (``model.py``'s G base
    columns and K marker columns); int64 tensors kept alive for the C code."""

    G: int
    C: int
    marker_gene: Tensor
    marker_type: Tensor

    @property
    def width(self) -> int:
        return self.G + int(self.marker_gene.numel())

    def args(self) -> tuple:
        return (self.G, int(self.marker_gene.numel()), self.C, self.marker_gene.data_ptr(),
                self.marker_type.data_ptr())


def layout(n_genes: int, n_types: int, marker_gene: Tensor, marker_type: Tensor) -> Layout:
    """The column layout, checked: marker genes in [0, G), types in [0, C)."""
    mg = marker_gene.detach().to("cpu", torch.int64).contiguous()
    mt = marker_type.detach().to("cpu", torch.int64).contiguous()
    if mg.shape != mt.shape or (mg.numel() and (int(mg.min()) < 0 or int(mg.max()) >= n_genes
                                                or int(mt.min()) < 0 or int(mt.max()) >= n_types)):
        raise ValueError("the fused kernel needs marker genes in [0, G) and marker types in [0, C)")
    return Layout(n_genes, n_types, mg, mt)


def fused_log_likelihood(x: Tensor, offset: Tensor, col: Tensor, log_a: Tensor, lay: Layout,
                         v: Sequence[float], b: float, eps: float) -> Tensor:
    """sum_j term[n, j] W[j, c] (M x C), the fused equivalent of ``model.nb_terms(x[:, gene],
    offset[:, gene] + col, log_a, v, b) @ W`` with gene = [0..G-1, marker_gene] (float32, CPU).
    ``x`` and ``offset`` are M x G, ``col`` has G + K entries."""
    return _FusedLogLikelihood.apply(x, offset, col, log_a, lay, _checked(x, offset, col, lay, v, b, eps))


def _checked(x: Tensor, offset: Tensor, col: Tensor, lay: Layout, v: Sequence[float], b: float,
             eps: float) -> tuple[float, float, float]:
    """The kernel's (v0, h, eps), after checking the shapes of its inputs against ``lay``."""
    M = x.shape[0]
    if x.shape != (M, lay.G) or offset.shape != (M, lay.G) or col.shape != (lay.width,):
        raise ValueError(f"the fused kernel needs x and offset of shape (M, {lay.G}) and col of {lay.width} "
                         f"entries, got {tuple(x.shape)}, {tuple(offset.shape)}, {tuple(col.shape)}")
    return (*_spacing(tuple(v), float(b)), eps)


def log_likelihood_and_backward(x: Tensor, offset: Tensor, col: Tensor, log_a: Tensor, lay: Layout,
                                v: Sequence[float], b: float, eps: float
                                ) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]]:
    """:func:`fused_log_likelihood` without autograd: out and a function that maps ``grad_out``
    (M x C) to the gradients of ``sum(grad_out * out)`` with respect to offset, col and log_a
    (``model.CellAssignModule.em_gradients_`` writes the rest of the training step's out)."""
    out, saved = _forward(x, offset, col, log_a, lay, _checked(x, offset, col, lay, v, b, eps), need_grad=True)
    assert saved is not None
    return out, functools.partial(_backward, saved)


def supported(x: Tensor) -> bool:
    """The kernel runs on float32 CPU tensors."""
    return x.device.type == "cpu" and x.dtype == torch.float32


@functools.cache
def unavailable_reason() -> str | None:
    """None when the compiled kernel can be loaded; otherwise why not, in one line."""
    try:
        _extension()
        return None
    except ImportError as exc:
        return (f"the fused CPU kernel (cellassign_nf._nbkernel) is not built ({exc}); the package was "
                "installed without a C compiler: install gcc and reinstall it to train faster")


def available() -> bool:
    """The compiled kernel can be loaded (logs why not, once per process)."""
    reason = unavailable_reason()
    if reason and reason not in _WARNED:
        _WARNED.add(reason)
        log.warning("%s; using the plain likelihood", reason)
    return reason is None


_WARNED: set[str] = set()
