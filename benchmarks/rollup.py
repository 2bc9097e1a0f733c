"""The fine blood panel on real PBMCs, with and without roll-up (docs/markers.md, "One level, rolled up").

The 700 real PBMCs scanpy ships (cellassign_nf.datasets.pbmc68k_counts; sorted populations in
obs["bulk_labels"]) annotated with pbmc_fine_human (less the types with no marker among these
765 genes): how many cells are labelled at a fine type, at an ancestor term, or not at all, and
the lineage accuracy when every label is taken up the Cell Ontology to T, B, NK, monocyte or
dendritic cell (a label above all five, or unknown, counts as wrong).

    python benchmarks/rollup.py
"""
from __future__ import annotations

import logging

import pandas as pd

LINEAGES = {"T": "CL:0000084", "B": "CL:0000236", "NK": "CL:0000623", "monocyte": "CL:0000576",
            "dendritic": "CL:0000451"}
SORTED = {"CD4+/CD45RA+/CD25- Naive T": "T", "CD4+/CD45RO+ Memory": "T", "CD4+/CD25 T Reg": "T",
          "CD8+ Cytotoxic T": "T", "CD8+/CD45RA+ Naive Cytotoxic": "T", "CD19+ B": "B", "CD56+ NK": "NK",
          "CD14+ Monocyte": "monocyte", "Dendritic": "dendritic"}  # CD34+ progenitors: none of the five


def lineage(term: str) -> str | None:
    """The one lineage of LINEAGES whose term is an ancestor (or self) of ``term``, else None."""
    from cellassign_nf.ontology import TERM_PATTERN, ancestors

    if not TERM_PATTERN.fullmatch(term):
        return None
    kinds = set(ancestors(term))
    hits = [name for name, lineage_term in LINEAGES.items() if lineage_term in kinds]
    return hits[0] if len(hits) == 1 else None


def main() -> None:
    from cellassign_nf import CellAssign
    from cellassign_nf.datasets import pbmc68k_counts
    from cellassign_nf.keys import LEVEL_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY
    from cellassign_nf.labels import label_cells
    from cellassign_nf.markers import read_panel

    logging.disable(logging.WARNING)
    adata = pbmc68k_counts()
    panel = read_panel("pbmc_fine_human")
    present = [t for t in panel.rho.columns if panel.rho.index[panel.rho[t] == 1].isin(adata.var_names).any()]
    print(f"pbmc_fine_human on {adata.n_obs} real PBMCs; types with no marker among these genes, left out: "
          f"{', '.join(sorted(set(panel.rho.columns) - set(present)))}")
    model = CellAssign(adata, panel.rho[present], ontology={t: panel.ontology[t] for t in present})
    probs = model.train(seed=0, progress=False).predict()
    truth = adata.obs["bulk_labels"].astype(str).map(SORTED).reindex(probs.index)
    of_five = truth.notna()
    for rollup in (False, True):
        labels, _ = label_cells(probs, probs.index, 0.5, model.ontology, rollup)
        levels = labels[LEVEL_KEY].astype(str).value_counts().reindex(["type", "ancestor", "none"], fill_value=0)
        called = labels[ONTOLOGY_ID_KEY].astype(str).map(lineage)
        accuracy = float((called[of_five] == truth[of_five]).mean())
        print(f"rollup={str(rollup).lower():5}: {levels['type']} cells at a fine type, {levels['ancestor']} at an "
              f"ancestor term, {levels['none']} unlabelled; lineage accuracy {accuracy:.3f} "
              f"({int(of_five.sum())} cells of the five lineages)")
        if rollup and levels["ancestor"]:
            terms = labels.loc[labels[LEVEL_KEY].astype(str) == "ancestor", ONTOLOGY_LABEL_KEY].astype(str)
            print("  ancestor terms: " + ", ".join(f"{t} {n}" for t, n in pd.Series(terms).value_counts().items()))


if __name__ == "__main__":
    main()
