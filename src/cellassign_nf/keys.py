"""The names this package writes into AnnData objects and tables, defined once.

``obs`` columns, the ``obsm`` and ``uns`` entries, the labels that are not cell types and the
columns of the training history; every module reads them from here (docs/steps.md lists them).
"""
from __future__ import annotations

SAMPLE_KEY = "sample"  # obs: the sample of each cell
SIZE_FACTOR_KEY = "size_factor"  # obs: size factors (cellassign-nf size-factors)
CELLTYPE_KEY = "cellassign_celltype"  # obs: the assigned type, or UNASSIGNED
PROB_KEY = "cellassign_prob"  # obs: the probability of the assigned type
PROBS_KEY = "cellassign_probabilities"  # obsm: cells x types probabilities
# obs: the assigned type's Cell Ontology term and its label, named as in the CELLxGENE schema
# (ontology.py: which terms, and the schema's conventions for unassigned and other)
ONTOLOGY_ID_KEY = "cell_type_ontology_term_id"
ONTOLOGY_LABEL_KEY = "cell_type"
# obs: at which level the cell's term was given (LEVELS) and the probability behind it: its type's,
# or the summed probability of the panel's types under the ancestor term (labels.roll_up)
LEVEL_KEY = "cellassign_level"
LEVEL_PROB_KEY = "cellassign_level_prob"
LEVELS = ("type", "ancestor", "none")
LABEL_COLUMNS = (CELLTYPE_KEY, PROB_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY, LEVEL_KEY, LEVEL_PROB_KEY)  # predictions.tsv
UNS_KEY = "cellassign"  # uns: {"cell_types": [...], "min_prob": ..., "cell_ontology": ..., "model": {...}}
ONTOLOGY_VERSION_KEY = "cell_ontology"  # uns[UNS_KEY]: the Cell Ontology release the terms were labelled from
MODEL_INFO_KEY = "model"  # uns[UNS_KEY]: which model made the labels and how (api.model_info; model_info.json)
INPUT_INFO_KEY = "cellassign_input"  # uns: what read_counts found (source file, gene index, features left out)
QC_WARNINGS_KEY = "warnings"  # qc_summary.json: sample-level QC warnings, one sentence each (qc.qc_warnings)
# model_info.json (and uns[UNS_KEY][MODEL_INFO_KEY]): the panel's types left out of the fit (no marker gene in
# the data; api.CellAssign.left_out_types), and the fit's warnings, one sentence each (steps.model_info)
LEFT_OUT_TYPES_KEY = "left_out_types"
MODEL_WARNINGS_KEY = "warnings"
# model_info.json (and uns[UNS_KEY][MODEL_INFO_KEY]): the marker genes, rho, delta and training settings of the
# model that made the labels (api.CellAssign.fitted_parameters), which the report draws
FITTED_KEY = "fitted"
TOTALS_KEY = "cellassign_total_counts"  # obs, in memory: total counts over all genes (io.read_h5ad of some genes)
TRUE_CELLTYPE_KEY = "true_celltype"  # obs of simulated data: the type a cell was drawn from
TRUE_DOUBLET_KEY = "true_doublet"  # obs of simulate_library: "" for a singlet, "A+B" for a doublet

DOUBLET_SCORE_KEY = "doublet_score"  # obs: Scrublet's doublet score (scanpy's name)
PREDICTED_DOUBLET_KEY = "predicted_doublet"  # obs: the cell is a predicted doublet (scanpy's name)
DOUBLET_COLUMNS = (DOUBLET_SCORE_KEY, PREDICTED_DOUBLET_KEY)  # the doublet table; predictions.tsv after LABEL_COLUMNS
SCRUBLET_KEY = "scrublet"  # uns: the doublet step's summary (scanpy's key; doublets.find_doublets)
DOUBLET = "doublet"  # the label of a predicted doublet
UNASSIGNED = "unassigned"  # the label of a cell below the probability threshold
OTHER = "other"  # a type without markers (train --other)
PANEL_ONTOLOGY_KEY = "ontology"  # a panel file's Cell Ontology term of a type (docs/inputs.md)

# history.tsv: per restart and epoch, the marginal log likelihood per cell of the training and the
# validation cells, and the log prior divided by the training cells (docs/model.md section 9)
HISTORY_COLUMNS = ("restart", "epoch", "train_loglik", "val_loglik", "log_prior", "selected")
SETUP_KEY = "_cellassign_nf_setup"  # uns: the arguments of CellAssign.setup_anndata (scvi_conventions.py)
