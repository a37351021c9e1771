"""The one flow, in one object: image -> descriptor -> map search -> loop-closure decision.

The ROS node and the offline direct path both drive a `PlaceRecognizer`, so they produce the
same matches on the same frames. Map swaps (load) are all-or-nothing under a lock.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, List, Optional

import numpy as np

from vpr_core.config import Config
from vpr_core.detector import FrameResult, LoopClosureDetector
from vpr_core.map_database import MapDatabase
from vpr_core.models import DescriptorExtractor

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    frames: int = 0
    keyframes: int = 0
    place_matches: int = 0
    loop_closures: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count of frames not processed
    latencies_ms: Deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)  # recent frames

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"frames": self.frames, "keyframes": self.keyframes, "loop_closures": self.loop_closures,
                "dropped": dict(self.dropped), "latency_ms_median": float(np.median(lat)),
                "latency_ms_p95": float(np.percentile(lat, 95))}


class PlaceRecognizer:
    """Owns the model, the map and the detector; thread-safe for one producer and map services."""

    def __init__(self, cfg: Config, extractor: Optional[DescriptorExtractor] = None,
                 db: Optional[MapDatabase] = None) -> None:
        self.cfg = cfg
        self.extractor = extractor if extractor is not None else DescriptorExtractor(cfg.model)
        self.db = db if db is not None else MapDatabase(self.extractor.dim, cfg.map.index, cfg.map.use_gpu)
        self.detector = LoopClosureDetector(cfg.detector, self.db)
        self.stats = PipelineStats()
        self._lock = threading.Lock()

    def describe(self, images: List[np.ndarray]) -> np.ndarray:
        return self.extractor(images)

    def process(self, image: np.ndarray, stamp_ns: int, frame_id: str) -> FrameResult:
        """Run the whole flow on one RGB frame; raises ImageError/DescriptorError on bad input."""
        t0 = time.perf_counter()
        desc = self.extractor([image])[0]
        return self.process_descriptor(desc, stamp_ns, frame_id, t0)

    def process_descriptor(self, desc: np.ndarray, stamp_ns: int, frame_id: str,
                           t0: Optional[float] = None) -> FrameResult:
        t0 = time.perf_counter() if t0 is None else t0
        with self._lock:
            result = self.detector.process(desc, stamp_ns, frame_id)
        result.place_match.latency_ms = (time.perf_counter() - t0) * 1e3
        s = self.stats
        s.frames += 1
        s.place_matches += 1
        s.keyframes += int(result.place_match.is_keyframe)
        s.loop_closures += int(result.loop_closure is not None)
        s.latencies_ms.append(result.place_match.latency_ms)
        return result

    def drop(self, reason: str) -> int:
        """Count a frame that could not be processed; returns the running count for that reason."""
        self.stats.dropped[reason] += 1
        return self.stats.dropped[reason]

    def save_map(self, path: str | Path) -> Path:
        with self._lock:
            return self.db.save(path)

    def load_map(self, path: str | Path) -> int:
        """Replace the map with the file's; on any error the current map is kept and MapError raised."""
        db = MapDatabase.load(path, expected_dim=self.extractor.dim, use_gpu=self.cfg.map.use_gpu)
        with self._lock:
            self.db = db
            self.detector.reset_map(db)
        return len(db)
