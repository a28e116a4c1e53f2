"""Near-duplicates over a whole run (``poolcli duplicates``): groups of inputs whose descriptors
are at least a threshold apart in cosine similarity, as imagededup and fastdup report them.

Every descriptor is a query against the run (exact search, block by block, or the run's faiss
index when it is current), keeping its ``k`` nearest other rows. Pairs at or above the threshold
join their two inputs into one group (connected components: a copy of a copy is in the same
group). Without a threshold, it is chosen from the scores: each
input's second to k-th nearest other inputs are, but for groups of three or more copies, not
its duplicates, and the highest of those scores (their 99th percentile, so that a few larger
groups do not move it) is the most similar that two different images come in this run; the
threshold is halfway from there to 1, identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poolcli.errors import PoolcliError
from poolcli.retrieval.search import DescriptorSet, exact_search

BACKGROUND_QUANTILE = 99
#: float32 cosine of a vector with itself can fall short of 1 by a few units of rounding.
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Pair:
    a: int  # keys, a < b
    b: int
    score: float


@dataclass
class Group:
    members: list[tuple[int, str]]  # (key, path), by key
    pairs: list[Pair] = field(default_factory=list)  # best score first

    def to_dict(self) -> dict:
        return {"members": [{"key": k, "path": p} for k, p in self.members],
                "pairs": [{"a": p.a, "b": p.b, "score": p.score} for p in self.pairs]}


@dataclass
class DuplicateReport:
    rows: int
    threshold: float
    chosen: str | None  # how the threshold was chosen; None when it was given
    groups: list[Group]
    note: str | None = None  # how the search was done

    def to_dict(self) -> dict:
        return {"rows": self.rows, "threshold": self.threshold, "threshold_chosen": self.chosen,
                "groups": [g.to_dict() for g in self.groups]}


def choose_threshold(ranked: np.ndarray) -> tuple[float, str]:
    """The threshold for ``ranked`` (each row's scores against its nearest other rows, best
    first), and how it was chosen, in words.

    >>> ranked = np.array([[1.0, 0.6, 0.5], [1.0, 0.62, 0.4], [0.7, 0.6, 0.55], [0.68, 0.5, 0.45]])
    >>> round(choose_threshold(ranked)[0], 4)
    0.8093
    """
    background = ranked[:, 1:] if ranked.shape[1] > 1 else ranked
    background = background[np.isfinite(background)]
    if not len(background):
        return 1.0, "no scores to choose from: identical only"
    high = float(np.percentile(background, BACKGROUND_QUANTILE))
    threshold = min(1.0, (high + 1) / 2)
    how = (f"halfway from {high:.4f}, the most similar that inputs come beyond their nearest one "
           f"({BACKGROUND_QUANTILE}th percentile), to 1")
    return threshold, how


def find_duplicates(out: str | Path, threshold: float | None = None, k: int = 10,
                    use_index: bool = True) -> DuplicateReport:
    """The groups of near-duplicate inputs in run folder ``out``: pairs of descriptors whose
    cosine similarity is at least ``threshold`` (chosen from the scores when None), among each
    row's ``k`` nearest other rows."""
    if threshold is not None and not -1 <= threshold <= 1:
        raise PoolcliError(f"--threshold is a cosine similarity, between -1 and 1; got {threshold}")
    if k < 1:
        raise PoolcliError(f"-k must be >= 1, got {k}")
    descriptors = DescriptorSet(out, use="duplicates")
    if descriptors.rows < 2:
        raise PoolcliError(f"{out} holds {descriptors.rows} descriptor{'s' if descriptors.rows != 1 else ''}: "
                           "duplicates needs at least 2")
    scores, rows, note = _neighbours(descriptors, min(k, descriptors.rows - 1) + 1, use_index)
    own = np.arange(descriptors.rows)[:, None]
    scores = np.where((rows == own) | (rows < 0), -np.inf, scores)  # a row is not its own duplicate
    chosen = None
    if threshold is None:
        threshold, chosen = choose_threshold(-np.sort(-scores, axis=1)[:, :-1])  # the last is the row itself
    found = np.nonzero(scores >= threshold - TOLERANCE)
    pairs = {}
    for query, column in zip(*found):
        a, b = sorted((int(query), int(rows[query, column])))
        pairs[a, b] = max(pairs.get((a, b), -np.inf), float(scores[query, column]))
    groups = _groups(descriptors, pairs)
    if not descriptors.complete:
        note = "; ".join(n for n in (f"{out}: the run is not complete; these are its {descriptors.rows} descriptors "
                                     "written so far", note) if n)
    return DuplicateReport(descriptors.rows, float(threshold), chosen, groups, note)


def _neighbours(descriptors: DescriptorSet, k: int, use_index: bool):
    """Every row's ``k`` nearest rows (itself among them): scores, rows, a note."""
    block_rows = 4096
    all_scores, all_rows, note = [], [], None
    for _, block in descriptors.blocks(block_rows):
        found = None
        if use_index:
            from poolcli.retrieval.index import search_index

            found, note = search_index(descriptors, block, k) or (None, None)
        scores, rows = found if found is not None else exact_search(descriptors, block, k)
        all_scores.append(scores)
        all_rows.append(rows)
    return np.concatenate(all_scores), np.concatenate(all_rows), note


def _groups(descriptors: DescriptorSet, pairs: dict[tuple[int, int], float]) -> list[Group]:
    """Connected components of ``pairs`` (rows), with keys and paths."""
    parent: dict[int, int] = {}

    def root(row: int) -> int:
        while parent.setdefault(row, row) != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for row in sorted(parent):
        members.setdefault(root(row), []).append(row)
    if not members:
        return []
    every = np.array(sorted(parent), np.int64)
    keys, paths = descriptors.key_path(every)
    named = {int(row): (int(key), path) for row, key, path in zip(every, keys, paths)}
    groups = []
    for first in sorted(members):
        group = Group(sorted(named[row] for row in members[first]))
        group.pairs = sorted((Pair(*sorted((named[a][0], named[b][0])), score) for (a, b), score in pairs.items()
                              if root(a) == first), key=lambda p: (-p.score, p.a, p.b))
        groups.append(group)
    return sorted(groups, key=lambda g: g.members[0][0])
