"""What every re-ranker shares: the Verification record, the interface, and the registry.

A re-ranker compares the query's local features with one candidate's and says how strongly they
agree (`Verification`); `vpr_core.rerank.rerank` orders the candidates by that.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from vpr_core.local_features import LocalFeatureError, LocalFeatures, Verification
from vpr_core.registry import Registry
from vpr_core.rerank.matching import mutual_nn


class Reranker:
    """Compares two images' local features. Subclasses set `name` and implement `verify`."""
    name = "none"

    def __init__(self, min_inliers: int = 0) -> None:
        if min_inliers < 0:
            raise ValueError(f"rerank.min_inliers must be >= 0, got {min_inliers}")
        self.min_inliers = int(min_inliers)

    def verify(self, query: LocalFeatures, candidate: LocalFeatures) -> Verification:
        raise NotImplementedError

    def unverifiable(self) -> Verification:
        """For a candidate whose local features are not stored: nothing computed, not verified."""
        return Verification(self.name, False)

    @staticmethod
    def check_pair(query: LocalFeatures, candidate: LocalFeatures) -> None:
        if query.dim != candidate.dim:
            raise LocalFeatureError(f"query local features are {query.dim}-D but the map's are {candidate.dim}-D: "
                                    f"the map was built with another local head; rebuild it or switch model")


class MatchingReranker(Reranker):
    """A re-ranker built on putative matches: mutual nearest neighbours with an optional cosine floor
    (`match_threshold`) and Lowe ratio test (`ratio`, 1 = off). Validates and applies both options."""

    def __init__(self, min_inliers: int = 0, match_threshold: float = 0.0, ratio: float = 1.0) -> None:
        super().__init__(min_inliers)
        if not -1.0 <= match_threshold <= 1.0:
            raise ValueError(f"rerank.match_threshold is a cosine similarity in [-1, 1], got {match_threshold}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"rerank.ratio must be in (0, 1] (1 = off), got {ratio}")
        self.match_threshold, self.ratio = float(match_threshold), float(ratio)

    def matches(self, query: LocalFeatures, candidate: LocalFeatures) -> Tuple[np.ndarray, np.ndarray]:
        """Indices (into query, into candidate) of the putative matches of this pair."""
        self.check_pair(query, candidate)
        ia, ib, _ = mutual_nn(query.desc, candidate.desc, self.match_threshold, self.ratio)
        return ia, ib


RERANKERS: Registry = Registry("re-ranker")
