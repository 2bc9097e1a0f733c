"""The HTML page: sections of tables, figures and notes, filled into one self-contained page."""
from __future__ import annotations

import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .base import ReportFigure, _fmt, _is_number
from .template import _CSS, _TEMPLATE


@dataclass
class _Table:
    header: list[str]
    rows: list[list[tuple[str, bool]]]
    title: str = ""


@dataclass
class _Section:
    id: str
    title: str
    intro: str = ""
    figures: list[ReportFigure] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown before the notes, in red


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> _Table:
    return _Table(list(header), [[(_fmt(v), _is_number(v)) for v in row] for row in rows], title)


def render_html(sample: str, sections: Sequence[_Section], cards: Sequence[tuple[str, str]],
                versions: Mapping[str, str]) -> str:
    """Fill the page template (jinja2, autoescaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(
        sample=sample, sections=sections, cards=cards, versions=versions, css=_CSS,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


def software_versions() -> dict[str, str]:
    """Versions of cellassign-nf and the libraries the results depend on."""
    out: dict[str, str] = {}
    for name in ("cellassign-nf", "torch", "scanpy", "anndata", "numpy", "pandas", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "cellassign-nf":
                import cellassign_nf

                out[name] = str(getattr(cellassign_nf, "__version__", "unknown (not installed)"))
            else:
                out[name] = "not installed"
    out["python"] = platform.python_version()
    return out
