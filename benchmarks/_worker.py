"""One measurement in a fresh process (so peak memory figures never mix): fit one implementation
on one simulated data set and write a JSON record.

Run by ``bench.py`` under the right interpreter (our venv for ``ours``, ``.venv-bench`` for the
scvi-tools ``peer``); not meant to be called by hand, but it can be::

    python benchmarks/_worker.py --impl ours --data /tmp/x.h5ad --markers /tmp/x.csv \
        --mode epochs --epochs 3 --out /tmp/r.json

Modes:
  epochs  fixed number of epochs, early stopping off, a validation pass every epoch on both sides
          (what an early-stopping fit does each epoch); per-epoch wall time.
  e2e     the full fit with early stopping (each side's defaults, one restart for ours), then
          predict on all cells; wall time from model construction to probabilities, accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def rss_now_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(args):
    import anndata as ad
    import pandas as pd

    adata = ad.read_h5ad(args.data)
    markers = pd.read_csv(args.markers, index_col=0)
    return adata, markers


def accuracy(pred, truth) -> float:
    import numpy as np

    labels = np.asarray(pred.columns)[pred.to_numpy().argmax(axis=1)]
    return float((labels == np.asarray(truth)).mean())


def run_ours(args, adata, markers, rec):
    import torch
    from cellassign_nf import CellAssign

    rec["torch"] = torch.__version__
    if args.threads:
        torch.set_num_threads(args.threads)
    rec["threads"] = torch.get_num_threads()
    try:
        import cellassign_nf

        rec["impl_version"] = getattr(cellassign_nf, "__version__", "?")
    except Exception:  # pragma: no cover
        pass
    extra = {}
    if args.n_centres:
        extra["n_centres"] = args.n_centres
    rec["rss_after_import_mb"] = rss_now_mb()
    t0 = time.perf_counter()
    model = CellAssign(adata, markers, size_factor_key="size_factor", **extra)
    t_setup = time.perf_counter() - t0
    train_kw = dict(batch_size=args.batch_size, n_restarts=1, seed=args.seed, device=args.device)
    if _accepts(model.train, "progress"):
        train_kw["progress"] = False
    if args.lr:
        train_kw["lr"] = args.lr
    if args.mode == "epochs":
        train_kw.update(max_epochs=args.epochs, early_stopping=False)
    else:
        train_kw.update(max_epochs=args.max_epochs, early_stopping=True)
    if _accepts(model.train, "fuse"):
        if args.fuse != "auto":
            train_kw["fuse"] = args.fuse
        rec["fuse_setting"] = train_kw.get("fuse", "auto")
    # Per-epoch times without touching the package: every epoch ends with one validation pass
    # (train.marginal_log_likelihood); time-stamp those calls. Falls back to wall / epochs.
    stamps: list[float] = []
    try:
        import cellassign_nf.train as _train_mod

        _orig = _train_mod.marginal_log_likelihood

        def _stamped(*a, **k):
            out = _orig(*a, **k)
            _sync(args.device)
            stamps.append(time.perf_counter())
            return out

        _train_mod.marginal_log_likelihood = _stamped
    except (ImportError, AttributeError):
        pass
    from cellassign_nf.settings import TrainSettings

    rec["lr"] = train_kw.get("lr", TrainSettings().lr)  # train(lr=None) keeps the default
    _sync(args.device)
    t1 = time.perf_counter()
    model.train(**train_kw)
    _sync(args.device)
    t_train = time.perf_counter() - t1
    hist = model.history_table  # every epoch of the restart (history: scvi-tools' per-key frames)
    rec["fused"] = bool(getattr(getattr(model, "module", None), "fused", False))
    rec["epochs_run"] = int(len(hist))
    rec["setup_s"] = t_setup
    rec["train_s"] = t_train
    rec["epoch_times"] = None
    restarts = getattr(model, "restarts", None)
    if restarts is not None and "seconds" in getattr(restarts, "columns", []):
        rec["restart_seconds"] = float(restarts["seconds"].sum())
    for col in ("seconds", "epoch_seconds", "time"):
        if col in hist.columns:
            rec["epoch_times"] = [float(v) for v in hist[col]]
            rec["epoch_time_source"] = f"history['{col}']"
            break
    else:
        n = len(hist)
        if n and len(stamps) >= n:
            edges = [t1] + stamps[:n]
            rec["epoch_times"] = [b - a for a, b in zip(edges[:-1], edges[1:])]
            rec["epoch_time_source"] = "validation-pass time stamps"
    if args.mode == "e2e" or args.predict:
        t2 = time.perf_counter()
        pred = model.predict()
        rec["predict_s"] = time.perf_counter() - t2
        truth = adata.obs.loc[pred.index, "true_celltype"].astype(str)
        rec["accuracy"] = accuracy(pred, truth)
        rec["final_val_loglik"] = float(hist["val_loglik"].iloc[-1]) if len(hist) else None
        rec["val_curve"] = [float(v) for v in hist["val_loglik"]]  # log likelihood per cell
    rec["e2e_s"] = time.perf_counter() - t0


def _accepts(fn, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _default(fn, name: str):
    import inspect

    try:
        p = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def run_peer(args, adata, markers, rec):
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    import scvi
    import torch
    from lightning.pytorch.callbacks import Callback
    from scvi.external import CellAssign

    logging.getLogger("scvi").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rec["torch"] = torch.__version__
    rec["impl_version"] = scvi.__version__
    rec["threads"] = torch.get_num_threads()
    scvi.settings.seed = args.seed
    torch.set_num_threads(rec["threads"])  # scvi's seed setting can touch threads; keep the default

    if args.n_centres:  # B is a module-level constant in scvi-tools; patch both modules that read it
        import scvi.external.cellassign._model as m1
        import scvi.external.cellassign._module as m2

        m1.B = m2.B = int(args.n_centres)

    class EpochTimer(Callback):
        def __init__(self):
            self.times, self._t = [], None

        def on_train_epoch_start(self, trainer, pl_module):
            _sync(args.device)
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation pass
            _sync(args.device)
            self.times.append(time.perf_counter() - self._t)

    rec["rss_after_import_mb"] = rss_now_mb()
    t0 = time.perf_counter()
    CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    model = CellAssign(adata, markers)
    t_setup = time.perf_counter() - t0
    timer = EpochTimer()
    accel = "gpu" if args.device.startswith("cuda") else "cpu"
    train_kw = dict(
        batch_size=args.batch_size,
        accelerator=accel,
        devices=1,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if args.lr:
        train_kw["lr"] = args.lr
    if args.mode == "epochs":
        # no early stopping; still validate every epoch like an early-stopping fit does
        train_kw.update(max_epochs=args.epochs, early_stopping=False, check_val_every_n_epoch=1)
        if args.limit_train_batches:
            train_kw["limit_train_batches"] = args.limit_train_batches
            rec["limit_train_batches"] = args.limit_train_batches
            train_kw["limit_val_batches"] = args.limit_train_batches
    else:
        train_kw.update(max_epochs=args.max_epochs, early_stopping=True)
    rec["lr"] = train_kw.get("lr", _default(model.train, "lr"))
    _sync(args.device)
    t1 = time.perf_counter()
    model.train(**train_kw)
    _sync(args.device)
    rec["train_s"] = time.perf_counter() - t1
    rec["setup_s"] = t_setup
    rec["epoch_times"] = timer.times
    rec["epoch_time_source"] = "lightning on_train_epoch_start/end (includes the validation pass)"
    rec["epochs_run"] = len(timer.times)
    if args.mode == "e2e" or args.predict:
        t2 = time.perf_counter()
        pred = model.predict()
        rec["predict_s"] = time.perf_counter() - t2
        pred.index = adata.obs_names
        rec["accuracy"] = accuracy(pred, adata.obs["true_celltype"].astype(str))
        hist = model.history.get("elbo_validation")
        rec["final_val_loglik"] = None if hist is None else -float(hist.iloc[-1, 0])
        rec["val_curve"] = [] if hist is None else [-float(v) for v in hist.iloc[:, 0]]  # -loss per cell
    rec["e2e_s"] = time.perf_counter() - t0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["ours", "peer"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--markers", required=True)
    p.add_argument("--mode", choices=["epochs", "e2e"], default="epochs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=None, help="default: each implementation's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-centres", type=int, default=None, help="B, the number of RBF centres")
    p.add_argument("--limit-train-batches", type=int, default=None, help="peer only: stop each epoch early")
    p.add_argument("--fuse", default="auto", choices=["auto", "on", "off"], help="ours: fast paths (on: fused CPU kernel; off: plain)")
    p.add_argument("--predict", action="store_true", help="also predict after an 'epochs' run")
    p.add_argument("--threads", type=int, default=None, help="ours: torch / kernel threads (default: all cores)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    rec = {"impl": args.impl, "mode": args.mode, "device": args.device, "batch_size": args.batch_size,
           "pid": os.getpid(), "python": sys.executable,
           "max_epochs": args.max_epochs if args.mode == "e2e" else args.epochs}
    adata, markers = load(args)
    rec["n_cells"], rec["n_markers"], rec["n_types"] = adata.n_obs, markers.shape[0], markers.shape[1]
    rec["rss_before_mb"] = rss_now_mb()
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        rec["gpu"] = torch.cuda.get_device_name()
    (run_ours if args.impl == "ours" else run_peer)(args, adata, markers, rec)
    rec["peak_rss_mb"] = peak_rss_mb()
    if args.device.startswith("cuda"):
        import torch

        rec["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    with open(args.out, "w") as fh:
        json.dump(rec, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
