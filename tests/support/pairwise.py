"""Pairwise (all-pairs) selection of test cases: every pair of values of two axes that some
candidate combines appears in at least one chosen case, at a fraction of the full product.

A case is a tuple, one value per axis.  `cover` picks, greedily and deterministically, the
candidate that covers the most pairs not yet covered (the first such candidate on ties) until
every pair of the candidates is covered; candidates can encode constraints between axes (only
combinations that make sense are listed), and `product` lists the full product of independent
axes.  Values must be hashable; distinct values must compare unequal.
"""

import itertools
from collections.abc import Iterable, Sequence


def pairs(case: tuple) -> set[tuple]:
    """The (axis i, value, axis j, value) pairs of one case, i < j."""
    return {(i, case[i], j, case[j]) for i, j in itertools.combinations(range(len(case)), 2)}


def cover(candidates: Iterable[tuple]) -> list[tuple]:
    """A subset of `candidates`, in their order of first choice, holding every pair that some
    candidate holds (a single-axis case list is returned deduplicated)."""
    candidates = list(dict.fromkeys(candidates))
    if not candidates or len(candidates[0]) < 2:
        return candidates
    own = [pairs(c) for c in candidates]
    uncovered = set().union(*own)
    chosen = []
    while uncovered:
        best = max(range(len(candidates)), key=lambda i: (len(own[i] & uncovered), -i))
        chosen.append(candidates[best])
        uncovered -= own[best]
    return chosen


def product(*axes: Sequence) -> list[tuple]:
    """Pairwise cases of independent axes (the full product's pairs)."""
    return cover(itertools.product(*axes))
