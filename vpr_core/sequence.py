"""Sequence matching (SeqSLAM-style) over the map's keyframes in the order they were driven.

A single frame of a look-alike corridor or a snowy railway matches many places about equally; the
last L frames, aligned with L consecutive keyframes at a constant speed, match only the right one.
A candidate's sequence score is the best, over the configured velocities (map frames per query
frame), of the mean cosine similarity between the recent query frames and the keyframes on that line.
Both sides are counted in time (frame periods from the stamps), so frames a full queue dropped do not
bend the line.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from vpr_core.map_database import MapDatabase


class SequenceMatcher:
    """Keeps the last `length` query descriptors (and the map positions each one retrieved) and scores
    map positions as sequence ends. Hypotheses: the current frame's candidates and every earlier
    frame's candidates carried forward along each velocity, so a place that single frames rank low
    (seasonal change) is still found when the sequence agrees."""

    def __init__(self, length: int, velocities: Sequence[float], contrast_window: int = 0, trim: int = 0) -> None:
        if contrast_window < 0:
            raise ValueError(f"detector.sequence_contrast_window must be >= 0 (0 = off), got {contrast_window}")
        if length < 1:
            raise ValueError(f"detector.sequence_length must be >= 1 (1 = single frame), got {length}")
        vel = [float(v) for v in velocities]
        if not vel or any(not np.isfinite(v) or v <= 0 for v in vel):
            raise ValueError(f"detector.sequence_velocities must be positive numbers (map keyframes per query "
                             f"frame, e.g. [0.8, 1.0, 1.25]), got {list(velocities)}")
        if trim < 0:
            raise ValueError(f"detector.sequence_trim must be >= 0 (0 = plain mean), got {trim}")
        self.length = int(length)
        self.trim = int(trim)
        self.contrast_window = int(contrast_window)
        self.velocities = np.asarray(vel, np.float64)
        self._history: Deque[np.ndarray] = deque(maxlen=self.length)
        self._retrieved: Deque[np.ndarray] = deque(maxlen=self.length)
        self._stamps: Deque[int] = deque(maxlen=self.length)  # header stamps of the recent frames (-1 = unknown)
        self._map_stamps = np.zeros(0, np.int64)  # stamp of every map position, grown as the map grows
        self._map_first = -1  # id at map position 0 when _map_stamps was built (a new map rebuilds it)
        self._map_increasing = True  # the map's stamps strictly increase (else positions are counted)

    def __len__(self) -> int:
        return len(self._history)

    @property
    def current(self) -> np.ndarray:
        """The latest frame's unit descriptor."""
        return self._history[-1]

    @property
    def full(self) -> bool:
        """True once `length` frames have been seen since the last reset."""
        return len(self._history) == self.length

    def reset(self) -> None:
        """Forget the recent frames (a new map, a jump in time)."""
        self._history.clear()
        self._retrieved.clear()
        self._stamps.clear()

    def forget_map(self) -> None:
        """Drop the cached keyframe stamps: the next score reads the map's anew (a map that changed other than
        by growing at its end, e.g. a stretch of another robot's route)."""
        self._map_stamps, self._map_first, self._map_increasing = np.zeros(0, np.int64), -1, True

    def push(self, descriptor: np.ndarray, positions: Sequence[int] = (), stamp_ns: int = -1) -> None:
        """Append the current frame's descriptor (unit-normalised here), step 0 of every sequence, the
        map positions its search retrieved, and its stamp (dropped frames then keep their place in time)."""
        d = np.asarray(descriptor, np.float32).reshape(-1)
        self._history.append(d / max(float(np.linalg.norm(d)), 1e-12))
        self._retrieved.append(np.asarray(positions, np.int64).reshape(-1))
        self._stamps.append(int(stamp_ns))

    def period(self) -> float:
        """The camera's frame period from the recent stamps (median gap); 0 when unknown or not increasing."""
        st = np.asarray(self._stamps, np.int64)
        if len(st) < 2 or (st < 0).any() or (np.diff(st) <= 0).any():
            return 0.0
        return float(np.median(np.diff(st)))

    def _frames(self, db: "MapDatabase", period: float) -> Optional[np.ndarray]:
        """Every map position's time in frame periods since the first keyframe (a dropped frame leaves a
        gap), or None when the map's stamps do not increase (then positions are counted instead)."""
        n = len(db)
        first = db.keyframe_at(0).id if n else -1
        if first != self._map_first or n < len(self._map_stamps):
            self._map_stamps, self._map_first, self._map_increasing = np.zeros(0, np.int64), first, True
        if n > len(self._map_stamps):  # only the new keyframes are read and checked (this runs every frame)
            new = np.asarray([db.keyframe_at(p).stamp_ns for p in range(len(self._map_stamps), n)], np.int64)
            joined = np.concatenate([self._map_stamps[-1:], new])
            self._map_increasing = self._map_increasing and bool((np.diff(joined) > 0).all())
            self._map_stamps = np.concatenate([self._map_stamps, new])
        st = self._map_stamps
        if not len(st) or not self._map_increasing:
            return None
        return np.rint((st - st[0]) / period).astype(np.int64)

    def _lines(self, db: "MapDatabase", ends: np.ndarray) -> np.ndarray:
        """Map positions (E, V, n) of each sequence line: step l is `round(v * frames elapsed)` frames
        before the end. Frames are counted in time on both sides when stamps allow, so frames dropped
        from the query stream or the map do not bend the line (it would end a few places off);
        with uniform stamps and no drops this is exactly `end - round(v * l)`."""
        n = len(self._history)
        rows = np.arange(n)
        period = self.period()
        frames = self._frames(db, period) if period > 0 else None
        if frames is None:
            offsets = np.rint(self.velocities[:, None] * rows[None, :]).astype(np.int64)  # (V, n)
            return ends[:, None, None] - offsets[None, :, :]
        st = np.asarray(list(self._stamps)[::-1], np.int64)  # row l = l frames back
        steps = np.maximum.accumulate(np.maximum(np.rint((st[0] - st) / period).astype(np.int64), rows))
        offsets = np.rint(self.velocities[:, None] * steps[None, :]).astype(np.int64)
        target = frames[ends][:, None, None] - offsets[None, :, :]  # (E, V, n) frame numbers
        hi = np.clip(np.searchsorted(frames, target), 0, len(frames) - 1)
        lo = np.clip(hi - 1, 0, len(frames) - 1)
        pos = np.where(np.abs(frames[lo] - target) <= np.abs(frames[hi] - target), lo, hi)
        return np.where(target < frames[0], -1, pos)  # before the first keyframe: incomplete

    def hypotheses(self, map_size: int) -> np.ndarray:
        """Candidate sequence ends (sorted map positions): what each recent frame retrieved, moved
        forward by the steps since then at every velocity, inside [0, map_size)."""
        ends = []
        for back, found in enumerate(reversed(self._retrieved)):
            if len(found):
                shift = np.unique(np.rint(self.velocities * back).astype(np.int64))
                ends.append((found[:, None] + shift[None, :]).reshape(-1))
        if not ends:
            return np.zeros(0, np.int64)
        ends = np.unique(np.concatenate(ends))
        return ends[(ends >= 0) & (ends < map_size)]

    def score(self, db: "MapDatabase", end_positions: Sequence[int]) -> np.ndarray:
        """Sequence score of each map position as the end of the sequence (the current frame's match).

        Step l (l frames back) is compared with the keyframe at `end - round(v * l)`, l and the map
        counted in frame periods of time when stamps allow (`_lines`: dropped frames leave gaps). With a contrast
        window R > 0 each similarity is first standardised against the keyframes within R positions of
        it (SeqSLAM's local contrast enhancement): a place scores by how much it stands out from its
        neighbours, so a uniformly similar stretch (a snowy season, a look-alike corridor, a tunnel)
        no longer wins by being bright overall, and the score is unitless (comparable across places).
        The `trim` best steps of each line are left out of its mean: two tunnels' dark frames (or any brief
        coincidence) align a few steps with a huge standardised score, which alone could lift a line whose
        other steps disagree. A line that would start before the first keyframe scores NaN (so does every end while fewer
        than `length` frames have been seen).
        """
        ends = np.asarray(end_positions, np.int64).reshape(-1)
        if not len(ends) or not len(self._history):
            return np.zeros(len(ends), np.float32)
        hist = np.stack(list(self._history)[::-1])  # (n, D), row l = l frames back
        n, size = len(hist), len(db)
        rows = np.arange(n)
        pos = self._lines(db, ends)  # (E, V, n)
        complete = (pos >= 0).all(-1)  # (E, V)
        pos = np.clip(pos, 0, None)
        pairs, inverse = np.unique(np.broadcast_to(rows, pos.shape) * size + pos, return_inverse=True)
        step_of, at = pairs // size, pairs % size  # each (step, keyframe) similarity computed once
        r = self.contrast_window
        window = np.clip(at[:, None] + np.arange(-r, r + 1)[None, :], 0, size - 1)  # (P, 2R+1), edges repeat
        wanted, where = np.unique(window, return_inverse=True)
        sim = hist @ db.descriptors_at(wanted).T  # (n, U): every step against every keyframe it needs
        vals = sim[step_of[:, None], where.reshape(window.shape)]  # (P, 2R+1), centre at column r
        if r:
            z = (vals[:, r] - vals.mean(1)) / np.maximum(vals.std(1), 1e-6)
        else:
            z = vals[:, 0]
        steps = z[inverse.reshape(pos.shape)]  # (E, V, n)
        if self.trim and n > self.trim:  # the best steps left out: a short burst of look-alikes cannot carry a line
            steps = np.sort(steps, axis=-1)[..., :n - self.trim]
        line = steps.mean(-1)  # (E, V)
        best = np.where(complete, line, -np.inf).max(axis=1)
        best[~np.isfinite(best) | (n < self.length)] = np.nan
        return best.astype(np.float32)


def best_other(scores: np.ndarray, positions: np.ndarray, best: int, window: int,
               same_place: Callable[[int], bool]) -> float:
    """The highest score among candidates that are another place than candidate `best`: farther than
    `window` map positions from it and not linked to it by an earlier closure (`same_place(i)`, asked
    only of the best-scoring far candidates until one is not linked). NaN when none is."""
    positions = np.asarray(positions)
    far = (np.abs(positions - positions[best]) > window) & np.isfinite(scores)
    for i in np.flatnonzero(far)[np.argsort(-scores[far], kind="stable")]:
        if not same_place(int(i)):
            return float(scores[i])
    return float("nan")
