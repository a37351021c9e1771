"""Frames lost before they reached us, estimated from gaps in their header stamps.

A camera stamps frames at a steady period; when a frame is lost on the way (best-effort transport, a
full socket buffer, a driver hiccup) the next stamp arrives one period late for each missing frame.
The estimator keeps the median of the recent periods and counts `round(gap / median) - 1` frames for
a gap over `factor` medians. Only an estimate: a camera that pauses on purpose looks the same.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Optional


class GapEstimator:
    """Per-stream estimate of frames missing between consecutive header stamps (ns)."""

    def __init__(self, factor: float = 1.5, window: int = 30) -> None:
        self.factor = float(factor)  # 0 = off
        self.periods: Deque[int] = deque(maxlen=max(3, int(window)))
        self.min_periods = max(3, self.periods.maxlen // 3)  # periods seen before gaps are judged
        self.last: Optional[int] = None
        self.lost = 0

    def observe(self, stamp_ns: int) -> int:
        """Take the next frame's stamp; returns how many frames are estimated lost just before it."""
        if self.factor <= 0:
            return 0
        if self.last is None or stamp_ns <= self.last:  # first frame, or a repeat / reordered stamp
            self.last = stamp_ns if self.last is None else max(self.last, stamp_ns)
            return 0
        gap, self.last = stamp_ns - self.last, stamp_ns
        if len(self.periods) >= self.min_periods:
            median = sorted(self.periods)[len(self.periods) // 2]
            if median > 0 and gap > self.factor * median:
                missing = max(0, round(gap / median) - 1)
                self.lost += missing
                return missing  # a gap is not a period: keep it out of the median
        self.periods.append(gap)
        return 0
