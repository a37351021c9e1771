"""Revisited Oxford / Paris scoring (revisitop; ViTGaL's protocol): mean average precision and mP@1/5/10 in the
Easy, Medium and Hard settings, over each query's full ranking of the database by global-descriptor cosine,
junk left out. Queries are cropped to their box (`bbx`) before the model sees them, as the protocol does.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from vpr_core.datasets import PlaceDataset
from vpr_core.datasets.revisited import PROTOCOLS, RevisitedTruth
from vpr_core.images import load_image
from vpr_core.metrics import MeanAP, mean_average_precision, rank_database
from vpr_core.models import DescriptorExtractor

KS = (1, 5, 10)


def crop(rgb: np.ndarray, box: Optional[tuple]) -> np.ndarray:
    """The query's region (x0, y0, x1, y1 in pixels, clipped to the image); the whole image without a box."""
    if box is None:
        return rgb
    h, w = rgb.shape[:2]
    x0, y0 = int(np.clip(np.floor(box[0]), 0, w - 1)), int(np.clip(np.floor(box[1]), 0, h - 1))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0 + 1, w)), int(np.clip(np.ceil(box[3]), y0 + 1, h))
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def query_descriptors(ex: DescriptorExtractor, ds: PlaceDataset) -> np.ndarray:
    """Global descriptors of the queries, each cropped to its box."""
    truth = ds.revisited
    out: List[np.ndarray] = []
    bs = max(1, ex.cfg.batch_size)
    for a in range(0, len(ds.queries), bs):
        images = [crop(load_image(p), truth.boxes[a + i] if truth is not None else None)
                  for i, p in enumerate(ds.queries[a:a + bs])]
        out.append(ex.extract(images).global_desc)
    return np.concatenate(out) if out else np.zeros((0, ex.dim), np.float32)


def landmark_scores(queries: np.ndarray, database: np.ndarray, truth: RevisitedTruth) -> Dict[str, MeanAP]:
    """Protocol -> mAP and mP@k of these descriptors (one row per query / database image, in the dataset's order)."""
    if len(queries) != len(truth.easy):
        raise ValueError(f"{len(queries)} query descriptors for {len(truth.easy)} queries")
    _, ranked = rank_database(queries, database, k=len(database))
    return {p: mean_average_precision(ranked, *truth.setting(p), ks=KS) for p in PROTOCOLS}


def landmark_table(rows: Dict[str, Dict[str, MeanAP]], title: str) -> str:
    """Markdown: one row per descriptor source, mAP and mP@10 per setting (revisitop's E / M / H)."""
    head = "| descriptors | " + " | ".join(f"{p} mAP | {p} mP@10" for p in PROTOCOLS) + " |"
    lines = [title, head, "|---" * (1 + 2 * len(PROTOCOLS)) + "|"]
    for name, scores in rows.items():
        cells = " | ".join(f"{100 * scores[p].map:.2f} | {100 * scores[p].precision_at[10]:.2f}" for p in PROTOCOLS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def as_json(scores: Dict[str, MeanAP]) -> dict:
    return {p: {"map": s.map, "mp_at": {str(k): v for k, v in s.precision_at.items()}} for p, s in scores.items()}
