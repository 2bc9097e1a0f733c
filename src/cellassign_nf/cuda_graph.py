"""Replay of the training step as one CUDA graph.

On a GPU one minibatch step of CellAssign is a few hundred small kernels (the likelihood over
N x (G + K) terms, its backward pass, Adam): at minibatch 1,024 the launches, not the arithmetic,
take the time. :class:`GraphedStep` records the whole step (gather, forward, backward, optimiser
step, clamp, likelihood sum) once and replays it for every full-size minibatch, so one replay
costs one launch. The math is exactly the eager step's: same kernels, same order.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class GraphedStep:
    """Call ``step(idx)`` for a minibatch of cell indices; full-size minibatches are replayed
    from a CUDA graph after ``warmup`` eager steps, smaller ones (the last of an epoch) run
    eagerly. Everything ``step`` reads or writes must stay at fixed addresses (parameters, the
    optimiser's state, a static accumulator), as ``optim.Adam`` keeps them."""

    def __init__(self, step: Callable[[Tensor], None], batch_size: int, device: torch.device,
                 warmup: int = 3) -> None:
        self.step, self.batch_size, self.warmup = step, batch_size, warmup
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)  # the graph's input
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self._eager_calls = 0
        self._stream = torch.cuda.Stream(device)

    def __call__(self, idx: Tensor) -> None:
        if self.failed or idx.numel() != self.batch_size:
            self.step(idx)
            return
        if self.graph is None:
            if self._eager_calls < self.warmup:  # warm-up (allocator, cuBLAS handles) on a side stream
                self._stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self._stream):
                    self.step(idx)
                torch.cuda.current_stream().wait_stream(self._stream)
                self._eager_calls += 1
                return
            self._capture()
            if self.graph is None:
                self.step(idx)
                return
        self.idx.copy_(idx)
        self.graph.replay()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records, runs nothing
                self.step(self.idx)
        except Exception as exc:  # an op that cannot be captured: stay eager
            log.warning("CUDA graph capture failed (%s); training without it", str(exc).splitlines()[0][:200])
            self.failed = True
            return
        self.graph = graph
