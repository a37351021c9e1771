"""Direct matching (SelaVPR): the local score is the number of mutual nearest neighbours between the
two images' dense local features. No geometry, no RANSAC: fast enough for the top 100."""
from __future__ import annotations

import time

from vpr_core.local_features import LocalFeatures, Verification
from vpr_core.rerank.base import RERANKERS, MatchingReranker


@RERANKERS.register("mnn")
class MNNReranker(MatchingReranker):
    name = "mnn"

    def verify(self, query: LocalFeatures, candidate: LocalFeatures) -> Verification:
        t0 = time.perf_counter()
        n = int(len(self.matches(query, candidate)[0]))
        return Verification(self.name, n >= max(self.min_inliers, 1), num_matches=n, num_inliers=-1,
                            time_ms=(time.perf_counter() - t0) * 1e3)
