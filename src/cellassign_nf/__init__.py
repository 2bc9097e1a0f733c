"""cellassign-nf: CellAssign cell-type annotation for single-cell RNA-seq (PyTorch, minibatch EM)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellassign-nf")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from .api import CellAssign  # noqa: E402
from .markers import marker_list_to_matrix, read_markers  # noqa: E402
from .predict import assign_labels  # noqa: E402

__all__ = ["CellAssign", "marker_list_to_matrix", "read_markers", "assign_labels", "__version__"]
