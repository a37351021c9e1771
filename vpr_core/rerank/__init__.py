"""Re-ranking the map's top-K candidates with local features (the second stage of two-stage VPR).

Registry `RERANKERS` (config `rerank.method`):
- `mnn`: direct mutual-nearest-neighbour matching of dense local features, score = number of
  mutual matches (SelaVPR; no RANSAC, so it is cheap enough for K = 100).
- `degensac`: the same putative matches verified by a DEGENSAC fundamental matrix (or homography),
  score = number of inliers (ViTGaL).

Ordering rule of `rerank`: candidates are sorted by local score (mutual matches for `mnn`, inliers
for `degensac`), highest first; equal local scores keep the global order (cosine similarity, then
the search order). A candidate whose local features are not stored scores -1 and sinks below all
that could be compared. This is the SelaVPR / ViTGaL practice: the local score replaces the
global score for the re-ranked candidates, the global score only breaks ties.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, List, Optional, Sequence

from vpr_core.local_features import LocalFeatures
from vpr_core.rerank.base import RERANKERS, Reranker, Verification

if TYPE_CHECKING:
    from vpr_core.config import RerankConfig
    from vpr_core.keyframes import Candidate

from vpr_core.rerank import degensac, mnn  # noqa: E402,F401  (register the re-rankers)

__all__ = ["RERANKERS", "Reranker", "Verification", "build_reranker", "rerank"]


def build_reranker(cfg: "RerankConfig") -> Optional[Reranker]:
    """The re-ranker `cfg.method` names, with its options from the config; None for method 'none'."""
    if cfg.method == "none":
        return None
    if cfg.top_k < 1:
        raise ValueError(f"rerank.top_k must be >= 1 (candidates re-ranked per query), got {cfg.top_k}")
    builder = RERANKERS.get(cfg.method)  # unknown method: KeyError naming the close one and the known ones
    accepted = inspect.signature(builder).parameters
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k in accepted}
    return builder(**options)


def rerank(query_local: LocalFeatures, candidates: List["Candidate"], stored: Sequence[Optional[LocalFeatures]],
           reranker: Reranker) -> List["Candidate"]:
    """`candidates` (global order) re-ordered by local score against `stored`, each candidate's local features
    (same order; None = not stored); each returned copy carries its Verification. See the module docstring
    for the ordering rule."""
    if len(stored) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(stored)} entries of stored local features")
    out = []
    for rank, (cand, theirs) in enumerate(zip(candidates, stored)):
        v = reranker.verify(query_local, theirs) if theirs is not None else reranker.unverifiable()
        out.append((v.local_score, cand.score, -rank, dataclasses.replace(cand, verification=v)))
    out.sort(key=lambda t: t[:3], reverse=True)
    return [t[3] for t in out]
