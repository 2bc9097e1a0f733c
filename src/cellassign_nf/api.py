"""The user-facing model: ``CellAssign(adata, markers).train().predict()``, in the scvi-tools style.

The model, its fit and its initialisation are explained in docs/model.md.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from . import __version__, kernels
from .design import DesignSpec, apply_design, drop_redundant_columns, make_design
from .errors import InputError, TooFewCellsError
from .io import MAIN_MATRIX, as_count_matrix, atomic_path, dense_counts
from .keys import HISTORY_COLUMNS
from .markers import MarkerMatch, match_panel, validate_markers
from .model import CellAssignModule, basis_means, log_factorial
from .predict import ModelData, predict_gamma
from .settings import ModelSettings, TrainSettings, with_overrides
from .size_factors import compute_size_factors
from .train import FitResult, fit, resolve_device

log = logging.getLogger(__name__)

MODEL_FORMAT = "cellassign-nf-model/1"


def require_cells_to_fit(n_cells: int, settings: ModelSettings, source: str | Path | None = None) -> None:
    """Raise :class:`~cellassign_nf.errors.TooFewCellsError` for fewer than ``settings.min_cells_fit`` cells."""
    if n_cells < settings.min_cells_fit:
        raise TooFewCellsError(n_cells, settings.min_cells_fit, source)


class CellAssign:
    """CellAssign for one AnnData and one binary marker matrix (genes x cell types), or the
    :class:`~cellassign_nf.markers.MarkerMatch` of one (a panel already checked and matched).

    The model's options are the fields of :class:`~cellassign_nf.settings.ModelSettings`: give
    ``settings=ModelSettings(...)`` or the fields as keyword arguments (``min_delta=1.5``).
    The model uses the marker genes only; size factors come from all genes (total counts over
    the mean) unless ``size_factor_key`` names them in ``adata.obs``. Covariates (``batch_key``,
    ``categorical_covariate_keys``, ``continuous_covariate_keys``) or a ready ``design`` matrix
    (cells x covariates, no intercept) enter as ``beta``.

    ``adata`` needs at least ``min_cells_fit`` cells (default 50, a field of ``ModelSettings``):
    fewer raise :class:`~cellassign_nf.errors.TooFewCellsError` (a ``ValueError``) before any
    work, as too few cells cannot fit the model reliably. Fit more cells together (cohort mode),
    or lower ``min_cells_fit`` at your own risk.

    >>> model = CellAssign(adata, marker_gene_matrix, size_factor_key="size_factor")
    >>> model.train()
    >>> probabilities = model.predict()      # cells x types, rows sum to 1
    """

    def __init__(
        self,
        adata: ad.AnnData | None,
        marker_gene_matrix: pd.DataFrame | MarkerMatch,
        size_factor_key: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        layer: str | None = None,
        design: pd.DataFrame | None = None,
        settings: ModelSettings | None = None,
        **model_options: Any,
    ) -> None:
        self.size_factor_key = size_factor_key
        self.layer = layer
        self.settings = with_overrides(settings or ModelSettings(), model_options)
        if adata is not None:  # before any work (a loaded model, adata None, only predicts)
            require_cells_to_fit(adata.n_obs, self.settings)
        self.module: CellAssignModule | None = None
        self.history = pd.DataFrame(columns=list(HISTORY_COLUMNS))
        self.restarts = pd.DataFrame()
        self.train_params: dict[str, Any] = {}
        self.design_spec = DesignSpec()
        self.adata = adata
        self._design: pd.DataFrame | None = None
        self._design_columns: list[str] = []
        self._data: ModelData | None = None
        self._beta0_init: torch.Tensor | None = None
        if adata is None:  # filled in by load()
            self.rho = marker_gene_matrix
            return
        match = marker_gene_matrix if isinstance(marker_gene_matrix, MarkerMatch) else \
            match_panel(validate_markers(marker_gene_matrix), adata, layer=layer)
        self.rho = match.require_every_type().rho.copy()
        self.rho.index.name, self.rho.columns.name = "gene", None
        covariates = ([batch_key] if batch_key else []) + list(categorical_covariate_keys or [])
        continuous = list(continuous_covariate_keys or [])
        if design is None and (covariates or continuous):
            obs = adata.obs.copy()
            for key in covariates:
                if key in obs:
                    obs[key] = obs[key].astype(str).where(obs[key].notna())
            for key in continuous:
                if key in obs and not pd.api.types.is_numeric_dtype(obs[key]):
                    raise InputError(None, f"continuous covariate '{key}' is not numeric",
                                     "Pass it as a categorical covariate instead.")
            design, self.design_spec = make_design(obs, covariates + continuous)
        elif design is not None:  # a ready design matrix: drop what the model cannot estimate, with a warning
            design, self.design_spec.dropped = drop_redundant_columns(design.reindex(adata.obs_names))
        self._design = design
        self._design_columns = [] if design is None else [str(c) for c in design.columns]
        self.data_cells, self._data = self._prepare(adata, design)
        x_max = float(self._data.x.max()) if self._data.x.numel() else 1.0
        self.v, self.b = basis_means(x_max, 0.0, self.settings.n_centres)
        # start of beta0 (the same for every restart): log mean of size-factor-scaled counts
        # (the mean over cells of x / s, as one matrix-vector product: no cells x genes temporary)
        x, n = self._data.x, max(self._data.n_cells, 1)
        self._beta0_init = torch.log(torch.mv(x.T, torch.exp(-self._data.log_s)) / n + 1e-2)

    # --- data -------------------------------------------------------------------------------------
    @property
    def model_params(self) -> dict[str, Any]:
        """The model's options as a dict (the fields of ``self.settings``)."""
        return asdict(self.settings)

    @property
    def genes(self) -> list[str]:
        return list(self.rho.index)

    @property
    def cell_types(self) -> list[str]:
        return list(self.rho.columns)

    @property
    def design_columns(self) -> list[str]:
        return list(self._design_columns)

    def _prepare(self, adata: ad.AnnData, design: pd.DataFrame | None) -> tuple[pd.Index, ModelData]:
        """Counts of the marker genes, log size factors and design for the cells with counts."""
        missing = [g for g in self.genes if g not in adata.var_names]
        if missing:
            raise InputError(None, f"the data lack {len(missing)} of the model's marker genes "
                             f"(e.g. {', '.join(missing[:5])})", "Predict on data with the same genes.")
        use_layer = self.layer not in (None, MAIN_MATRIX)
        if use_layer and self.layer not in adata.layers:
            raise InputError(None, f"no layer '{self.layer}' (layers: {', '.join(adata.layers) or 'none'})",
                             f"Name an existing layer, or {MAIN_MATRIX} (the default) for the main matrix.")
        counts = adata.layers[self.layer] if use_layer else adata.X
        layers = list(adata.layers)
        if self.size_factor_key:
            if self.size_factor_key not in adata.obs:
                raise InputError(None, f"no size factors in obs['{self.size_factor_key}']",
                                 "Compute them with 'cellassign-nf size-factors' or leave size_factor_key out.")
            s = adata.obs[self.size_factor_key].to_numpy(dtype=np.float64)
        else:  # from all genes (the checked CSR is then also what the marker counts are cut from)
            counts = as_count_matrix(counts, layers=layers)
            s = compute_size_factors(adata, counts if use_layer else None)
        keep = np.isfinite(s) & (s > 0)
        if not keep.all():
            log.warning("removed %d cells with zero total counts (or size factor <= 0) of %d", (~keep).sum(), len(s))
        if not keep.any():
            raise InputError(None, "no cell has counts", "Check the input data.")
        cells = adata.obs_names[keep]
        col = adata.var_names.get_indexer(self.genes)
        x = dense_counts(counts, np.flatnonzero(keep), col, layers=layers)
        if design is None and self.design_spec.formula:
            design = apply_design(adata.obs, self.design_spec)
        D = None
        if design is not None and design.shape[1] > 0:
            design = design.reindex(adata.obs_names)
            if design.isna().any().any():
                raise InputError(None, "the design matrix lacks some cells or has NaN values",
                                 "Give one row of covariates per cell.")
            D = torch.as_tensor(design.to_numpy(dtype=np.float32)[keep])
        xt = torch.as_tensor(x)
        data = ModelData(x=xt, log_s=torch.as_tensor(np.log(s[keep]), dtype=torch.float32), D=D,
                         log_factorial=log_factorial(xt))
        return cells, data

    def _make_module(self, generator: torch.Generator | None = None) -> CellAssignModule:
        p = self.settings
        return CellAssignModule(torch.as_tensor(self.rho.to_numpy(dtype=np.float32)), len(self.design_columns),
                                self.v, self.b, min_delta=p.min_delta, dirichlet_concentration=p.dirichlet_concentration,
                                shrinkage=p.shrinkage, beta0_init=self._beta0_init, generator=generator)

    # --- training and prediction ---------------------------------------------------------------
    def train(self, settings: TrainSettings | None = None, **options: Any) -> CellAssign:
        """Fit by minibatch EM (Adam), keeping the best of ``n_restarts`` random starts.

        The options are the fields of :class:`~cellassign_nf.settings.TrainSettings`: give
        ``settings`` or the fields as keyword arguments (``max_epochs=100, seed=1``)."""
        if self.adata is None:
            raise RuntimeError("this model was loaded from a file; create a new CellAssign to train")
        settings = with_overrides(settings or TrainSettings(), options)
        dev = resolve_device(settings.device)
        data = self._data.to(dev)
        log.info("training on %s: %d cells x %d marker genes x %d types, %d covariate columns",
                 dev, data.n_cells, len(self.genes), len(self.cell_types), len(self.design_columns))
        result: FitResult = fit(data, self._make_module, settings)
        self.module = result.module.cpu()
        self.history, self.restarts = result.history, result.restarts
        self.train_params = {**result.settings, "device": str(dev), "n_cells": data.n_cells}
        return self

    def _require_trained(self) -> CellAssignModule:
        if self.module is None:
            raise RuntimeError("the model is not trained yet: call train() first")
        return self.module

    def predict(self, adata: ad.AnnData | None = None, design: pd.DataFrame | None = None,
                device: str = "auto") -> pd.DataFrame:
        """Assignment probabilities (cells x cell types, rows sum to 1), computed in chunks."""
        module = self._require_trained()
        if adata is None or adata is self.adata:
            if self._data is None:
                raise RuntimeError("give the AnnData to predict on")
            cells, data = self.data_cells, self._data
        else:
            cells, data = self._prepare(adata, design)
        dev = resolve_device(device)
        data = data.to(dev)
        gamma = predict_gamma(module.to(dev), data)
        module.cpu()
        return pd.DataFrame(gamma, index=cells, columns=self.cell_types)

    # --- fitted parameters ------------------------------------------------------------------------
    @property
    def delta(self) -> pd.DataFrame:
        """Fitted over-expression delta (genes x types; 0 where not a marker)."""
        m = self._require_trained().delta_matrix().numpy()
        return pd.DataFrame(m, index=self.rho.index, columns=self.rho.columns)

    @property
    def beta(self) -> pd.DataFrame:
        """Base expression ``beta0`` and covariate effects ``beta`` (genes x (1 + P))."""
        m = self._require_trained()
        values = np.column_stack([m.beta0.detach().numpy(), m.beta.detach().numpy()])
        return pd.DataFrame(values, index=self.rho.index, columns=["beta0", *self.design_columns])

    @property
    def pi(self) -> pd.Series:
        """Fitted cell-type proportions."""
        return pd.Series(self._require_trained().log_pi().exp().detach().numpy(), index=self.cell_types)

    @property
    def a(self) -> np.ndarray:
        """Fitted RBF weights of the inverse dispersion."""
        return self._require_trained().log_a.exp().detach().numpy()

    # --- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted model to one file (atomically)."""
        module = self._require_trained()
        payload = {
            "format": MODEL_FORMAT, "version": __version__,
            "genes": self.genes, "cell_types": self.cell_types, "rho": self.rho.to_numpy().tolist(),
            "model_params": self.model_params, "v": self.v, "b": self.b,
            "design_spec": self.design_spec.to_dict(), "design_columns": self.design_columns,
            "size_factor_key": self.size_factor_key, "layer": self.layer,
            "state_dict": module.state_dict(), "history": self.history.to_dict(orient="list"),
            "restarts": self.restarts.to_dict(orient="list"), "train_params": self.train_params,
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | Path) -> CellAssign:
        """Read a model written by :meth:`save`; it can predict on new data with the same genes."""
        path = Path(path)
        if not path.exists():
            raise InputError(path, "model file not found", "Give the model file written by 'cellassign-nf train'.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(path, f"cannot be read as a cellassign-nf model ({type(exc).__name__})",
                             "Give the model file written by 'cellassign-nf train'.") from exc
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise InputError(path, "is not a cellassign-nf model file", "Give the file written by 'cellassign-nf train'.")
        rho = pd.DataFrame(payload["rho"], index=pd.Index(payload["genes"], name="gene"),
                           columns=payload["cell_types"])
        self = cls(None, rho, size_factor_key=payload["size_factor_key"], layer=payload["layer"],
                   settings=ModelSettings(**payload["model_params"]))
        self.design_spec = DesignSpec(**payload["design_spec"])
        self._design_columns = payload["design_columns"]
        self.v, self.b = payload["v"], payload["b"]
        module = self._make_module()
        module.load_state_dict(payload["state_dict"])
        self.module = module
        self.history = pd.DataFrame(payload["history"])
        self.restarts = pd.DataFrame(payload["restarts"])
        self.train_params = payload["train_params"]
        # predict with the fused CPU kernel where it was built, unless the fit asked for the plain path
        module.fused = self.train_params.get("fuse") != "off" and kernels.unavailable_reason() is None
        return self

    def __repr__(self) -> str:
        state = "trained" if self.module is not None else "not trained"
        return (f"CellAssign({len(self.genes)} marker genes x {len(self.cell_types)} types, "
                f"{len(self.design_columns)} covariate columns, {state})")

