"""Direct matching (SelaVPR): the local score is the number of mutual nearest neighbours between the
two images' dense local features. No geometry, no RANSAC: fast enough for the top 100."""
from __future__ import annotations

import time

from vpr_core.local_features import LocalFeatures
from vpr_core.rerank.base import RERANKERS, Reranker, Verification
from vpr_core.rerank.matching import mutual_nn


class MNNReranker(Reranker):
    name = "mnn"

    def __init__(self, min_inliers: int = 0, match_threshold: float = 0.0, ratio: float = 1.0) -> None:
        super().__init__(min_inliers)
        if not -1.0 <= match_threshold <= 1.0:
            raise ValueError(f"rerank.match_threshold is a cosine similarity in [-1, 1], got {match_threshold}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"rerank.ratio must be in (0, 1] (1 = off), got {ratio}")
        self.match_threshold = float(match_threshold)
        self.ratio = float(ratio)

    def verify(self, query: LocalFeatures, candidate: LocalFeatures) -> Verification:
        t0 = time.perf_counter()
        self.check_pair(query, candidate)
        ia, _, _ = mutual_nn(query.desc, candidate.desc, self.match_threshold, self.ratio)
        n = int(len(ia))
        return Verification(self.name, n >= max(self.min_inliers, 1), num_matches=n, num_inliers=-1,
                            time_ms=(time.perf_counter() - t0) * 1e3)


@RERANKERS.register("mnn")
def _mnn(min_inliers: int = 0, match_threshold: float = 0.0, ratio: float = 1.0) -> MNNReranker:
    return MNNReranker(min_inliers, match_threshold, ratio)
