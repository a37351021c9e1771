"""Agreement over time: a streak of matches that move with the query (temporal consistency) and the
keyframes known to show one place (linked by accepted closures). Shared by the detector and by the
offline replays of its decisions."""
from __future__ import annotations

from typing import TYPE_CHECKING, Counter, Dict, Optional, Sequence

if TYPE_CHECKING:
    from vpr_core.config import DetectorConfig
    from vpr_core.decision import Decision, LoopClosure, PendingFrame
    from vpr_core.keyframes import Keyframe


class Consistency:
    """Temporal consistency: how many consecutive gated frames matched places that move with the query.
    The match must have advanced since each of the streak's last `span` frames as the query did, at a
    velocity of the sequence band, give or take `window` frames: a match that slides back, leaps ahead
    or stays put while the query moves breaks the streak. One rule for the detector and for offline
    replays of its decisions."""

    def __init__(self, window: float, velocities: Sequence[float] = (1.0,), span: int = 1) -> None:
        self.window = float(window)
        self.band = (float(min(velocities)), float(max(velocities)))
        self.span = max(1, int(span))
        self.reset()

    def reset(self) -> None:
        self.streak, self.recent = 0, []

    def update(self, match: Optional[float], query: float = 0.0) -> int:
        """The streak after this frame. `match`: the frame number (time in frame periods, or id) of the
        keyframe that passed the gates, None if none did; `query`: this frame's frame number."""
        if match is None:
            self.reset()
            return 0
        agrees = bool(self.recent) and all(self._deviation(match - m, query - q) <= self.window
                                           for m, q in self.recent[-self.span:])
        self.streak = self.streak + 1 if agrees else 1
        kept = self.recent if agrees and self.span > 1 else []
        self.recent = kept[len(kept) - self.span + 1:] + [(match, query)]
        return self.streak

    def _deviation(self, moved: float, elapsed: float) -> float:
        """How far the match's advance is from the band of advances the query's `elapsed` frames allow."""
        return abs(moved - min(max(moved, self.band[0] * elapsed), self.band[1] * elapsed))


class PlaceLinks:
    """Keyframes known to show one place (linked by accepted closures), as a union-find over ids."""

    def __init__(self) -> None:
        self._parent: Dict[int, int] = {}

    def find(self, kid: int) -> int:
        root = kid
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while kid != root:  # path compression
            self._parent[kid], kid = root, self._parent.get(kid, kid)
        return root

    def link(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def same(self, a: int, b: int) -> bool:
        return self.find(a) == self.find(b)


def frame_number(kf: "Keyframe", period: float) -> float:
    """A frame's place in time in camera frame periods (frames dropped under load leave gaps); its id when the
    stream's stamps give no period (`period`: the one the frame was prepared with, 0 = none)."""
    return kf.stamp_ns / period if period > 0 and kf.stamp_ns >= 0 else float(kf.id)


def accept(p: "PendingFrame", d: "Decision", streak: Consistency, cfg: "DetectorConfig",
           rejections: Counter) -> Optional["LoopClosure"]:
    """The closure of a judged frame once `streak` (temporal consistency) agrees, else None with the reason
    counted in `rejections`: one rule for the own map's closures and the fleet's, each with its own streak."""
    from vpr_core.decision import LoopClosure
    from vpr_core.local_features import Verification

    streak.window = cfg.consistency_window  # a run-time parameter change applies at once
    streak.span = max(1, cfg.temporal_consistency - 1)
    d.streak = streak.update(None if d.rejected else frame_number(d.candidate.keyframe, p.period), p.frame_number)
    if not d.rejected and d.streak < cfg.temporal_consistency:
        d.rejected = "inconsistent"
    if d.rejected:
        rejections[d.rejected] += 1
        return None
    best = d.candidate
    seq = d.score if cfg.sequence_length > 1 else float("nan")
    return LoopClosure(p.query, best, best.verification if best.verification is not None else Verification(),
                       sequence_score=seq, margin=d.margin)
