"""Marker gene matrices (rho): reading, building from gene lists, matching to the data's genes."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from .errors import DuplicateMarkerError, InputError
from .keys import LABEL_COLUMNS, OTHER, PANEL_ONTOLOGY_KEY, UNASSIGNED
from .rules import MARKER_FILE_SUFFIXES

log = logging.getLogger(__name__)


def marker_list_to_matrix(markers: Mapping[str, Sequence[str]], include_other: bool = False) -> pd.DataFrame:
    """Binary genes x cell types matrix from ``{cell type: [marker genes]}``.

    With ``include_other`` an extra column ``other`` with no markers is added: cells that express
    none of the known types' markers can go there.
    """
    genes: list[str] = []
    for type_genes in markers.values():
        for g in type_genes:
            if g not in genes:
                genes.append(str(g))
    rho = pd.DataFrame(0, index=pd.Index(genes, name="gene"), columns=[str(t) for t in markers], dtype=int)
    for cell_type, type_genes in markers.items():
        rho.loc[[str(g) for g in type_genes], str(cell_type)] = 1
    if include_other:
        rho[OTHER] = 0
    return rho


def markers_by_type(rho: pd.DataFrame, genes_present: Iterable[str] | None = None) -> dict[str, list[str]]:
    """``{type: [marker genes]}`` from the binary marker matrix, keeping genes in ``genes_present``
    (all by default); types left without a gene are left out."""
    present = None if genes_present is None else set(map(str, genes_present))
    out: dict[str, list[str]] = {}
    for t in rho.columns:
        genes = [str(g) for g in rho.index[rho[t].to_numpy() > 0] if present is None or str(g) in present]
        if genes:
            out[str(t)] = genes
    return out


@dataclass
class Panel:
    """A checked marker panel: the binary matrix ``rho`` (genes x types) and the Cell Ontology
    term of each type that the file gives one (``ontology``, checked by :mod:`.ontology`)."""

    rho: pd.DataFrame
    ontology: dict[str, str] = field(default_factory=dict)


def read_markers(path: str | Path) -> pd.DataFrame:
    """Read markers from a CSV/TSV binary matrix (genes x types), YAML/JSON ``{type: [genes]}``,
    or a text file with one ``type:gene,gene,...`` line per type (``#`` lines are comments).
    ``path`` may also name a bundled panel (:func:`bundled_panels`), e.g. ``"tme"``. The
    matrix of :func:`read_panel`, which also reads the types' Cell Ontology terms."""
    return read_panel(path).rho


# `.txt`: 'type [CL:0000236]:gene,gene' gives the type a term (a bracket without 'PREFIX:' is part of the name)
_TXT_TYPED_LINE = re.compile(r"(?P<type>[^:\[]*?)\s*\[\s*(?P<term>[A-Za-z]+:[^\]\s]*)\s*\]\s*:(?P<genes>.*)")


def read_panel(path: str | Path) -> Panel:
    """Read and check a marker file or bundled panel (formats: :func:`read_markers`), with the
    Cell Ontology term of each type that has one (docs/inputs.md): YAML/JSON ``{type: {markers:
    [genes], ontology: CL:...}}``, ``.txt`` ``type [CL:...]:genes``, or a CSV/TSV row named
    ``ontology``. A term that is not a current CL term is refused in one line."""
    from .ontology import check_terms

    path = resolve_markers(path)
    suffix = path.suffix.lower()
    terms: dict[str, str] = {}
    try:
        if suffix in (".yaml", ".yml", ".json"):
            rho, terms = _read_mapping(path, suffix)
        elif suffix == ".txt":
            lists: dict[str, list[str]] = {}
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip() or line.lstrip().startswith("#"):  # '#' lines: comments (origin, licence)
                    continue
                if ":" not in line:
                    raise InputError(path, f"line {n} is not 'type:gene,gene,...'", "Use one line per cell type.")
                if (typed := _TXT_TYPED_LINE.fullmatch(line.strip())) is not None:
                    cell_type, genes = typed["type"], typed["genes"]
                    terms[cell_type] = typed["term"]
                else:
                    cell_type, genes = (part.strip() for part in line.split(":", 1))
                lists[cell_type] = [g.strip() for g in genes.split(",") if g.strip()]
            rho = marker_list_to_matrix(lists)
        elif suffix in (".csv", ".tsv"):
            rho = pd.read_csv(path, sep="," if suffix == ".csv" else "\t", index_col=0, dtype=str)
            if PANEL_ONTOLOGY_KEY in rho.index:  # the row of terms
                row = rho.loc[PANEL_ONTOLOGY_KEY]
                terms = {str(t): str(v).strip() for t, v in row.items() if pd.notna(v) and str(v).strip()}
                rho = rho.drop(index=PANEL_ONTOLOGY_KEY)
        else:
            raise InputError(path, f"unsupported marker file type '{suffix}'",
                             "Give a CSV/TSV binary matrix (genes x types), a YAML/JSON {type: [genes]} file, "
                             "or a .txt file with 'type:gene,gene' lines.")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot be read as a marker file ({type(exc).__name__}: {exc})",
                         "Check its format.") from exc
    return Panel(validate_markers(rho, path), check_terms(terms, path))


def _read_mapping(path: Path, suffix: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """A YAML/JSON panel: each type maps to its genes, or to ``{markers: [genes], ontology: CL:...}``."""
    import yaml

    text = path.read_text()
    data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    form = "Write it as {type: [gene, gene, ...], ...} or {type: {markers: [gene, ...], ontology: CL:...}, ...}."
    if not isinstance(data, dict):
        raise InputError(path, "is not a mapping of cell type to a list of marker genes", form)
    lists: dict[str, list[str]] = {}
    terms: dict[str, str] = {}
    for cell_type, value in data.items():
        if isinstance(value, dict):
            unknown = set(value) - {"markers", PANEL_ONTOLOGY_KEY}
            if unknown or not isinstance(value.get("markers", []), list):
                raise InputError(path, f"cell type '{cell_type}' has "
                                 + (f"unknown keys ({', '.join(map(str, sorted(unknown)))})" if unknown
                                    else "markers that are not a list"), form)
            if value.get(PANEL_ONTOLOGY_KEY) is not None:
                terms[str(cell_type)] = str(value[PANEL_ONTOLOGY_KEY]).strip()
            value = value.get("markers", [])
        if not isinstance(value, list):
            raise InputError(path, "is not a mapping of cell type to a list of marker genes", form)
        lists[str(cell_type)] = [str(g) for g in value]
    return marker_list_to_matrix(lists), terms


def write_panel(panel: Panel, path: str | Path) -> None:
    """Write a panel as a matrix (genes x types; CSV for a ``.csv`` path, else TSV) with its terms
    in the first row, ``ontology``: a file :func:`read_panel` reads back to the same panel."""
    from .io import atomic_path

    table = panel.rho.astype(int).astype(object)
    if panel.ontology:
        terms = pd.DataFrame([[panel.ontology.get(str(t), "") for t in table.columns]],
                             index=[PANEL_ONTOLOGY_KEY], columns=table.columns)
        table = pd.concat([terms, table])
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="," if Path(path).suffix.lower() == ".csv" else "\t",
                     index_label=panel.rho.index.name or "gene")


def validate_markers(rho: pd.DataFrame, path: str | Path | None = None) -> pd.DataFrame:
    """Check a marker matrix: binary, unique genes and types, every type (but ``other``) has a marker."""
    if rho.shape[0] == 0 or rho.shape[1] == 0:
        raise InputError(path, "marker matrix is empty", "Give at least one gene and one cell type.")
    rho = rho.copy()
    rho.index = rho.index.astype(str)
    rho.columns = rho.columns.astype(str)
    if rho.index.has_duplicates:
        dups = rho.index[rho.index.duplicated()].unique()[:5]
        raise DuplicateMarkerError(path, f"marker matrix lists genes more than once ({', '.join(dups)})",
                                   "List each gene once.")
    if rho.columns.has_duplicates:
        raise InputError(path, "marker matrix has duplicate cell types", "Name each cell type once.")
    reserved = [c for c in rho.columns if c in (*LABEL_COLUMNS, UNASSIGNED)]
    if reserved:
        raise InputError(path, f"cell type(s) named like a label or column of the outputs: {', '.join(reserved)}",
                         "Rename these types.")
    try:
        values = rho.apply(pd.to_numeric)
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"marker matrix has non-numeric entries ({exc})", "Use 1 for a marker, 0 otherwise.") from exc
    if not values.isin([0, 1]).all().all():
        raise InputError(path, "marker matrix has entries other than 0 and 1", "Use 1 for a marker, 0 otherwise.")
    empty = [c for c in values.columns if values[c].sum() == 0 and c != OTHER]
    if empty:
        raise InputError(path, f"cell type(s) with no marker gene: {', '.join(empty)}",
                         f"Add markers for them, or name a type without markers '{OTHER}'.")
    return values.astype(int)


# --- bundled panels -----------------------------------------------------------------------------------
PANELS_DIR = Path(__file__).parent / "panels"  # also reachable as assets/markers/ in the repository


def bundled_panels() -> dict[str, Path]:
    """Name -> file of the marker panels shipped with the package (``cellassign-nf markers list``)."""
    if not PANELS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(PANELS_DIR.iterdir()) if p.suffix in MARKER_FILE_SUFFIXES}


def resolve_markers(value: str | Path) -> Path:
    """A marker file path, or the file of the bundled panel of that name."""
    path = Path(value)
    if path.exists():
        return path
    panels = bundled_panels()
    if str(value) in panels:
        log.info("markers: bundled panel '%s' (%s)", value, panels[str(value)])
        return panels[str(value)]
    raise InputError(path, "marker file not found, and not the name of a bundled panel "
                     f"({', '.join(panels) or 'none'})",
                     "Check the --markers path, or see 'cellassign-nf markers list'.")


def panel_name(markers: str | Path | None) -> str:
    """A panel's name in model files and reports: a bundled panel's name, else the file's name."""
    if markers is None:
        return ""
    path = Path(markers)
    bundled = bundled_panels()
    if str(markers) in bundled or (path.parent.resolve() == PANELS_DIR.resolve() and path.stem in bundled):
        return path.stem
    return path.name


def panel_differences(given: pd.DataFrame, saved: pd.DataFrame) -> list[str]:
    """How two panels (genes x types) differ, one phrase per difference (empty: the same types
    with the same marker genes; an ``other`` type without markers is ignored)."""
    def by_type(rho: pd.DataFrame) -> dict[str, set[str]]:
        return {str(c): {str(g) for g in rho.index[rho[c] > 0]} for c in rho.columns
                if not (c == OTHER and rho[c].sum() == 0)}

    a, b = by_type(given), by_type(saved)
    out = []
    if set(a) - set(b):
        out.append(f"types not in the model: {', '.join(sorted(set(a) - set(b)))}")
    if set(b) - set(a):
        out.append(f"model types not in --markers: {', '.join(sorted(set(b) - set(a)))}")
    for t in [t for t in b if t in a and a[t] != b[t]]:
        extra, lacking = sorted(a[t] - b[t]), sorted(b[t] - a[t])
        out.append(f"{t}: " + "; ".join(([f"+{', '.join(extra[:5])}"] if extra else [])
                                       + ([f"-{', '.join(lacking[:5])}"] if lacking else [])))
    return out


def panel_header(path: str | Path) -> list[str]:
    """The leading ``#`` comment lines of a panel file (its origin and licence), without the ``#``."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


# --- matching a panel to the data's genes --------------------------------------------------------------
def _data_genes(data) -> tuple[object | None, pd.Index, pd.DataFrame]:
    """The AnnData (or None), its gene names and its ``var`` table (a bare one for a list of names)."""
    import anndata as ad

    adata = data if isinstance(data, ad.AnnData) else None
    var_names = pd.Index(map(str, adata.var_names if adata is not None else data))
    var = adata.var if adata is not None else pd.DataFrame(index=var_names)
    return adata, var_names, var


def _id_keys(panel: list[str], var: pd.DataFrame, var_names: pd.Index, names_are_ids: bool,
             markers_path: str | Path | None, data_path: str | Path | None) -> tuple[pd.Index, str, list[str]]:
    """Data keys (version-less gene IDs), their source and the wanted keys for a panel of Ensembl IDs."""
    from .io import GENE_IDS, ID_COLUMNS, find_column, strip_version

    col = find_column(var, ID_COLUMNS)
    if col is not None:
        keys, source = pd.Index(var[col].astype(str)), f"var['{col}']"
    elif names_are_ids:
        keys, source = var_names, "the gene index"
    else:
        raise InputError(markers_path, "the marker panel lists Ensembl gene IDs (e.g. "
                         f"{', '.join(panel[:3])}) but the data have no gene IDs (genes: {', '.join(var_names[:3])})",
                         "Use a panel of gene symbols, or counts that carry gene IDs (Cell Ranger .h5 or matrix "
                         f"folder, or an h5ad with var['{GENE_IDS}']), checking against {data_path or 'the counts file'}.")
    keys = pd.Index([strip_version(k) for k in keys])
    return keys, source, [strip_version(g) for g in panel]


def _symbol_keys(panel: list[str], var: pd.DataFrame, var_names: pd.Index, names_are_ids: bool,
                 markers_path: str | Path | None, data_path: str | Path | None) -> tuple[pd.Index, str, list[str]]:
    """Data keys (gene symbols), their source and the wanted keys for a panel of gene symbols."""
    from .io import GENE_SYMBOLS, SYMBOL_COLUMNS, find_column

    col = find_column(var, SYMBOL_COLUMNS)
    if col is not None:
        keys, source = pd.Index(var[col].astype(str)), f"var['{col}']"
    elif not names_are_ids:
        keys, source = var_names, "the gene index"
    else:
        raise InputError(markers_path, "the marker panel lists gene symbols (e.g. "
                         f"{', '.join(panel[:3])}) but the data have only gene IDs (genes: {', '.join(var_names[:3])}) "
                         "and no symbols", "Use a panel of Ensembl gene IDs, or counts that carry symbols (Cell Ranger "
                         f".h5 or matrix folder, or an h5ad with var['{GENE_SYMBOLS}']), checking against "
                         f"{data_path or 'the counts file'}.")
    return keys, source, panel


def _gene_totals(adata, layer: str | None) -> Callable[[int], float]:
    """A cached ``column -> total counts`` lookup (0 for every gene when there is no AnnData)."""
    totals: dict[int, float] = {}

    def total(i: int) -> float:
        if i not in totals:
            if adata is None:
                totals[i] = 0.0
            else:
                X = adata.X if layer in (None, "X") or layer not in adata.layers else adata.layers[layer]
                totals[i] = float(X[:, i].sum())
        return totals[i]

    return total


def _key_positions(keys: pd.Index) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Positions of each key, exactly and upper-cased."""
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        exact.setdefault(k, []).append(i)
        folded.setdefault(k.upper(), []).append(i)
    return exact, folded


def _choose_columns(panel: list[str], wanted: list[str], keys: pd.Index, var_names: pd.Index, by_ids: bool,
                    kind: str, total: Callable[[int], float]
                    ) -> tuple[list[tuple[str, int]], list[str], list[str], list[str]]:
    """(panel gene, data column) pairs, with the missing, case-only and duplicated matches for the log."""
    exact, folded = _key_positions(keys)
    chosen: list[tuple[str, int]] = []  # (panel gene, column)
    missing, case_only, duplicated = [], [], []
    for gene, key in zip(panel, wanted):
        cols = exact.get(key)
        if cols is None and not by_ids:
            cols = folded.get(key.upper())
            if cols is not None:
                case_only.append(f"{gene} -> {'/'.join(sorted({keys[c] for c in cols}))}")
        if cols is None:
            missing.append(gene)
            continue
        col = cols[0]
        if len(cols) > 1:
            col = max(cols, key=lambda c: (total(c), -c))
            duplicated.append(f"marker {gene}: the {kind} names {len(cols)} genes of the data ("
                              + ", ".join(f"{var_names[c]}: {total(c):.0f} counts" for c in cols)
                              + f"); using {var_names[col]}, the one with the most counts")
        chosen.append((gene, col))
    return chosen, missing, case_only, duplicated


def _log_matching(kind: str, source: str, n_chosen: int, n_panel: int, n_rho: int, missing: list[str],
                  case_only: list[str], duplicated: list[str]) -> None:
    """Log how the panel matched: the counts, duplicated genes, case-only and missing markers."""
    log.info("markers matched by %s (data's %s): %d of %d panel genes found", kind, source, n_chosen, n_panel)
    for message in duplicated:
        log.warning("%s", message)
    if case_only:
        log.warning("%d marker genes match the data only when ignoring case: %s", len(case_only), ", ".join(case_only))
    if missing:
        log.warning("%d of %d marker genes are not in the data and are ignored: %s%s", len(missing), n_rho,
                    ", ".join(missing[:20]), " ..." if len(missing) > 20 else "")


def _matched_rows(rho: pd.DataFrame, chosen: list[tuple[str, int]], var_names: pd.Index) -> pd.DataFrame:
    """``rho``'s chosen rows re-indexed by the data's gene names, rows naming one data gene combined."""
    sub = rho.loc[[g for g, _ in chosen]].copy()
    sub.index = pd.Index([var_names[c] for _, c in chosen], name=rho.index.name)
    if sub.index.has_duplicates:  # two panel genes resolved to the same data gene: one row, markers combined
        dup = sub.index[sub.index.duplicated()].unique()
        log.warning("marker genes %s name the same gene of the data; their rows are combined",
                    "; ".join(f"{'/'.join(g for g, c in chosen if var_names[c] == d)} -> {d}" for d in dup))
        sub = sub.groupby(level=0, sort=False).max()
    return sub


@dataclass
class MarkerMatch:
    """How a checked panel matched the data: ``rho`` re-indexed by the data's genes, the panel
    itself, and the panel genes the data lack (in panel order). Made once per step and handed to
    the diagnostics and the model, so that neither checks or matches the panel again."""

    rho: pd.DataFrame
    panel: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    markers_path: str | Path | None = None
    ontology: dict[str, str] = field(default_factory=dict)  # type -> Cell Ontology term (Panel.ontology)

    @property
    def empty_types(self) -> list[str]:
        """Types that have markers in the panel but none in the data."""
        return [c for c in self.rho.columns if self.rho[c].sum() == 0 and self.panel[c].sum() > 0]

    def require_every_type(self) -> MarkerMatch:
        """Itself, or one clear error when a type has no marker gene in the data."""
        empty = self.empty_types
        if empty:
            raise InputError(self.markers_path, f"cell type(s) with no marker gene in the data: {', '.join(empty)}",
                             "Add markers for them that the data measure, or remove these types (without "
                             "--require-every-type they are left out of the fit with a warning).")
        return self

    def types_to_fit(self, require_every_type: bool = False) -> MarkerMatch:
        """The match a model is fitted on: ``rho`` without the types that have no marker gene in
        the data (:attr:`empty_types`), left out with one warning naming them (:func:`left_out_warning`);
        ``panel`` stays the panel as given. With ``require_every_type`` such a type is one error
        instead (:meth:`require_every_type`); a panel left without any type that has a marker in
        the data is always one."""
        empty = self.empty_types
        if not empty:
            return self
        if require_every_type:
            self.require_every_type()
        kept = [c for c in self.rho.columns if c not in empty]
        if not any(self.panel[c].sum() > 0 for c in kept):  # nothing, or only a type without markers ('other')
            raise InputError(self.markers_path, f"no cell type has a marker gene in the data ({', '.join(empty)})",
                             "Use the same gene naming in both (symbols vs. Ensembl IDs, species), or a panel "
                             "whose markers the data measure.")
        log.warning("%s", left_out_warning(empty))
        return replace(self, rho=self.rho[kept])


def left_out_warning(types: Sequence[str]) -> str:
    """The one warning about the panel's types left out of a fit for want of a marker gene in the
    data (the log, the model's description, the report and pipeline_info/samples.tsv show it)."""
    return (f"cell type(s) with no marker gene in the data, left out of the fit: {', '.join(map(str, types))} "
            "(no cell is labelled with them; add markers that the data measure, or give --require-every-type "
            "to stop instead)")


def match_markers(rho: pd.DataFrame, data, markers_path: str | Path | None = None,
                  data_path: str | Path | None = None, layer: str | None = None) -> pd.DataFrame:
    """Restrict ``rho`` to the genes the data measure, re-indexed by the data's gene index.

    ``data`` is an AnnData (or just its gene names). A panel of Ensembl IDs is matched to the
    data's gene IDs (``var['gene_ids']`` or an ID index; version suffixes ignored), a panel of
    symbols to its symbols (``var['gene_symbols']`` or the index), whatever the index holds.
    A symbol found only when ignoring case matches with a warning. A panel gene that names
    several of the data's genes (a duplicated symbol) uses the one with the most counts; each
    such case is logged. Missing genes are dropped with a warning; no overlap, or a type left
    with no marker, is an error. Rows keep the panel's order.
    """
    return match_panel(validate_markers(rho, markers_path), data, markers_path, data_path, layer).require_every_type().rho


def load_panel(markers: str | Path, data, data_path: str | Path | None = None, layer: str | None = None,
               other: bool = False) -> MarkerMatch:
    """Read and check a marker file (or bundled panel), with an ``other`` type if asked, and match
    it to the data's genes: the one reading of the panel that a step makes."""
    panel = read_panel(markers)
    rho = panel.rho
    if other and OTHER not in rho.columns:
        rho[OTHER] = 0
    return match_panel(rho, data, markers, data_path, layer, ontology=panel.ontology)


def match_panel(rho: pd.DataFrame, data, markers_path: str | Path | None = None,
                data_path: str | Path | None = None, layer: str | None = None,
                quiet: bool = False, ontology: Mapping[str, str] | None = None) -> MarkerMatch:
    """Match a checked panel (:func:`validate_markers`) to the data, as :func:`match_markers`
    describes, and name the missing genes. A type left with no marker in the data keeps an empty
    column (the diagnostics report it; :meth:`MarkerMatch.types_to_fit` leaves it out of a fit, or refuses it);
    ``quiet`` leaves the matching out of the log; ``ontology`` (the panel's terms) travels with the match."""
    from .io import looks_like_gene_ids

    adata, var_names, var = _data_genes(data)
    panel = [str(g) for g in rho.index]
    by_ids = looks_like_gene_ids(panel)
    names_are_ids = looks_like_gene_ids(var_names[:2000])
    if by_ids:
        keys, source, wanted = _id_keys(panel, var, var_names, names_are_ids, markers_path, data_path)
        kind = "Ensembl gene ID"
    else:
        keys, source, wanted = _symbol_keys(panel, var, var_names, names_are_ids, markers_path, data_path)
        kind = "gene symbol"
    chosen, missing, case_only, duplicated = _choose_columns(panel, wanted, keys, var_names, by_ids, kind,
                                                             _gene_totals(adata, layer))
    if not chosen:
        raise InputError(markers_path, "none of the marker genes is in the data "
                         f"(markers: {', '.join(panel[:5])}; data {kind}s from {source}: "
                         f"{', '.join(map(str, keys[:5]))})",
                         "Use the same gene naming in both (symbols vs. Ensembl IDs, species), "
                         f"checking against {data_path or 'the counts file'}.")
    if not quiet:
        _log_matching(kind, source, len(chosen), len(panel), len(rho), missing, case_only, duplicated)
    return MarkerMatch(_matched_rows(rho, chosen, var_names), rho, missing, markers_path, dict(ontology or {}))
