"""Training: minibatch EM with Adam, validation split, early stopping, random restarts.

The algorithm, what is detached and why: docs/model.md section 5.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from . import kernels
from .cuda_graph import GraphedStep
from .errors import DeviceError
from .keys import HISTORY_COLUMNS
from .model import CellAssignModule, gamma_from_joint
from .optim import Adam, ReduceOnPlateau
from .predict import ModelData, marginal_log_likelihood
from .progress import progress_bar
from .settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    module: CellAssignModule
    history: pd.DataFrame  # HISTORY_COLUMNS
    restarts: pd.DataFrame  # restart, epochs, final_loglik, seconds, selected
    settings: dict = field(default_factory=dict)
    train_indices: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))  # rows of the data
    validation_indices: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(cuda_problem(), "Check that the job got a GPU (SLURM --gres=gpu:1, docker --gpus all, "
                          "apptainer --nv), that nvidia-smi lists it and that PyTorch is a CUDA build; "
                          "or use --device cpu (pipeline: --device cpu, or drop -profile gpu)")
    return dev


def cuda_problem() -> str:
    """Why CUDA is not usable, in one sentence: PyTorch build, visible devices."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    build = f"PyTorch {torch.__version__} is a CPU-only build" if torch.version.cuda is None else \
        f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"
    seen = "CUDA_VISIBLE_DEVICES is not set" if visible is None else f"CUDA_VISIBLE_DEVICES={visible!r}"
    return f"--device cuda: a GPU was requested but CUDA is not usable ({build}; {seen})"


def want_fusion(settings: TrainSettings, module: CellAssignModule) -> bool:
    """Use the fused CPU likelihood kernel (``kernels.py``)? On the CPU unless ``fuse='off'``;
    ``fuse='on'`` fails when the kernel was not built. On CUDA the step is replayed as a CUDA graph
    instead (``use_cuda_graph``)."""
    if settings.fuse == "off" or next(module.buffers()).device.type != "cpu":
        return False
    reason = kernels.unavailable_reason()
    if settings.fuse == "on" and reason:
        raise DeviceError(f"--fuse on: {reason}", "Install gcc and reinstall cellassign-nf, or use --fuse auto")
    return True


def split_cells(n_cells: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split; with too few cells all are used for training and monitoring."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_cells)
    n_val = int(round(n_cells * validation_fraction))
    if n_val == 0 or n_val == n_cells:
        return np.sort(perm), np.array([], dtype=np.int64)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit(data: ModelData, make_module: Callable[[torch.Generator], CellAssignModule],
        settings: TrainSettings) -> FitResult:
    """Fit ``n_restarts`` models from different random starts and keep the one with the best
    marginal log likelihood (plus log prior) over all cells."""
    settings.check()
    device = data.x.device
    train_np, val_np = split_cells(data.n_cells, settings.validation_fraction, settings.seed)
    train_idx = torch.as_tensor(train_np, device=device)
    val_idx = torch.as_tensor(val_np, device=device)
    if val_idx.numel() == 0:
        log.info("too few cells for a validation split: monitoring the training likelihood")
    rows: list[dict] = []
    summaries: list[dict] = []
    best: tuple[float, CellAssignModule, int] | None = None
    with contextlib.ExitStack() as threads:
        for restart in range(settings.n_restarts):
            gen = torch.Generator().manual_seed(settings.seed * 1009 + restart)
            module = make_module(gen).to(device)
            if want_fusion(settings, module):
                probe = train_idx[: min(256, train_idx.numel())]
                if module.enable_fusion(*data.batch(probe)) and restart == 0:
                    log.info("using the fused CPU likelihood kernel on %d threads", torch.get_num_threads())
                    threads.enter_context(kernels.owning_threads())
            t0 = time.perf_counter()
            history = _fit_one(module, data, train_idx, val_idx, settings, gen, restart)
            final = marginal_log_likelihood(module, data) + float(module.log_prior().detach())
            seconds = time.perf_counter() - t0
            for h in history:
                h["restart"] = restart
            rows.extend(history)
            summaries.append({"restart": restart, "epochs": len(history), "final_loglik": final, "seconds": seconds})
            log.info("restart %d/%d: %d epochs in %.1f s, log likelihood %.2f", restart + 1, settings.n_restarts,
                     len(history), seconds, final)
            if best is None or final > best[0]:
                best = (final, module, restart)
    assert best is not None
    selected = best[2]
    history_df = pd.DataFrame(rows, columns=[c for c in HISTORY_COLUMNS if c != "selected"])
    history_df["selected"] = history_df["restart"] == selected
    restarts_df = pd.DataFrame(summaries)
    restarts_df["selected"] = restarts_df["restart"] == selected
    return FitResult(best[1], history_df, restarts_df, asdict(settings), train_np, val_np)


def _fit_one(module: CellAssignModule, data: ModelData, train_idx: torch.Tensor, val_idx: torch.Tensor,
             settings: TrainSettings, gen: torch.Generator, restart: int) -> list[dict]:
    """One restart: epochs of minibatch EM until early stopping; leaves the best state in ``module``."""
    n_train = train_idx.numel()
    batch_size = min(settings.batch_size, n_train)
    graphed = use_cuda_graph(settings, train_idx.device)
    optimizer = Adam([p for p in module.parameters() if p.requires_grad], lr=settings.lr)  # not what is held fixed
    # halve the step size when the monitored likelihood stalls: big steps early, fine ones late
    scheduler = ReduceOnPlateau(optimizer, factor=0.5, patience=max(1, settings.patience // 3),
                                threshold=settings.rel_tol)
    best_value, best_state, wait = -math.inf, None, 0
    history: list[dict] = []
    train_ll = torch.zeros((), dtype=torch.float64, device=train_idx.device)

    def step(idx: torch.Tensor) -> None:
        _em_step(module, optimizer, data, idx, n_train, train_ll)

    run_step = GraphedStep(step, batch_size, train_idx.device) if graphed else step
    with _epoch_progress(settings, restart) as bar:
        for epoch in range(1, settings.max_epochs + 1):
            perm = train_idx[torch.randperm(n_train, generator=gen).to(train_idx.device)]
            train_ll.zero_()
            for start in range(0, n_train, batch_size):
                run_step(perm[start:start + batch_size])
            train_mean = float(train_ll) / n_train
            val_mean = (marginal_log_likelihood(module, data, val_idx) / val_idx.numel()
                        if val_idx.numel() else float("nan"))
            log_prior = float(module.log_prior().detach()) / n_train  # the prior's share of each training cell
            history.append({"epoch": epoch, "train_loglik": train_mean, "val_loglik": val_mean, "log_prior": log_prior})
            monitored = val_mean if val_idx.numel() else train_mean
            bar(epoch, train_mean, val_mean)
            log.debug("restart %d epoch %d: train %.4f validation %.4f", restart + 1, epoch, train_mean, val_mean)
            if not math.isfinite(train_mean):
                raise FloatingPointError(f"the log likelihood became {train_mean} at epoch {epoch}; "
                                         "try a smaller learning rate (--lr)")
            scheduler.step(monitored)
            improved = not math.isfinite(best_value) or \
                monitored > best_value + settings.rel_tol * max(abs(best_value), 1.0)
            if improved:
                best_value, wait = monitored, 0
                best_state = {k: p.detach().clone() for k, p in module.named_parameters()}
            else:
                wait += 1
                if settings.early_stopping and wait >= settings.patience:
                    break
    if best_state is not None and settings.early_stopping:
        with torch.no_grad():
            for k, p in module.named_parameters():
                p.copy_(best_state[k])
    return history


def _em_step(module: CellAssignModule, optimizer: Adam, data: ModelData, idx: torch.Tensor,
             n_train: int, train_ll: torch.Tensor) -> None:
    """One minibatch EM step: E step (gamma from the current parameters), then one Adam step on
    the expected complete-data log likelihood plus the log prior; adds the minibatch's marginal
    log likelihood to ``train_ll``."""
    x, log_s, D = data.batch(idx)
    if module.uses_kernel(x):  # the same gradients, written out (model.em_gradients_)
        joint = module.em_gradients_(x, log_s, D, n_train)
    else:
        joint = module.joint_log_prob(x, log_s, D)
        # E step on the minibatch; gamma is held fixed within the M step
        gamma = gamma_from_joint(joint.detach())
        q = -(gamma * joint).sum() * (n_train / idx.numel())
        loss = (q - module.log_prior()) / n_train
        optimizer.zero_grad()
        loss.backward()
    optimizer.step()
    module.clamp_()
    train_ll += torch.logsumexp(joint.detach().double(), dim=1).sum() - data.log_factorial.index_select(0, idx).sum()


def use_cuda_graph(settings: TrainSettings, device: torch.device) -> bool:
    """Replay the training step as a CUDA graph (GPU only; ``fuse='off'`` keeps the eager step)."""
    return device.type == "cuda" and settings.fuse != "off"


@contextlib.contextmanager
def _epoch_progress(settings: TrainSettings, restart: int) -> Iterator[Callable[[int, float, float], None]]:
    """Report each epoch: a progress bar on terminals; in logs (pipelines, batch jobs) a line every
    25 epochs."""
    label = f"restart {restart + 1}/{settings.n_restarts}"
    with progress_bar(label, settings.max_epochs, enabled=settings.progress, counted=True) as (update, shown):
        def report(epoch: int, train_ll: float, val_ll: float) -> None:
            info = f"loglik/cell train {train_ll:.3f} validation {val_ll:.3f}"
            update(epoch, info=f"epochs {info}")
            if settings.progress and not shown and epoch % 25 == 0:
                log.info("%s epoch %d/%d: %s", label, epoch, settings.max_epochs, info)

        yield report
