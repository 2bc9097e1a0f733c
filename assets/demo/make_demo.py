"""Regenerate the demo data: two samples simulated from the CellAssign model, with batch effects.

    python assets/demo/make_demo.py
"""
from pathlib import Path

from cellassign_nf.markers import Panel, marker_list_to_matrix, write_panel
from cellassign_nf.simulate import simulate

HERE = Path(__file__).parent
MARKERS = {
    "T cell": ["CD3D", "CD3E", "CD2", "IL7R"],
    "B cell": ["CD79A", "MS4A1", "CD19", "IGHM"],
    "Monocyte": ["CD14", "LYZ", "FCGR3A", "S100A8"],
    "NK cell": ["NKG7", "GNLY", "KLRD1", "CD2"],
}
# Cell Ontology terms: T cell, B cell, monocyte, natural killer cell
ONTOLOGY = {"T cell": "CL:0000084", "B cell": "CL:0000236", "Monocyte": "CL:0000576", "NK cell": "CL:0000623"}

if __name__ == "__main__":
    rho = marker_list_to_matrix(MARKERS)
    write_panel(Panel(rho, ONTOLOGY), HERE / "markers.csv")
    for i, (name, props) in enumerate([("sample1", (0.4, 0.2, 0.3, 0.1)), ("sample2", (0.3, 0.3, 0.2, 0.2))]):
        adata = simulate(rho, n_cells=600, n_other_genes=300, n_mito_genes=13, proportions=props,
                         delta_range=(2.0, 3.0), batches=("A", "B"), batch_effect=0.3, seed=100 + i, gene_seed=7)
        adata.obs_names = [f"{name}_{c}" for c in adata.obs_names]
        # a few low-quality cells for QC to remove: mostly mitochondrial counts
        mito = adata.var_names.str.startswith("MT-")
        X = adata.X.tolil()
        for c in range(10):
            X[c, mito] = X[c, mito].toarray() + 200
        adata.X = X.tocsr()
        del adata.obs["size_factor"], adata.uns["simulation"], adata.var["beta0"]
        adata.write_h5ad(HERE / f"{name}.h5ad", compression="gzip")
        print(HERE / f"{name}.h5ad", adata.shape)
