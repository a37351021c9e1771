"""vpr_core.debug_view: the bounded thumbnail cache and the side-by-side picture of a decision."""
from __future__ import annotations

import numpy as np

from vpr_core.debug_view import ACCEPTED, REJECTED, DebugView, ThumbnailCache, compose


def frame(value: int, h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_cache_keeps_the_most_recently_used():
    cache = ThumbnailCache(2, width=80)
    cache.put(1, frame(10))
    cache.put(2, frame(20))
    assert cache.get(1) is not None  # 1 is now the most recent
    cache.put(3, frame(30))
    assert cache.get(2) is None and cache.get(1) is not None and len(cache) == 2
    assert cache.get(3).shape == (60, 80, 3), "scaled to the width, aspect kept"
    assert len(ThumbnailCache(0)) == 0


def test_compose_side_by_side_with_the_verdict_colour():
    match = ThumbnailCache(1, width=240)
    match.put(7, frame(200))
    view = DebugView(query_id=9, match_id=7, accepted=True, lines=["score 0.9", "LOOP CLOSURE"])
    img = compose(frame(50), match.get(7), view)
    assert img.dtype == np.uint8 and img.shape[1] == 480 and img.shape[0] > 180
    assert tuple(img[0, 0]) == ACCEPTED
    assert img[90, 120].tolist() == [50] * 3 and img[90, 360].tolist() == [200] * 3, "query left, match right"
    missing = compose(frame(50), None, DebugView(9, 7, False, ["rejected: below_threshold"]))
    assert tuple(missing[0, 0]) == REJECTED
    assert missing[170, 400].tolist() == [90] * 3, "a keyframe not in the cache shows as a grey placeholder"
