"""Post-fit: after annotation, from the assigned labels. The type x group marker-specificity
table, and flags for a type that received (almost) no cells while its markers are high in the
cells of another group ("merged"), a type whose own markers are no higher in its cells than in
another type's (not specific), and a large unassigned share."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..keys import OTHER
from ..settings import DiagnosticThresholds
from ..keys import UNASSIGNED
from .base import INFO, Flag, listing, pct, type_markers


@dataclass
class GroupStats:
    """Marker expression per assigned group: detection and mean (genes x groups), group sizes."""

    detection: pd.DataFrame
    mean: pd.DataFrame
    sizes: pd.Series
    names: dict[str, str]  # gene index -> name shown

    @property
    def n_cells(self) -> int:
        return int(self.sizes.sum())

    def min_cells(self, t: DiagnosticThresholds) -> int:
        """Fewer cells than this is "(almost) none"; smaller groups are not compared."""
        return t.smallest_type(self.n_cells)

    def size(self, group: str) -> int:
        return int(self.sizes.get(group, 0))

    def show(self, genes) -> list[str]:
        return [self.names.get(g, g) for g in genes]


def specificity_table(rho: pd.DataFrame, stats: GroupStats) -> pd.DataFrame:
    """Types x assigned groups: the mean log-normalised expression of each type's markers in the
    cells assigned to each group. A good panel has its largest values on the diagonal."""
    rows = {c: stats.mean.loc[genes].mean(axis=0) for c, genes in type_markers(rho).items()}
    table = pd.DataFrame(rows).T
    table.index.name, table.columns.name = "cell_type", "assigned"
    return table


def high_markers(genes: list[str], group: str, stats: GroupStats, t: DiagnosticThresholds) -> list[str]:
    """Of ``genes``, those high in ``group``: detected in at least ``high_detection`` of its
    cells and ``min_logfc`` above their median over the other compared groups."""
    others = [g for g in stats.sizes.index if g != group and stats.size(g) >= stats.min_cells(t)]
    baseline = stats.mean.loc[genes, others].median(axis=1) if others else pd.Series(0.0, index=genes)
    return [g for g in genes if stats.detection.at[g, group] >= t.high_detection
            and stats.mean.at[g, group] - baseline[g] >= t.min_logfc]


def empty_type_flag(cell_type: str, rho: pd.DataFrame, stats: GroupStats, t: DiagnosticThresholds) -> Flag:
    """A type with (almost) no cells: merged into the group where its markers are high, or absent."""
    markers = type_markers(rho)
    own, n = markers[cell_type], stats.size(cell_type)
    best: tuple[str, list[str]] | None = None
    for group in stats.sizes.index:
        if group == cell_type or stats.size(group) < stats.min_cells(t):
            continue
        distinct = [g for g in own if g not in markers.get(group, [])] or own  # all shared: nothing tells them apart
        high = high_markers(distinct, group, stats, t)
        if high and 2 * len(high) >= len(distinct) and (best is None or len(high) > len(best[1])):
            best = (group, high)
    got = f"{cell_type} received {n} cell{'s' if n != 1 else ''} ({pct(n / max(stats.n_cells, 1))})"
    if best is None:
        return Flag("type", cell_type, "absent", f"{got}, and its markers are not high in any assigned group: "
                    f"{cell_type} may be absent from this sample.", stats.show(own), severity=INFO)
    group, high = best
    det = ", ".join(f"{name} {pct(stats.detection.at[g, group])}" for g, name in zip(high, stats.show(high)))
    theirs = [g for g in markers.get(group, []) if g not in own and stats.detection.at[g, group] < t.high_detection]
    weak = (f" {group}'s own markers {listing(stats.show(theirs))} are detected in only "
            f"{', '.join(pct(stats.detection.at[g, group]) for g in theirs[:8])} of them." if theirs else "")
    subset = all(g in markers.get(group, []) for g in own)
    why = (f"every marker of {cell_type} is also a marker of {group}, so nothing tells them apart" if subset else
           f"{cell_type} looks merged into {group}, and many of those cells may be {cell_type}")
    return Flag("type", cell_type, "merged",
                f"{got}, but its markers are high in the {stats.size(group):,} cells assigned to {group} (detected in "
                f"{det}): {why}.{weak} Check the markers of both types.", stats.show(high + theirs), against=group)


def not_specific_flags(cell_type: str, rho: pd.DataFrame, stats: GroupStats, t: DiagnosticThresholds) -> list[Flag]:
    """The type's own markers (those the other type lacks) are no higher in its cells than in
    another type's: one flag, against the type where they are highest, naming any others."""
    markers = type_markers(rho)
    failing = []  # (their mean, other, my mean, markers to blame)
    for other in markers:
        if other == cell_type or stats.size(other) < stats.min_cells(t):
            continue
        distinct = [g for g in markers[cell_type] if g not in markers[other]]
        if not distinct:
            continue
        mine, theirs = stats.mean.loc[distinct, cell_type], stats.mean.loc[distinct, other]
        if mine.mean() - theirs.mean() < t.min_logfc:
            failing.append((theirs.mean(), other, mine.mean(), [g for g in distinct if mine[g] - theirs[g] < t.min_logfc]))
    if not failing:
        return []
    theirs, other, mine, blame = max(failing, key=lambda f: f[0])
    also = [f[1] for f in failing if f[1] != other]
    return [Flag("type", cell_type, "not_specific",
                 f"{cell_type}'s markers {listing(stats.show(blame))} are no higher in its own "
                 f"{stats.size(cell_type):,} cells than in the {stats.size(other):,} cells of {other} (mean log "
                 f"expression {mine:.2f} vs {theirs:.2f}){' nor than in ' + listing(also) if also else ''}: they do "
                 f"not tell {cell_type} from {other} in these data. Replace them with genes that do (see the "
                 "candidates).", stats.show(blame), against=other)]


def unassigned_flag(stats: GroupStats, t: DiagnosticThresholds) -> list[Flag]:
    """A large share of unassigned cells."""
    share = stats.size(UNASSIGNED) / max(stats.n_cells, 1)
    if share <= t.max_unassigned:
        return []
    return [Flag("type", UNASSIGNED, "unassigned",
                 f"{pct(share)} of cells are unassigned (more than {pct(t.max_unassigned)}): their top probability is "
                 "below the threshold. The sample may hold a type the panel lacks, or the markers do not separate the "
                 "types.")]


def assignment_flags(rho: pd.DataFrame, stats: GroupStats, t: DiagnosticThresholds) -> list[Flag]:
    """All post-fit flags, type by type in panel order, then the unassigned share."""
    flags: list[Flag] = []
    for cell_type in type_markers(rho):
        if cell_type == OTHER:
            continue
        if stats.size(cell_type) < stats.min_cells(t):
            flags.append(empty_type_flag(cell_type, rho, stats, t))
        else:
            flags += not_specific_flags(cell_type, rho, stats, t)
    return flags + unassigned_flag(stats, t)
