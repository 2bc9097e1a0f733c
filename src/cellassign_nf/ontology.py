"""Cell Ontology (CL) terms of cell types (docs/inputs.md, "Cell Ontology terms").

A panel may give each cell type a CL term. Every reading of a panel checks its terms against the
Cell Ontology that ``cellxgene-ontology-guide`` ships with the package (no network): a term that
is not a CL ID, not in the ontology, obsolete, or too general for a cell type (the CELLxGENE
schema forbids those) is refused in one line naming the type.

The annotation gives every cell a term and the term's label (``keys.ONTOLOGY_ID_KEY``,
``keys.ONTOLOGY_LABEL_KEY``) with the CELLxGENE schema's conventions: a type's own term;
``unknown`` for an unassigned cell and for a type the panel gives no term; ``CL:0000000``
(``cell``) for ``other``, a cell that none of the panel's types explains. An unassigned cell may
instead get a broader term that two or more types share (:func:`shared_ancestors`;
``labels.roll_up``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from .errors import InputError
from .keys import OTHER, UNASSIGNED

TERM_PATTERN = re.compile(r"CL:\d{7}")
UNKNOWN = "unknown"  # the schema's term (and label) of a cell whose type is not known
CELL = ("CL:0000000", "cell")  # the ontology's root: a cell, of no type the panel names
# too general to be a cell type: the CELLxGENE schema does not allow them
TOO_GENERAL = ("CL:0000255", "CL:0000257", "CL:0000548")  # eukaryotic, Eumycetozoan, animal cell
LOOKUP_URL = "https://www.ebi.ac.uk/ols4/ontologies/cl"

Terms = Mapping[str, str]  # cell type -> CL term ID


@lru_cache(maxsize=1)
def _parser():
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    return OntologyParser()


@lru_cache(maxsize=1)
def version() -> str:
    """The Cell Ontology release terms are checked against, and the package that ships it."""
    from importlib.metadata import version as package_version

    release = _parser().cxg_schema.supported_ontologies["CL"]["version"]
    return f"CL {release} (cellxgene-ontology-guide {package_version('cellxgene-ontology-guide')})"


def label(term: str) -> str:
    """The ontology's label of a checked term."""
    return str(_parser().get_term_label(term))


def term_problem(term: str) -> str | None:
    """Why ``term`` cannot be a cell type's term, or None when it can."""
    if not TERM_PATTERN.fullmatch(term):
        return f"'{term}' is not a Cell Ontology ID (CL: and seven digits)"
    parser = _parser()
    if not parser.is_valid_term_id(term):
        return f"{term} is not a term of the Cell Ontology"
    name = parser.get_term_label(term)
    if parser.is_term_deprecated(term):
        replacement = parser.get_term_replacement(term)
        return f"{term} ({name}) is obsolete" + (
            f"; its replacement is {replacement} ({parser.get_term_label(replacement)})" if replacement else "")
    if term in TOO_GENERAL:
        return f"{term} ({name}) is too general for a cell type"
    return None


def check_terms(terms: Terms, path: str | Path | None = None) -> dict[str, str]:
    """The terms, or one error naming every type whose term is not a current, specific CL term."""
    problems = [f"'{cell_type}': {problem}" for cell_type, term in terms.items()
                if (problem := term_problem(term)) is not None]
    if problems:
        raise InputError(path, f"Cell Ontology term{'s' if len(problems) > 1 else ''} refused ({'; '.join(problems)}; "
                         f"checked against {version()})",
                         f"Give each type a current CL term (look it up at {LOOKUP_URL}), or none.")
    return dict(terms)


def ancestors(term: str, include_self: bool = True) -> list[str]:
    """The terms ``term`` is a kind of in the Cell Ontology (with ``term`` itself)."""
    return list(_parser().get_term_ancestors(term, include_self=include_self))


def shared_ancestors(terms: Terms) -> dict[str, list[str]]:
    """Each term that is an ancestor (or self) of the terms of two or more types, with those types,
    most specific first (fewest types, then deepest); the root (``cell``) and the terms too general
    for a cell type are left out."""
    under: dict[str, list[str]] = {}
    for cell_type, term in terms.items():
        for ancestor in ancestors(term):
            under.setdefault(ancestor, []).append(cell_type)
    shared = {a: types for a, types in under.items() if len(types) >= 2 and a != CELL[0] and a not in TOO_GENERAL}
    depth = {a: len(ancestors(a, include_self=False)) for a in shared}
    return dict(sorted(shared.items(), key=lambda item: (len(item[1]), -depth[item[0]], item[0])))


def cell_terms(cell_types: Iterable[str], terms: Terms) -> dict[str, tuple[str, str]]:
    """(term, label) for every label a cell can get: the types (their term, or ``unknown``),
    ``other`` (``CL:0000000``, cell, unless the panel gives it a term) and ``unassigned``."""
    out = {str(t): (terms[t], label(terms[t])) if t in terms else (CELL if t == OTHER else (UNKNOWN, UNKNOWN))
           for t in cell_types}
    out[UNASSIGNED] = (UNKNOWN, UNKNOWN)
    return out
