"""Direct path: the dataset's database is mapped and its queries localised with vpr_core objects,
exactly as the node does it (same PlaceRecognizer, same map, same search)."""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
from tqdm import tqdm

from offline_eval.protocol import (QUERY_OFFSET_NS, DatasetFeatures, PathResult, benchmark_config, contrast_of,
                                   ranked_from_ids, stream_stamps)
from vpr_core.config import Config
from vpr_core.datasets import PlaceDataset
from vpr_core.decision import FrameResult
from vpr_core.images import load_image
from vpr_core.metrics import recall_at_k
from vpr_core.models import DescriptorExtractor
from vpr_core.pipeline import PlaceRecognizer


def run_direct(cfg: Config, ds: PlaceDataset, extractor: Optional[DescriptorExtractor] = None,
               top_k: int = 20, progress: bool = True, features: Optional[DatasetFeatures] = None) -> PathResult:
    """Map the database, then localise every query (the recognizer's localization mode); Recall@1/5/10/20
    from the top-k. `extractor`: an already built model for `cfg` (else one is built). With `features`
    (from `extract_dataset`) the model is not run again: only map, search, re-rank."""
    rec = PlaceRecognizer(benchmark_config(cfg, top_k), extractor=extractor)
    reranking = rec.detector.reranker is not None

    def step(i: int, path, stamp: int, kind: str) -> FrameResult:
        if features is None:
            return rec.process(load_image(path), stamp, kind)
        ex = features.database if kind == "database" else features.queries
        local = ex.local[i] if (reranking and ex.local) else None  # stored with keyframes for re-ranking
        return rec.process_descriptor(ex.global_desc[i], stamp, kind, local=local, contrast=contrast_of(ex, i))

    t0 = time.perf_counter()
    id_to_db: Dict[int, int] = {}
    rec.set_mode("mapping")
    with rec.detector.reranking_paused():  # the database frames' own matches are not scored
        for i, (path, stamp) in enumerate(tqdm(list(zip(ds.database, stream_stamps(len(ds.database)))),
                                               desc="direct: map database", disable=not progress)):
            res = step(i, path, stamp, "database")
            id_to_db[res.place_match.query.id] = i
    rec.set_mode("localization")
    cand_ids, scores = [], np.zeros((len(ds.queries), top_k), np.float32)
    global_ids, rerank_ms = [], []
    for i, (path, stamp) in enumerate(tqdm(list(zip(ds.queries, stream_stamps(len(ds.queries), QUERY_OFFSET_NS))),
                                           desc="direct: localise queries", disable=not progress)):
        res = step(i, path, stamp, "query")
        pm = res.place_match
        cand_ids.append([c.id for c in pm.candidates])
        scores[i, :len(pm.candidates)] = [c.score for c in pm.candidates]
        if reranking:
            global_ids.append([c.id for c in pm.global_candidates])
            rerank_ms.append(pm.rerank_ms)
    ranked = ranked_from_ids(cand_ids, id_to_db, top_k)
    out = PathResult.scored("direct", ranked, scores, ds.positives, time.perf_counter() - t0)
    if reranking:
        out.recall_global = recall_at_k(ranked_from_ids(global_ids, id_to_db, top_k), ds.positives, list(out.recall))
        out.rerank_ms = float(np.mean(rerank_ms)) if rerank_ms else 0.0
    return out
