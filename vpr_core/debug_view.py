"""A picture of one decision: the query frame beside its best map candidate, with the verdict drawn.

The map stores descriptors, not images, so the candidate's picture comes from a bounded LRU of
keyframe thumbnails kept while they were added (a keyframe from a loaded map or one evicted from
the cache shows as a grey placeholder). No ROS here: the node publishes the array as an Image.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional

import cv2
import numpy as np

THUMB_WIDTH = 240  # pixels; height follows the frame's aspect ratio (180 for 4:3: ~130 kB per thumbnail)
ACCEPTED, REJECTED, TEXT = (40, 200, 60), (220, 60, 40), (255, 255, 255)


def thumbnail(rgb: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """`rgb` scaled to `width` pixels wide (aspect kept)."""
    h, w = rgb.shape[:2]
    height = max(1, round(h * width / w))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


class ThumbnailCache:
    """Keyframe id -> thumbnail, the `capacity` most recently added or used."""

    def __init__(self, capacity: int, width: int = THUMB_WIDTH) -> None:
        self.capacity, self.width = max(0, int(capacity)), width
        self._items: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, kid: int, rgb: np.ndarray) -> None:
        if self.capacity == 0:
            return
        self._items[kid] = thumbnail(rgb, self.width)
        self._items.move_to_end(kid)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, kid: int) -> Optional[np.ndarray]:
        img = self._items.get(kid)
        if img is not None:
            self._items.move_to_end(kid)
        return img

    def clear(self) -> None:
        self._items.clear()


@dataclass
class DebugView:
    """What one panel pair says: the query, the candidate it was judged against (or none) and why."""
    query_id: int
    match_id: Optional[int]  # None: the map had no candidate
    accepted: bool  # a loop closure was published
    lines: List[str]  # text drawn under the images, one line each


def _label(img: np.ndarray, text: str, y: int) -> None:
    cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1, cv2.LINE_AA)


def compose(query: np.ndarray, match: Optional[np.ndarray], view: DebugView, width: int = THUMB_WIDTH) -> np.ndarray:
    """Query | candidate side by side, a border green (closure) or red (no closure), text below: RGB uint8."""
    left = thumbnail(query, width)
    h = left.shape[0]
    right = np.full_like(left, 90)
    if match is not None:
        right = cv2.resize(match, (width, h), interpolation=cv2.INTER_AREA)
    else:
        _label(right, "no candidate" if view.match_id is None else f"keyframe {view.match_id}: not cached", h // 2)
    _label(left, f"query {view.query_id}", 18)
    if view.match_id is not None:
        _label(right, f"keyframe {view.match_id}", 18)
    line_h = 18
    text = np.zeros((line_h * len(view.lines) + 8, 2 * width, 3), np.uint8)
    for i, line in enumerate(view.lines):
        _label(text, line, line_h * (i + 1))
    out = np.vstack([np.hstack([left, right]), text])
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), ACCEPTED if view.accepted else REJECTED, 3)
    return out
