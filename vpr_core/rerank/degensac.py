"""Geometric verification (ViTGaL): mutual-nearest-neighbour putative matches, then DEGENSAC
(pydegensac) fits a fundamental matrix (or a homography); the local score is the inlier count."""
from __future__ import annotations

import time

import numpy as np

from vpr_core.local_features import LocalFeatures, Verification
from vpr_core.rerank.base import RERANKERS, MatchingReranker

MIN_MATCHES = 8  # the 7/8-point solvers need at least this many correspondences; fewer = unverified
MODELS = ("fundamental", "homography")


@RERANKERS.register("degensac")
class DegensacReranker(MatchingReranker):
    name = "degensac"

    def __init__(self, min_inliers: int = 0, match_threshold: float = 0.0, ratio: float = 1.0,
                 px_threshold: float = 4.0, confidence: float = 0.999, max_iters: int = 1000,
                 model: str = "fundamental", seed: int = 0) -> None:
        super().__init__(min_inliers, match_threshold, ratio)
        if model not in MODELS:
            raise ValueError(f"rerank.model must be one of {MODELS}, got {model!r}")
        if px_threshold <= 0:
            raise ValueError(f"rerank.px_threshold must be > 0 pixels, got {px_threshold}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"rerank.confidence must be in (0, 1), got {confidence}")
        if max_iters < 1:
            raise ValueError(f"rerank.max_iters must be >= 1, got {max_iters}")
        import pydegensac  # imported here so that configs without DEGENSAC never need it
        self._pydegensac = pydegensac
        self.px_threshold, self.confidence, self.max_iters = float(px_threshold), float(confidence), int(max_iters)
        self.model, self.seed = model, int(seed)  # fixed seed: the same pair always gives the same inliers

    def verify(self, query: LocalFeatures, candidate: LocalFeatures) -> Verification:
        t0 = time.perf_counter()
        ia, ib = self.matches(query, candidate)
        n = int(len(ia))
        v = Verification(self.name, False, num_matches=n, num_inliers=0)
        if n >= MIN_MATCHES:
            p1 = np.ascontiguousarray(query.xy[ia], dtype=np.float64)
            p2 = np.ascontiguousarray(candidate.xy[ib], dtype=np.float64)
            fit = (self._pydegensac.findFundamentalMatrix if self.model == "fundamental"
                   else self._pydegensac.findHomography)
            matrix, mask = fit(p1, p2, self.px_threshold, self.confidence, self.max_iters, seed=self.seed)
            matrix = np.asarray(matrix, np.float64).reshape(3, 3)
            inliers = int(np.count_nonzero(mask)) if np.any(matrix) else 0
            v.num_inliers = inliers
            if inliers:
                if self.model == "fundamental":
                    v.fundamental = matrix
                else:
                    v.homography = matrix
        v.verified = n >= MIN_MATCHES and v.num_inliers >= max(self.min_inliers, 1)
        v.time_ms = (time.perf_counter() - t0) * 1e3
        return v

