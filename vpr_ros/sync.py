"""Pairing side streams (odometry, depth) with camera frames by stamp.

A bounded, thread-safe buffer of stamped samples: executor callbacks add, the worker looks up the
sample nearest a frame's stamp, waiting briefly for one that may still be in flight. No ROS here.
"""
from __future__ import annotations

import bisect
import threading
import time
from typing import Generic, List, Optional, Tuple, TypeVar

T = TypeVar("T")
LIVE_S = 1.0  # a stream that delivered a sample within this many (wall) seconds is live: worth waiting for


class StampBuffer(Generic[T]):
    """The newest `maxlen` samples by stamp (ns); `nearest` finds the one closest to a stamp."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"a stamp buffer must hold at least one sample, got maxlen {maxlen}")
        self.maxlen = int(maxlen)
        self._stamps: List[int] = []
        self._items: List[T] = []
        self._last_add = float("-inf")  # time.monotonic() of the latest add
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._stamps)

    def add(self, stamp_ns: int, item: T) -> None:
        """Insert in stamp order (late samples too); a sample with a stamp already held replaces it."""
        with self._cond:
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._items[i] = item
            else:
                self._stamps.insert(i, stamp_ns)
                self._items.insert(i, item)
                if len(self._stamps) > self.maxlen:
                    del self._stamps[0], self._items[0]
            self._last_add = time.monotonic()
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._stamps.clear()
            self._items.clear()

    def newest_stamp(self) -> Optional[int]:
        with self._cond:
            return self._stamps[-1] if self._stamps else None

    def _nearest_locked(self, stamp_ns: int, max_dt_ns: int) -> Optional[Tuple[int, T]]:
        i = bisect.bisect_left(self._stamps, stamp_ns)
        best: Optional[Tuple[int, int]] = None  # (|dt|, index)
        for j in (i - 1, i):
            if 0 <= j < len(self._stamps):
                dt = abs(self._stamps[j] - stamp_ns)
                if dt <= max_dt_ns and (best is None or dt < best[0]):
                    best = (dt, j)
        return None if best is None else (self._stamps[best[1]], self._items[best[1]])

    def nearest(self, stamp_ns: int, max_dt_ns: int, wait_s: float = 0.0) -> Optional[Tuple[int, T]]:
        """(stamp, sample) nearest `stamp_ns` within `max_dt_ns`, else None. While the stream is live (a
        sample within LIVE_S) but has none at or after `stamp_ns` yet (it may arrive after the image),
        wait up to `wait_s` for one; a stream that stopped costs no wait."""
        deadline = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while (self._stamps and self._stamps[-1] < stamp_ns
                   and time.monotonic() - self._last_add < LIVE_S):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._nearest_locked(stamp_ns, max_dt_ns)


def seconds_to_ns(seconds: float) -> int:
    return int(round(float(seconds) * 1e9))

