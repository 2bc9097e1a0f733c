"""Marker diagnostics: each flag on data made to raise it, with the right names; no
flag on clean simulated data fitted with the default settings; candidates from the data."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellassign_nf.api import CellAssign
from cellassign_nf.diagnostics import FLAG_COLUMNS, check_markers, diagnose
from cellassign_nf.markers import marker_list_to_matrix
from cellassign_nf.predict import assign_labels
from cellassign_nf.simulate import random_markers, simulate

TRUE = {  # the types' true markers; panels below give some of them
    "A": ["a1", "a2", "a3", "a4", "a5", "a6"],
    "B": ["b1", "b2", "b3", "b4"],
    "C": ["c1", "c2", "c3", "c4"],
}


def panel(markers: dict[str, list[str]]) -> pd.DataFrame:
    return marker_list_to_matrix(markers)


def found(diag) -> list[tuple[str, str, str]]:
    return [(f.level, f.name, f.flag) for f in diag.warnings]


def labelled(adata: ad.AnnData, labels) -> ad.AnnData:
    adata = adata.copy()
    adata.obs["cellassign_celltype"] = pd.Categorical(np.asarray(labels, dtype=str))
    return adata


@pytest.fixture(scope="module")
def truth() -> ad.AnnData:
    return simulate(panel(TRUE), n_cells=1500, n_other_genes=300, seed=3)


# --- pre-flight ---------------------------------------------------------------------------------------
def test_two_types_sharing_most_markers_are_flagged_as_a_pair_naming_the_shared_markers():
    shared = {"A": ["s1", "s2", "s3", "a1"], "B": ["s1", "s2", "s3", "b1"], "C": ["c1", "c2", "c3", "c4"]}
    adata = simulate(panel(shared), n_cells=800, seed=1)
    diag = check_markers(adata, panel(shared))
    assert found(diag) == [("pair", "A vs B", "overlap")]
    flag = diag.warnings[0]
    assert flag.markers == ["s1", "s2", "s3"]
    assert "share 3 of their 5 usable markers (s1, s2, s3); only a1 (A) and b1 (B) tell them apart" in flag.message


def test_a_type_whose_markers_are_all_another_types_is_flagged_even_with_little_overlap(truth):
    markers = {**TRUE, "D": ["a1", "a2"]}  # Jaccard 2/6 with A, but D has no marker of its own
    diag = check_markers(truth, panel(markers))
    assert found(diag) == [("pair", "A vs D", "overlap")]
    assert "D has no marker of its own: it is told from the other only by the absence of markers" in \
        diag.warnings[0].message


def test_a_marker_absent_from_the_data_is_named_and_nothing_else_is_flagged(truth):
    markers = {**TRUE, "B": TRUE["B"] + ["NOTAGENE"]}
    diag = check_markers(truth, panel(markers))
    assert found(diag) == [("marker", "NOTAGENE", "missing")]
    assert diag.warnings[0].message.startswith("NOTAGENE (marker of B) is not in the data and was left out.")


def with_genes(adata: ad.AnnData, columns: dict[str, np.ndarray]) -> ad.AnnData:
    extra = sp.csr_matrix(np.column_stack(list(columns.values())).astype(np.float32))
    out = ad.AnnData(sp.hstack([adata.X, extra]).tocsr(), obs=adata.obs.copy())
    out.var_names = list(adata.var_names) + list(columns)
    return out


def test_rare_and_ubiquitous_markers_and_the_type_they_leave_short(truth):
    n = truth.n_obs
    rare = np.zeros(n)
    rare[:3] = 5  # 3 of 1,500 cells: 0.2% < 0.5%
    adata = with_genes(truth, {"RARE1": rare, "HOUSE1": np.full(n, 20.0)})
    markers = {"A": TRUE["A"] + ["HOUSE1"], "B": TRUE["B"], "C": ["c1", "RARE1"]}
    diag = check_markers(adata, panel(markers))
    assert found(diag) == [("marker", "HOUSE1", "ubiquitous"), ("marker", "RARE1", "low_detection"),
                           ("type", "C", "few_markers")]
    by_flag = {f.flag: f for f in diag.warnings}
    assert "detected in 0.2% of cells" in by_flag["low_detection"].message
    assert "detected in 100.0% of cells" in by_flag["ubiquitous"].message
    assert by_flag["few_markers"].message.startswith("C has 1 usable marker (c1); at least 2 are needed")
    assert "RARE1 (low detection)" in by_flag["few_markers"].message
    assert by_flag["few_markers"].markers == ["RARE1"]
    assert diag.markers.loc["RARE1", "detection"] == pytest.approx(3 / n)


RARE_TYPE = {f"T{c}": [f"t{c}_{i}" for i in range(3)] for c in range(10)}  # T0: the rare type


def rare_type_sample(n_cells: int, share: float, seed: int = 0) -> ad.AnnData:
    """``n_cells`` simulated cells of the 10 types of RARE_TYPE, exactly ``round(share * n_cells)``
    of them T0, the others spread evenly over T1..T9, with library-size variation. Every marker,
    and FLAT1 (no type effect), is expressed in every cell (about 55 counts at the mean size);
    each type's markers are 5 to 7 times higher in its cells."""
    rho = panel(RARE_TYPE)
    rho = rho.reindex(list(rho.index) + ["FLAT1"], fill_value=0)
    p0 = min(0.5, 2 * share)
    pool = simulate(rho, n_cells=int(1.1 * n_cells / (1 - p0)) + 50, n_other_genes=300,
                    proportions=[p0] + [(1 - p0) / 9] * 9, fold_change=6, delta_sd=0.05, beta0_mean=4.0,
                    beta0_sd=0.3, seed=seed)
    types = pool.obs["true_celltype"].astype(str).to_numpy()
    k = round(share * n_cells)
    keep = np.concatenate([np.flatnonzero(types == "T0")[:k], np.flatnonzero(types != "T0")[:n_cells - k]])
    assert len(keep) == n_cells
    return pool[np.sort(keep)].copy()


@pytest.mark.parametrize("n_cells, share", [(300, 0.05), (600, 0.02), (600, 0.05), (2_000, 0.01),
                                            (50_000, 0.01), (50_000, 0.02), (50_000, 0.05)])
def test_markers_of_a_type_at_1_to_5_percent_of_cells_are_not_ubiquitous_but_a_flat_gene_is(n_cells, share):
    """T0 holds 1-5% of the cells, so its markers' 95th percentile lies in the other cells; they
    are detected everywhere and 6-fold higher in T0: usable, not ubiquitous. FLAT1, at one level
    in every cell (negative binomial noise, library sizes varying), is flagged, with few cells
    as with many. Catches a spread that looks only at the 95th percentile (T0's markers flagged)
    or one that noise in a few top cells inflates (FLAT1 missed at 300 cells)."""
    adata = rare_type_sample(n_cells, share, seed=n_cells)
    diag = check_markers(adata, panel({**RARE_TYPE, "T1": RARE_TYPE["T1"] + ["FLAT1"]}))
    assert (diag.markers.loc[RARE_TYPE["T0"], "detection"] > 0.98).all(), "T0's markers are on everywhere"
    assert found(diag) == [("marker", "FLAT1", "ubiquitous")], diag.markers.to_string()
    assert (diag.markers.loc[RARE_TYPE["T0"], "fold_spread"] >= 4).all()
    message = diag.warnings[0].message
    assert message.startswith("FLAT1 (marker of T1) is detected in 100.0% of cells (more than 98.0%) and varies "
                              "little: its most expressing cells (the top 0.5% of cells, at least 10) average less "
                              "than 4x its median, and its median is less than 4x its 5th percentile (spread ")
    assert f"(spread {diag.markers.at['FLAT1', 'fold_spread']:.1f}x): it does not single out a type here." in message


@pytest.mark.parametrize("field, value, n_cells, share", [("min_type_fraction", 0.05, 20_000, 0.01),
                                                          ("min_group_cells", 50, 600, 0.02)])
def test_the_smallest_type_the_ubiquitous_rule_sees_is_the_smallest_group_counted_as_a_type(field, value, n_cells,
                                                                                            share):
    """The most expressing cells that the rule compares with the median are as many as the
    smallest group the diagnostics count as a type (min_type_fraction of the cells, at least
    min_group_cells): T0 (200 of 20,000 cells, 12 of 600) is seen with the defaults, and its
    markers are ubiquitous once that group is larger than T0 (5% of the cells; 50 cells), as
    FLAT1 is throughout. Catches a rule that ignores either threshold."""
    from cellassign_nf.settings import DiagnosticThresholds

    adata = rare_type_sample(n_cells, share, seed=1)
    markers = panel({**RARE_TYPE, "T1": RARE_TYPE["T1"] + ["FLAT1"]})
    assert found(check_markers(adata, markers)) == [("marker", "FLAT1", "ubiquitous")]
    diag = check_markers(adata, markers, thresholds=DiagnosticThresholds(**{field: value}))
    assert found(diag) == [("marker", g, "ubiquitous") for g in RARE_TYPE["T0"]] + [("marker", "FLAT1", "ubiquitous"),
                                                                                     ("type", "T0", "few_markers")]


# --- post-fit, on assignments made wrong on purpose ---------------------------------------------------------
def test_a_type_whose_cells_went_to_another_is_merged_into_it_with_its_withheld_markers_as_candidates(truth):
    truth_labels = truth.obs["true_celltype"].astype(str).to_numpy()
    wrong = np.where(truth_labels == "A", "B", truth_labels)  # every A cell called B
    markers = {**TRUE, "A": TRUE["A"][:3]}  # a4..a6 withheld from the panel
    diag = diagnose(labelled(truth, wrong), panel(markers))
    assert found(diag) == [("type", "A", "merged")]
    flag = diag.warnings[0]
    assert flag.against == "B"
    assert flag.message.startswith("A received 0 cells (0.0%), but its markers are high in the")
    assert "A looks merged into B" in flag.message
    high = [m for m in flag.markers if m.startswith("a")]
    assert len(high) >= 2 and set(high) <= {"a1", "a2", "a3"}, "A's markers that are high in the B cells"
    assert "B's own markers b1 are detected in only" in flag.message, "b1 is low in the mixed group"
    assert {"a4", "a5", "a6"} <= set(flag.candidates)


def test_swapped_labels_make_each_type_not_specific_against_the_other(truth):
    truth_labels = truth.obs["true_celltype"].astype(str).to_numpy()
    swapped = np.select([truth_labels == "A", truth_labels == "B"], ["B", "A"], truth_labels)
    diag = diagnose(labelled(truth, swapped), panel(TRUE))
    assert found(diag) == [("type", "A", "not_specific"), ("type", "B", "not_specific")]
    a, b = diag.warnings
    assert (a.against, b.against) == ("B", "A")
    assert "(mean log expression 1.48 vs 4.53) nor than in C:" in a.message
    assert set(a.markers) == set(TRUE["A"]) and set(b.markers) == set(TRUE["B"])
    spec = diag.specificity
    assert spec.loc["A", "B"] > spec.loc["A", "A"] + 1 and spec.loc["C", "C"] > spec.loc["C", "A"] + 1


def test_a_large_unassigned_share_is_flagged(truth):
    labels = truth.obs["true_celltype"].astype(str).to_numpy().copy()
    labels[np.random.default_rng(0).random(truth.n_obs) < 0.3] = "unassigned"
    diag = diagnose(labelled(truth, labels), panel(TRUE))
    assert found(diag) == [("type", "unassigned", "unassigned")]
    assert "of cells are unassigned (more than 20.0%)" in diag.warnings[0].message


# --- clean data, fitted: no false alarm; candidates are the withheld true markers ------------------------
def fit_labels(adata: ad.AnnData, rho: pd.DataFrame) -> ad.AnnData:
    model = CellAssign(adata, rho, size_factor_key="size_factor")
    model.train(n_restarts=1, progress=False)
    labels = assign_labels(model.predict(), 0.5)["cellassign_celltype"]
    return labelled(adata, labels.reindex(adata.obs_names).fillna("unassigned"))


@pytest.mark.parametrize("seed", range(4))
def test_clean_simulations_fitted_with_defaults_raise_no_warning(seed):
    rho = random_markers(30, 6, p_shared=0.15, seed=seed)
    adata = simulate(rho, n_cells=2000, n_other_genes=200, proportion_sd=0.8, size_factors="library", seed=seed)
    diag = diagnose(fit_labels(adata, rho), rho)
    assert diag.warnings == [], diag.table().to_string()
    assert (diag.table()["severity"] == "info").all()


def test_candidates_of_an_assigned_type_are_its_withheld_true_markers(truth):
    markers = {**TRUE, "A": TRUE["A"][:3]}
    diag = diagnose(fit_labels(truth, panel(markers)), panel(markers))
    rows = {f.name: f for f in diag.flags if f.flag == "candidates"}
    assert {"a4", "a5", "a6"} <= set(rows["A"].candidates)
    assert set(rows["A"].candidates) <= set(TRUE["A"]), "a gene without a type effect is not a candidate"
    assert list(diag.table().columns) == list(FLAG_COLUMNS)


# --- the commands -----------------------------------------------------------------------------------------
def test_check_markers_writes_the_tsv_names_the_problem_and_exits_0(truth, tmp_path):
    from click.testing import CliRunner

    from cellassign_nf.cli import main

    counts, markers, out = tmp_path / "counts.h5ad", tmp_path / "markers.txt", tmp_path / "diag.tsv"
    truth.write_h5ad(counts)
    markers.write_text("A:a1,a2,a3\nB:b1,b2,NOTAGENE\nC:c1,c2\n")
    result = CliRunner().invoke(main, ["check-markers", str(counts), "--markers", str(markers), "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(table.columns) == list(FLAG_COLUMNS)
    assert table[["level", "name", "flag"]].values.tolist() == [["marker", "NOTAGENE", "missing"]]
    assert f"marker diagnostics: 1 warning (missing: NOTAGENE); details in {out}\n" in result.stderr


def test_diagnose_needs_assigned_types(truth, tmp_path):
    from click.testing import CliRunner

    from cellassign_nf.cli import main

    counts = tmp_path / "counts.h5ad"
    truth.write_h5ad(counts)
    result = CliRunner().invoke(main, ["diagnose", str(counts), "--markers", "tme", "-o", str(tmp_path / "d.tsv"),
                                       "--specificity", str(tmp_path / "s.tsv")])
    assert result.exit_code == 2
    assert f"error: {counts}: has no obs['cellassign_celltype'] (assigned cell types)" in result.stderr
    assert "check-markers" in result.stderr
    assert not (tmp_path / "d.tsv").exists()


def test_train_logs_the_check_and_a_failing_check_never_stops_training(truth, tmp_path, monkeypatch, caplog):
    from cellassign_nf import steps
    from cellassign_nf.settings import TrainSettings

    counts, markers = tmp_path / "counts.h5ad", tmp_path / "markers.txt"
    truth.write_h5ad(counts)
    markers.write_text("A:a1,a2,a3\nB:b1,b2,NOTAGENE\nC:c1,c2\n")
    outputs = [tmp_path / n for n in ("model.pt", "history.tsv", "probabilities.tsv")]
    fast = TrainSettings(max_epochs=3, n_restarts=1, progress=False)
    steps.train(counts, markers, *outputs, settings=fast)
    assert "marker check before training: 1 warning (missing: NOTAGENE)" in caplog.text

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the check")

    from cellassign_nf import diagnostics

    monkeypatch.setattr(diagnostics, "check_markers", broken)
    for path in outputs:
        path.unlink()
    steps.train(counts, markers, *outputs, settings=fast)
    assert all(p.is_file() for p in outputs)
    assert "marker check before training skipped: RuntimeError: a bug in the check" in caplog.text


# --- the limits that bind: the type-fraction threshold, the panel's genes kept out of the candidates --------
def test_a_type_above_min_group_cells_but_below_min_type_fraction_counts_as_merged(truth):
    """20 cells of A keep their label and the others are called B: more than min_group_cells (10)
    but fewer than min_type_fraction of the cells (2% of 1,500 = 30), so the fraction is the limit
    that makes A a type that received (almost) no cells. Catches a min_type_fraction that is not
    applied (GroupStats.min_cells from min_group_cells alone): A would count as an assigned type."""
    from cellassign_nf.settings import DiagnosticThresholds

    t = DiagnosticThresholds(min_type_fraction=0.02)
    truth_labels = truth.obs["true_celltype"].astype(str).to_numpy()
    kept = np.flatnonzero(truth_labels == "A")[:20]
    wrong = np.where(truth_labels == "A", "B", truth_labels)
    wrong[kept] = "A"
    assert t.min_group_cells < len(kept) < t.min_type_fraction * truth.n_obs  # the fraction binds, not the count
    markers = {**TRUE, "A": TRUE["A"][:3]}
    diag = diagnose(labelled(truth, wrong), panel(markers), thresholds=t)
    assert found(diag) == [("type", "A", "merged")]
    assert diag.warnings[0].against == "B"
    assert diag.warnings[0].message.startswith("A received 20 cells (1.3%), but its markers are high in the")
    # with the default fraction (0.5% of 1,500 < 10 cells) the same 20 cells make A an assigned type
    assert ("type", "A", "merged") not in found(diagnose(labelled(truth, wrong), panel(markers), candidates=False))


def _called_b(labels: np.ndarray) -> np.ndarray:
    return np.where(labels == "A", "B", labels)


def _swapped(labels: np.ndarray) -> np.ndarray:
    return np.select([labels == "A", labels == "B"], ["B", "A"], labels)


@pytest.mark.parametrize("relabel, flag", [(None, "candidates"), (_called_b, "merged"), (_swapped, "not_specific")])
def test_candidates_never_include_the_panels_genes(truth, relabel, flag):
    """Candidate markers are genes to add to the panel: none is a panel gene, in the candidates
    rows and in the merged and not-specific flags alike, although the panel's genes are among the
    genes that separate the groups best (shown by ranking them without the exclusion). Catches
    candidates that let the panel's genes in."""
    from cellassign_nf.diagnostics.candidates import rank_candidates
    from cellassign_nf.size_factors import normalise

    markers = {**TRUE, "A": TRUE["A"][:3]}  # a4..a6 withheld: the candidates A should get
    panel_genes = {g for genes in markers.values() for g in genes}
    labels = truth.obs["true_celltype"].astype(str).to_numpy()
    adata = labelled(truth, labels if relabel is None else relabel(labels))
    diag = diagnose(adata, panel(markers))
    with_candidates = [f for f in diag.flags if f.candidates]
    assert any(f.flag == flag for f in with_candidates), diag.table().to_string()
    for f in with_candidates:
        assert not set(f.candidates) & panel_genes, (f.name, f.flag, f.candidates)
    # without the exclusion the panel's genes rank first: leaving them out is what keeps them out
    unfiltered = rank_candidates(normalise(truth), truth.obs["true_celltype"].astype(str), ["A", "B"], (), 5)
    assert set(unfiltered["A"]) & set(markers["A"]) and set(unfiltered["B"]) & set(markers["B"]), unfiltered


@pytest.mark.parametrize("reference", ["rest", "B"])
def test_candidate_t_tests_give_scanpys_rank_genes_groups_numbers(truth, reference, monkeypatch):
    """The candidates' t-tests (group moments from sparse products, the rest's by difference)
    against scanpy's rank_genes_groups(method="t-test", pts=True) on the same log-normalised
    cells: scores, p-values, adjusted p-values, fold changes and detection, with a third group
    left out of ``groups`` (its cells still count in 'rest'), a gene stored nowhere and a gene
    stored in every cell. Catches a biased variance, a rest without the unselected group, a BH
    adjustment over the wrong genes and a fold change off by expm1."""
    import scanpy as sc

    from cellassign_nf.diagnostics.candidates import t_tests
    from cellassign_nf.size_factors import normalise

    norm = normalise(truth)
    X = norm.X.tolil()
    X[:, 0] = 0
    X[:, 1] = 1.5
    norm.X = sp.csr_matrix(X)
    norm.X.eliminate_zeros()
    labels = truth.obs["true_celltype"].astype(str)
    norm.obs["g"] = pd.Categorical(labels.to_numpy())
    sc.tl.rank_genes_groups(norm, "g", groups=["A", "B"], reference=reference, method="t-test", pts=True,
                            use_raw=False)
    ours = t_tests(norm, labels, ["A"], reference=reference)["A"]
    theirs = sc.get.rank_genes_groups_df(norm, group="A").set_index("names").loc[norm.var_names]
    for ours_col, their_col in [("scores", "scores"), ("pvals", "pvals"), ("pvals_adj", "pvals_adj"),
                                ("logfoldchanges", "logfoldchanges"), ("detection", "pct_nz_group")]:
        np.testing.assert_allclose(ours[ours_col].to_numpy(), theirs[their_col].to_numpy(), rtol=1e-5, atol=1e-12,
                                   err_msg=ours_col)
    assert ours["scores"].iloc[:2].tolist() == [0, 0] and ours["pvals"].iloc[0] == 1  # no difference to test
    # the moments summed over many small blocks of rows: the same numbers
    monkeypatch.setattr("cellassign_nf.diagnostics.base.MOMENT_BLOCK_VALUES", 997)
    pd.testing.assert_frame_equal(t_tests(norm, labels, ["A"], reference=reference)["A"], ours, rtol=1e-9)
    assert (ours["pvals_adj"] < 1e-3).sum() > 10  # the comparison covers genes that pass the threshold
