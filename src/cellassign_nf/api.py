"""The user-facing model: ``CellAssign(adata, markers).train().predict()``, in the scvi-tools style.

The model, its fit and its initialisation are explained in docs/model.md; scvi-tools' calling
conventions (``setup_anndata``, its ``train`` arguments, ``history``, ``save(dir)``) are mapped in
:mod:`.scvi_conventions` and listed in docs/api.md.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from . import __version__, kernels, scvi_conventions
from .design import DesignSpec, apply_design, drop_redundant_columns, make_design
from .errors import InputError, TooFewCellsError
from .io import MAIN_MATRIX, as_count_matrix, atomic_path, dense_counts
from .keys import HISTORY_COLUMNS, LEFT_OUT_TYPES_KEY
from .markers import MarkerMatch, match_panel, panel_name, validate_markers
from .ontology import check_terms
from .model import CellAssignModule, basis_means, log_factorial
from .predict import ModelData, predict_gamma
from .settings import ModelSettings, TrainSettings, with_overrides
from .size_factors import compute_size_factors
from .train import FitResult, fit, resolve_device

log = logging.getLogger(__name__)

MODEL_FORMAT = "cellassign-nf-model/1"
MODEL_FILE_NAME = "model.pt"  # save(dir): the model file in the folder (scvi-tools' name), after the prefix
ADATA_FILE_NAME = "adata.h5ad"  # save(dir, save_anndata=True)


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

    A type of the panel none of whose marker genes the data measure is left out of the model,
    with one warning naming it (:attr:`left_out_types`; ``predict`` has no column for it); with
    ``require_every_type=True`` (a field of ``ModelSettings``) it is an ``InputError`` instead, as is
    a panel of which no type has a marker gene in the data.

    ``ontology`` gives cell types their Cell Ontology terms (``{type: "CL:..."}``, checked; a
    :class:`~cellassign_nf.markers.MarkerMatch` brings its panel's): the model keeps them, and
    ``assign_labels(probabilities, ontology=model.ontology)`` labels cells with them.

    ``adata`` needs at least ``min_cells_fit`` cells (default 50, a field of ``ModelSettings``):
    fewer raise :class:`~cellassign_nf.errors.TooFewCellsError` (a ``ValueError``) before any
    work, as too few cells cannot fit the model reliably. Fit more cells together (cohort mode),
    or lower ``min_cells_fit`` at your own risk.

    The same in scvi-tools' way (docs/api.md): ``CellAssign.setup_anndata(adata, "size_factor",
    batch_key=...)`` records those arguments on the AnnData, and ``CellAssign(adata, markers)``
    takes them from there when none is given here.

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
        ontology: Mapping[str, str] | None = None,
        **model_options: Any,
    ) -> None:
        setup = scvi_conventions.model_setup(adata, design is not None, size_factor_key=size_factor_key,
                                             batch_key=batch_key, categorical_covariate_keys=categorical_covariate_keys,
                                             continuous_covariate_keys=continuous_covariate_keys, layer=layer)
        self.setup_args: dict[str, Any] = dict(setup)
        size_factor_key, layer = setup["size_factor_key"], setup["layer"]
        self.size_factor_key = size_factor_key
        self.layer = layer
        self.settings = with_overrides(settings or ModelSettings(), model_options)
        if adata is not None:  # before any work (a loaded model, adata None, only predicts)
            require_cells_to_fit(adata.n_obs, self.settings)
        self.module: CellAssignModule | None = None
        self.history_table = pd.DataFrame(columns=list(HISTORY_COLUMNS))  # every restart's epochs (history.tsv)
        self.restarts = pd.DataFrame()
        self.train_params: dict[str, Any] = {}
        self.design_spec = DesignSpec()
        self.adata = adata
        self._design: pd.DataFrame | None = None
        self._design_columns: list[str] = []
        self._data: ModelData | None = None
        self._beta0_init: torch.Tensor | None = None
        self.path: Path | None = None  # the file it was loaded from (load)
        self.reference: dict[str, Any] | None = None  # the saved model it was refitted from (refit)
        self.ontology: dict[str, str] = check_terms(ontology) if ontology else {}
        self.train_indices = self.validation_indices = np.array([], dtype=np.int64)  # rows of adata (train)
        if adata is None:  # filled in by load()
            self.rho = self.panel = marker_gene_matrix
            self.panel_name = ""
            return
        match = marker_gene_matrix if isinstance(marker_gene_matrix, MarkerMatch) else \
            match_panel(validate_markers(marker_gene_matrix), adata, layer=layer)
        self.panel, self.panel_name = match.panel, panel_name(match.markers_path)  # the panel as given
        if isinstance(marker_gene_matrix, MarkerMatch) and not ontology:
            self.ontology = dict(match.ontology)
        # a type without a marker gene in the data: left out with a warning, or refused (require_every_type)
        self.rho = match.types_to_fit(self.settings.require_every_type).rho.copy()
        self.rho.index.name, self.rho.columns.name = "gene", None
        covariates, continuous = scvi_conventions.covariates(setup)
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

    # --- scvi-tools' conventions (docs/api.md) ----------------------------------------------------------
    @classmethod
    def setup_anndata(cls, adata: ad.AnnData, size_factor_key: str | None = None, batch_key: str | None = None,
                      categorical_covariate_keys: list[str] | None = None,
                      continuous_covariate_keys: list[str] | None = None, layer: str | None = None) -> None:
        """Record on ``adata`` (in ``uns``) which obs columns hold the size factors and the
        covariates, and which layer the counts: ``CellAssign(adata, markers)`` then uses them.
        Every name is checked against ``adata`` now. Without ``size_factor_key`` the size factors
        are computed from all genes of the AnnData the model is given."""
        scvi_conventions.register(adata, size_factor_key, batch_key, categorical_covariate_keys,
                                  continuous_covariate_keys, layer)

    def view_setup_args(self) -> dict[str, Any]:
        """Print and return the setup the model was built with (``setup_anndata``'s arguments)."""
        print("\n".join(f"{k}: {v}" for k, v in self.setup_args.items()))
        return dict(self.setup_args)

    @property
    def is_trained(self) -> bool:
        return self.module is not None

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """The kept restart's training record, by epoch, in scvi-tools' names (``elbo_train``,
        ``elbo_validation``, ``train_loss``, ``validation_loss``, ``reconstruction_loss_*``;
        docs/model.md section 9). Every restart's epochs: :attr:`history_table`."""
        return scvi_conventions.scvi_history(self.history_table)

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
    def left_out_types(self) -> list[str]:
        """The panel's types that the model leaves out: none of their marker genes is in the data
        it was built on (the panel as given keeps them, ``cell_types`` does not)."""
        fitted = set(map(str, self.rho.columns))
        return [str(t) for t in self.panel.columns if str(t) not in fitted]

    @property
    def design_columns(self) -> list[str]:
        return list(self._design_columns)

    def match(self, adata: ad.AnnData, source: str | Path | None = None) -> MarkerMatch:
        """The model's marker genes matched to ``adata``'s genes (by ID or symbol, as for panels;
        rows in the model's order); data that lack any of them are refused in one line."""
        match = match_panel(validate_markers(self.rho), adata, self.path, source, self.layer, quiet=True)
        if match.missing or len(match.rho) != len(self.rho):
            missing = match.missing or [g for g in self.genes if g not in set(match.rho.index)]
            model = f"the model {self.path.name}" if self.path else "the model"
            raise InputError(source, f"lacks {len(missing)} of the {len(self.rho)} marker genes of {model} "
                             f"(e.g. {', '.join(map(str, missing[:5]))})",
                             "Annotate data that measure every marker gene of the model (Ensembl IDs or symbols), "
                             "or train a new model on these data.")
        return match

    def _prepare(self, adata: ad.AnnData, design: pd.DataFrame | None,
                 unseen_levels: str = "error") -> tuple[pd.Index, ModelData]:
        """Counts of the marker genes, log size factors and design for the cells with counts."""
        genes = self.genes if all(g in adata.var_names for g in self.genes) else list(self.match(adata).rho.index)
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
        col = adata.var_names.get_indexer(genes)
        x = dense_counts(counts, np.flatnonzero(keep), col, layers=layers)
        if design is None and self.design_spec.formula:
            design = apply_design(adata.obs, self.design_spec, unseen=unseen_levels)
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
    def train(self, max_epochs: int | None = None, lr: float | None = None, accelerator: str | None = None,
              devices: int | str | list[int] | None = None, train_size: float | None = None,
              validation_size: float | None = None, batch_size: int | None = None,
              early_stopping: bool | None = None, plan_kwargs: dict[str, Any] | None = None, *,
              settings: TrainSettings | None = None, **options: Any) -> CellAssign:
        """Fit by minibatch EM (Adam), keeping the best of ``n_restarts`` random starts.

        The options are the fields of :class:`~cellassign_nf.settings.TrainSettings`: give
        ``settings`` or the fields as keyword arguments (``max_epochs=100, seed=1``). scvi-tools'
        arguments are taken too (``train_size``, ``accelerator``, ``early_stopping_patience``,
        ``plan_kwargs={"lr": ...}``, ...): docs/api.md says what each becomes; one without a
        meaning here is refused by name (ValueError). ``None`` keeps the default."""
        if isinstance(max_epochs, TrainSettings):  # train(settings), as before the scvi-tools arguments
            settings, max_epochs = max_epochs, None
        if self.adata is None or self._loaded:
            raise RuntimeError("this model was loaded from a file: it predicts, and refit(adata) refits it to a new "
                               "batch; create a new CellAssign to train one")
        mapped = scvi_conventions.train_options(max_epochs=max_epochs, lr=lr, accelerator=accelerator,
                                                devices=devices, train_size=train_size,
                                                validation_size=validation_size, batch_size=batch_size,
                                                early_stopping=early_stopping, plan_kwargs=plan_kwargs, **options)
        settings = with_overrides(settings or TrainSettings(), mapped)
        dev = resolve_device(settings.device)
        data = self._data.to(dev)
        log.info("training on %s: %d cells x %d marker genes x %d types, %d covariate columns",
                 dev, data.n_cells, len(self.genes), len(self.cell_types), len(self.design_columns))
        result: FitResult = fit(data, self._make_module, settings)
        self.module = result.module.cpu()
        self.history_table, self.restarts = result.history, result.restarts
        self.train_params = {**result.settings, "device": str(dev), "n_cells": data.n_cells}
        rows = self.adata.obs_names.get_indexer(self.data_cells)  # the data's cells as rows of adata
        self.train_indices, self.validation_indices = rows[result.train_indices], rows[result.validation_indices]
        return self

    def _require_trained(self) -> CellAssignModule:
        if self.module is None:
            raise RuntimeError("the model is not trained yet: call train() first")
        return self.module

    def predict(self, adata: ad.AnnData | None = None, design: pd.DataFrame | None = None,
                device: str = "auto", unseen_levels: str = "error") -> pd.DataFrame:
        """Assignment probabilities (cells x cell types, rows sum to 1), computed in chunks.

        New cells (``adata``) are scored with the model exactly as saved; their covariates are
        coded by the model's design. A covariate level the model was not fitted on is an error,
        or with ``unseen_levels="reference"`` one warning naming it, its cells scored at the
        reference level. To refit what belongs to a new batch first, see :meth:`refit`."""
        module = self._require_trained()
        cells, data = self._cells_and_data(adata, design, unseen_levels)
        dev = resolve_device(device)
        data = data.to(dev)
        gamma = predict_gamma(module.to(dev), data)
        module.cpu()
        return pd.DataFrame(gamma, index=cells, columns=self.cell_types)

    def _cells_and_data(self, adata: ad.AnnData | None, design: pd.DataFrame | None = None,
                        unseen_levels: str = "error") -> tuple[pd.Index, ModelData]:
        """The cells and model data of ``adata``, or of the model's own AnnData (prepared once)."""
        if adata is None or adata is self.adata:
            if self._data is None:
                if self.adata is None:
                    raise RuntimeError("give the AnnData to predict on (or load the model with one)")
                self.data_cells, self._data = self._prepare(self.adata, None, unseen_levels)
            return self.data_cells, self._data
        return self._prepare(adata, design, unseen_levels)

    def get_normalized_expression(self, adata: ad.AnnData | None = None, indices: Any = None,
                                  transform_batch: Any = None, gene_list: list[str] | None = None,
                                  library_size: float | str = 1, n_samples: int = 1,
                                  return_numpy: bool = False) -> pd.DataFrame | np.ndarray:
        """The expected counts of the marker genes under the fitted model (cells x genes),
        docs/model.md section 9: sum_c gamma[n,c] exp(beta0 + beta D[n] + delta rho) times the size
        factor ``library_size`` (1: a cell of the average library; ``"latent"``: the cell's own).

        ``transform_batch``: the batch level (or levels, averaged) every cell is given in place of
        its own, as in scvi-tools; the batch is ``setup_anndata``'s ``batch_key``. ``indices``:
        rows of the AnnData (default all); ``gene_list``: a subset of the marker genes. The
        expectation is exact, so ``n_samples`` must be 1."""
        module = self._require_trained()
        if n_samples != 1:
            raise ValueError(f"n_samples={n_samples}: the expected expression is computed exactly, not sampled; "
                             "leave n_samples at 1")
        if adata is None:
            adata = self.adata
        if adata is None:
            raise RuntimeError("give the AnnData (or load the model with one)")
        if indices is not None:
            adata = adata[np.asarray(indices)]
        cells, data = self._cells_and_data(adata)  # the model's own cells: prepared once
        gamma = torch.as_tensor(predict_gamma(module, data), dtype=torch.float32)
        if isinstance(library_size, str):
            if library_size not in ("latent", "observed"):
                raise ValueError(f"library_size={library_size!r}: give a number or 'latent' (each cell's size factor)")
            log_s = data.log_s
        else:
            log_s = torch.full_like(data.log_s, float(np.log(library_size)))
        designs = [data.D] if transform_batch is None else \
            [self._batch_design(adata.obs.loc[cells], level) for level in np.atleast_1d(transform_batch)]
        with torch.no_grad():
            type_factor = gamma @ torch.exp(module.delta_matrix()).T  # N x G: sum_c gamma exp(delta rho)
            mean = sum(torch.exp(module.gene_offset(log_s, D) + module.beta0) * type_factor for D in designs)
        values = (mean / len(designs)).numpy().astype(np.float64)
        out = pd.DataFrame(values, index=cells, columns=self.genes)
        if gene_list is not None:
            unknown = [g for g in gene_list if g not in out.columns]
            if unknown:
                raise InputError(None, f"gene_list names genes that are not marker genes of the model: "
                                 f"{', '.join(map(str, unknown[:5]))}", "Give marker genes of the panel.")
            out = out[list(gene_list)]
        return out.to_numpy() if return_numpy else out

    def _batch_design(self, obs: pd.DataFrame, level: Any) -> torch.Tensor | None:
        """The design of ``obs`` with every cell given the batch ``level`` (transform_batch)."""
        batch_key = self.setup_args.get("batch_key")
        if not batch_key or batch_key not in self.design_spec.levels:
            raise InputError(None, "transform_batch needs a batch covariate, and the model has none",
                             "Set the batch with CellAssign.setup_anndata(adata, ..., batch_key=...) before "
                             "creating the model.")
        levels = self.design_spec.levels[batch_key]
        if str(level) not in levels:
            raise InputError(None, f"transform_batch: '{level}' is not a level of '{batch_key}' "
                             f"({', '.join(levels[:10])})", "Give one of the batches the model was fitted on.")
        obs = obs.copy()
        obs[batch_key] = str(level)
        design = apply_design(obs, self.design_spec)
        return torch.as_tensor(design.to_numpy(dtype=np.float32)) if design.shape[1] else None

    def refit(self, adata: ad.AnnData, design: pd.DataFrame | None = None, size_factor_key: str | None = None,
              layer: str | None = None, settings: TrainSettings | None = None, **options: Any) -> CellAssign:
        """A new model of ``adata`` (a new batch) that keeps what defines this model's cell types
        and refits what belongs to the batch (docs/model.md section 8).

        Held fixed: the over-expression ``delta`` of every marker and the dispersion (the RBF
        weights ``a`` and centres). Refitted by the same minibatch EM (early stopping, one start
        from this model): the per-gene baseline ``beta0``, the covariate effects ``beta`` and the
        proportions ``pi``. Covariates: ``design`` (cells x columns), else this model's formula
        rebuilt on ``adata.obs`` (new levels are simply new columns). ``adata`` needs every marker
        gene of the model (matched by ID or symbol) and ``min_cells_fit`` cells. The training
        options are :class:`~cellassign_nf.settings.TrainSettings` fields (``n_restarts`` is 1:
        the start is this model, so restarts would repeat it).

        >>> batch_model = CellAssign.load("reference.model.pt").refit(new_adata, size_factor_key="size_factor")
        >>> probabilities = batch_model.predict()
        """
        source = self._require_trained()
        settings = replace(with_overrides(settings or TrainSettings(), options), n_restarts=1)
        match = self.match(adata)
        if design is None and self.design_spec.formula:
            design, spec = make_design(adata.obs, formula=self.design_spec.formula)
        else:
            spec = None
        new = CellAssign(adata, match, size_factor_key=size_factor_key, layer=layer, design=design,
                         settings=self.settings)
        if spec is not None:
            new.design_spec = spec
        new.v, new.b = self.v, self.b  # the dispersion as a function of the mean is the model's
        new.panel, new.panel_name, new.ontology = self.panel, self.panel_name, self.ontology
        new.reference = self.describe()
        # start beta0 where the data's mean of x / s meets the model's types: mean = exp(beta0) sum_c pi_c exp(delta)
        with torch.no_grad():
            mixture = (source.log_pi().exp()[None, :] * torch.exp(source.delta_matrix())).sum(dim=1)
            new._beta0_init = new._beta0_init - torch.log(mixture)

        def make_module(generator: torch.Generator) -> CellAssignModule:
            module = new._make_module(generator)
            module.hold_types_fixed_(source)
            return module

        dev = resolve_device(settings.device)
        data = new._data.to(dev)
        log.info("refitting beta0, beta and pi of %s on %s: %d cells x %d marker genes, %d covariate columns "
                 "(delta and the dispersion held fixed)", self.path.name if self.path else "the model", dev,
                 data.n_cells, len(new.genes), len(new.design_columns))
        result = fit(data, make_module, settings)
        new.module = result.module.cpu()
        new.history_table, new.restarts = result.history, result.restarts
        new.train_params = {**result.settings, "device": str(dev), "n_cells": data.n_cells, "refit": "batch"}
        return new

    def describe(self) -> dict[str, Any]:
        """Which model this is, as plain values (the annotated h5ad keeps them, the report shows
        them): its file and sha256 (when loaded from one), the version that wrote it, the panel,
        the panel's types it left out (:attr:`left_out_types`), the cell types and their Cell
        Ontology terms (``ontology``, in the order of ``cell_types``, "" for a type without one: a
        list, as type names may hold characters that an h5ad's keys cannot), the marker genes, the
        covariate columns and the cells it was fitted on."""
        info: dict[str, Any] = {"file": self.path.name if self.path else "", "sha256": "", "version": __version__,
                                "panel": self.panel_name, LEFT_OUT_TYPES_KEY: self.left_out_types,
                                "cell_types": self.cell_types,
                                "ontology": [self.ontology.get(t, "") for t in self.cell_types],
                                "marker_genes": len(self.genes), "covariates": self.design_columns,
                                "fitted_cells": int(self.train_params.get("n_cells", 0) or 0)}
        if self.path is not None:
            info["sha256"] = file_sha256(self.path)
            info["version"] = self._file_version or info["version"]
        return info

    def fitted_parameters(self) -> dict[str, Any]:
        """What the report draws of the fit, as plain values (``model_info.json`` and the annotated
        h5ad keep them, so that the report needs neither the model file nor torch): the marker
        genes, ``rho`` and ``delta`` (genes x :attr:`cell_types`, nested lists) and the training
        settings (``train_params`` without its empty values, which an h5ad cannot hold)."""
        return {"genes": [str(g) for g in self.genes], "rho": self.rho.to_numpy().astype(int).tolist(),
                "delta": self.delta.to_numpy(dtype=float).tolist(),
                "train_params": {k: v for k, v in self.train_params.items() if v is not None}}

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
    def save(self, path: str | Path, overwrite: bool = False, save_anndata: bool = False,
             prefix: str | None = None) -> None:
        """Write the fitted model to one file (atomically): ``path`` itself when it ends in
        ``.pt`` (the steps' model files; replaced when it exists), else, as scvi-tools does,
        ``[prefix]model.pt`` in the folder ``path`` (with ``save_anndata`` also
        ``[prefix]adata.h5ad``), which must not hold them already unless ``overwrite``."""
        if Path(path).suffix == ".pt":
            self._save_file(Path(path))
            return
        folder = Path(path)
        files = [folder / f"{prefix or ''}{MODEL_FILE_NAME}"]
        if save_anndata:
            if self.adata is None:
                raise RuntimeError("save_anndata=True, but the model has no AnnData")
            files.append(folder / f"{prefix or ''}{ADATA_FILE_NAME}")
        existing = [f for f in files if f.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists; pass overwrite=True to replace it, or another dir_path")
        folder.mkdir(parents=True, exist_ok=True)
        self._save_file(files[0])
        if save_anndata:
            from .io import write_h5ad

            write_h5ad(self.adata, files[1])

    def _save_file(self, path: Path) -> None:
        module = self._require_trained()
        payload = {
            "format": MODEL_FORMAT, "version": __version__,
            "genes": self.genes, "cell_types": self.cell_types, "rho": self.rho.to_numpy().tolist(),
            "model_params": self.model_params, "v": self.v, "b": self.b,
            "design_spec": self.design_spec.to_dict(), "design_columns": self.design_columns,
            "size_factor_key": self.size_factor_key, "layer": self.layer,
            "state_dict": module.state_dict(), "history": self.history_table.to_dict(orient="list"),
            "restarts": self.restarts.to_dict(orient="list"), "train_params": self.train_params,
            "panel": {"name": self.panel_name, "genes": [str(g) for g in self.panel.index],
                      "cell_types": [str(c) for c in self.panel.columns], "rho": self.panel.to_numpy().tolist(),
                      "ontology": self.ontology},
            "reference": self.reference, "setup": {k: v for k, v in self.setup_args.items() if v is not None},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        self.path, self._file_version = Path(path), __version__

    @classmethod
    def load(cls, path: str | Path, adata: ad.AnnData | None = None, prefix: str | None = None) -> CellAssign:
        """Read a model written by :meth:`save`; it can predict on new data with the same genes.

        ``path``: the model file, or (scvi-tools) the folder ``save(dir_path)`` wrote. ``adata``
        becomes the model's AnnData (``predict()``, ``get_normalized_expression()`` without
        arguments); without it, the folder's saved AnnData when there is one."""
        path = Path(path)
        if path.is_dir():
            folder, path = path, path / f"{prefix or ''}{MODEL_FILE_NAME}"
            if adata is None and (folder / f"{prefix or ''}{ADATA_FILE_NAME}").is_file():
                adata = ad.read_h5ad(folder / f"{prefix or ''}{ADATA_FILE_NAME}")
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
        self.history_table = pd.DataFrame(payload["history"])
        self.restarts = pd.DataFrame(payload["restarts"])
        self.train_params = payload["train_params"]
        panel = payload.get("panel")  # files of 0.1.x have none: their panel is rho
        if panel:
            self.panel = pd.DataFrame(panel["rho"], index=pd.Index(panel["genes"], name="gene"),
                                      columns=panel["cell_types"])
            self.panel_name = panel["name"]
            self.ontology = dict(panel.get("ontology", {}))  # older files have none: no terms
        self.reference = payload.get("reference")
        self._loaded = True
        self.setup_args.update(payload.get("setup") or {})  # older files have none: the setup given at load
        self.path, self._file_version = path, str(payload.get("version", ""))
        # predict with the fused CPU kernel where it was built, unless the fit asked for the plain path
        module.fused = self.train_params.get("fuse") != "off" and kernels.unavailable_reason() is None
        if adata is not None:
            scvi_conventions.check_setup(adata, self.setup_args)
            self.adata = adata
        return self

    _file_version = ""  # the version that wrote the file it was loaded from
    _loaded = False  # read by load(): not trained again

    def __repr__(self) -> str:
        state = "trained" if self.module is not None else "not trained"
        return (f"CellAssign({len(self.genes)} marker genes x {len(self.cell_types)} types, "
                f"{len(self.design_columns)} covariate columns, {state})")



def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
