"""Prediction: assignment probabilities (gamma) computed in chunks, labels with a threshold
(docs/model.md section 7)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .labels import assign_labels  # noqa: F401 - part of this module's API (docs/model.md section 7)
from .model import CellAssignModule, gamma_from_joint
# elements of one chunk's N x (G + K) working tensors; bounds memory whatever the number of cells
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


@dataclass
class ModelData:
    """Everything the model reads for N cells, on one device."""

    x: Tensor  # N x G marker-gene counts
    log_s: Tensor  # N, log size factors
    D: Tensor | None  # N x P design matrix, or None when P = 0
    log_factorial: Tensor  # N, sum_g lgamma(x + 1) (float64)

    @property
    def n_cells(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device) -> ModelData:
        return ModelData(self.x.to(device), self.log_s.to(device), None if self.D is None else self.D.to(device),
                         self.log_factorial.to(device))

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The rows ``idx`` (index_select: a third of the time of ``x[idx]`` on the CPU)."""
        return (self.x.index_select(0, idx), self.log_s.index_select(0, idx),
                None if self.D is None else self.D.index_select(0, idx))


def chunk_size(module: CellAssignModule, device: torch.device) -> int:
    width = module.n_genes + module.n_markers
    return max(1, CHUNK_ELEMENTS.get(device.type, 1 << 24) // max(width, 1))


@torch.no_grad()
def iter_joint(module: CellAssignModule, data: ModelData, idx: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (cell indices, joint log prob M x C) chunk by chunk."""
    idx = torch.arange(data.n_cells, device=data.x.device) if idx is None else idx
    step = chunk_size(module, data.x.device)
    for start in range(0, idx.numel(), step):
        sub = idx[start:start + step]
        yield sub, module.joint_log_prob(*data.batch(sub))


@torch.no_grad()
def marginal_log_likelihood(module: CellAssignModule, data: ModelData, idx: Tensor | None = None) -> float:
    """sum_n log p(x_n) = sum_n logsumexp_c(log pi[c] + sum_g log NB), with all constants."""
    total = 0.0
    for sub, joint in iter_joint(module, data, idx):
        total += float(torch.logsumexp(joint.double(), dim=1).sum() - data.log_factorial[sub].sum())
    return total


@torch.no_grad()
def predict_gamma(module: CellAssignModule, data: ModelData) -> np.ndarray:
    """gamma (N x C) for all cells, computed chunk by chunk and gathered on the CPU."""
    out = np.empty((data.n_cells, module.n_types), dtype=np.float64)
    for sub, joint in iter_joint(module, data):
        out[sub.cpu().numpy()] = gamma_from_joint(joint.double()).cpu().numpy()
    return out
