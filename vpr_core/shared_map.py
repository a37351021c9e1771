"""A place map shared by a fleet: every robot publishes its keyframes (descriptor, metadata, local features) to
one store and searches the other robots' keyframes in it, beside its own FAISS map (which stays the hot path).

`SharedMap` is the one interface the detector talks to; `SHARED_MAPS` names the stores (`map.backend`; the
default `faiss` has none: the robot's own map only). Publishing never blocks a frame: keyframes queue and a
background thread writes them in batches; a store that is down costs counted, retried writes and empty
fleet searches, never the robot's own loop closures.
"""
from __future__ import annotations

import base64
import importlib
import logging
import re
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import LocalFeatureError, LocalFeatures, LocalFeatureStore
from vpr_core.registry import Registry

log = logging.getLogger(__name__)

SHARED_MAPS: Registry["SharedMap"] = Registry("shared map backend")
MAX_BATCH = 64  # keyframes per write (with local features ~90 kB each: well under a gRPC message's limit)
STORE_MODULES = {"milvus": "vpr_core.milvus_map"}  # map.backend -> the module that registers it (faiss: none)
ROBOT_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")  # a robot's name is a partition name in the store


class SharedMapError(RuntimeError):
    """The shared map cannot be used as configured (unreachable at start, another model's collection, ...)."""


@dataclass
class SharedEntry:
    """One keyframe on its way to the shared map."""
    keyframe: Keyframe
    descriptor: np.ndarray  # unit L2 norm, float32
    local: Optional[LocalFeatures] = None


@dataclass
class SharedStats:
    """What the shared map did: for diagnostics and the fleet benchmark."""
    published: int = 0  # keyframes written
    pending: int = 0  # keyframes queued, not yet written
    dropped: int = 0  # keyframes never written: the queue was full (the store was down for long)
    write_failures: int = 0  # batches that failed and were retried
    searches: int = 0
    search_failures: int = 0  # searches that failed (counted as finding nothing)
    bad_rows: int = 0  # rows of other robots that could not be decoded (skipped)
    search_ms: List[float] = field(default_factory=list)  # recent search times
    fetch_ms: List[float] = field(default_factory=list)  # recent local-feature fetch times


LOCAL_HEADER = struct.Struct("<4sIIII")  # magic, count, dim, image height, image width
LOCAL_MAGIC = b"VLF1"


def pack_local(local: LocalFeatures) -> str:
    """One image's local features as ASCII (header, float32 xy, float16 descriptors; base64): stores keep
    them in string fields beside the keyframe's vector."""
    h, w = local.image_hw
    raw = LOCAL_HEADER.pack(LOCAL_MAGIC, len(local), local.dim, int(h), int(w))
    return base64.b64encode(raw + np.ascontiguousarray(local.xy, "<f4").tobytes()
                            + np.ascontiguousarray(local.desc, "<f2").tobytes()).decode("ascii")


def unpack_local(text: str, store: LocalFeatureStore) -> LocalFeatures:
    """`pack_local`'s inverse, checked like any stored features (`store.check`); LocalFeatureError if the text
    is not exactly one such record."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        magic, n, dim, h, w = LOCAL_HEADER.unpack_from(raw)
    except (ValueError, UnicodeEncodeError, struct.error) as exc:
        raise LocalFeatureError(f"shared local features are not readable ({exc})") from None
    if magic != LOCAL_MAGIC or len(raw) != LOCAL_HEADER.size + n * 8 + n * dim * 2:
        raise LocalFeatureError(f"shared local features have the wrong layout ({len(raw)} bytes for {n} x {dim})")
    xy = np.frombuffer(raw, "<f4", 2 * n, LOCAL_HEADER.size).reshape(n, 2)
    desc = np.frombuffer(raw, "<f2", n * dim, LOCAL_HEADER.size + 8 * n).reshape(n, dim)
    return store.check(LocalFeatures(xy, desc, (h, w)))


def packed_length(count: int, dim: int) -> int:
    """Characters `pack_local` makes for `count` features of `dim` channels."""
    return 4 * ((LOCAL_HEADER.size + count * (8 + 2 * dim) + 2) // 3)


class SharedMap(ABC):
    """The fleet's map: `publish` this robot's keyframes (non-blocking), `search` the other robots' keyframes,
    `local_features` of found ones for verification. Subclasses implement the three store operations."""

    def __init__(self, robot: str, publish_period_s: float = 1.0, max_pending: int = 10000,
                 cache_local: int = 256) -> None:
        if not ROBOT_ID.match(robot or ""):
            raise SharedMapError(f"a shared map needs map.robot_id to name this robot: a letter, then letters, digits "
                                 f"or _ (at most 64); got {robot!r}")
        self.robot = robot
        self.period_s = float(publish_period_s)
        self.stats = SharedStats()
        self._queue: Deque[SharedEntry] = deque()
        self._max_pending = int(max_pending)
        self._wake = threading.Condition()
        self._closing = False
        self._busy = False  # the writer holds a batch
        self._hurry = False  # flush(): write without waiting for the period
        self._thread: Optional[threading.Thread] = None
        # other robots' local features fetched lately (rows never change once written; consecutive frames
        # ask for mostly the same candidates): (robot, id) -> features, least recently used first
        self._cache: "OrderedDict[Tuple[str, int], Optional[LocalFeatures]]" = OrderedDict()
        self._cache_size = int(cache_local)

    # ---- what a store implements ------------------------------------------------------------
    @abstractmethod
    def _write(self, entries: Sequence[SharedEntry]) -> None:
        """Write a batch of this robot's keyframes (raises on failure; the batch is retried)."""

    @abstractmethod
    def _search(self, descriptor: np.ndarray, k: int) -> List[Candidate]:
        """The `k` keyframes of other robots most similar to `descriptor` (unit norm), best first."""

    @abstractmethod
    def _fetch_local(self, keyframes: Sequence[Keyframe]) -> Dict[Tuple[str, int], str]:
        """(robot, id) -> packed local features, for those of `keyframes` that have them."""

    @abstractmethod
    def _route(self, robot: str, session: int, lo_ns: int, hi_ns: int) -> List[Tuple[Keyframe, np.ndarray]]:
        """Robot `robot`'s keyframes of `session` stamped within [lo_ns, hi_ns], with their descriptors."""

    def _shutdown(self) -> None:
        """Release the store's connection."""

    # ---- the interface ------------------------------------------------------------------------
    def publish(self, keyframe: Keyframe, descriptor: np.ndarray, local: Optional[LocalFeatures] = None) -> None:
        """Queue one of this robot's keyframes for the shared map (returns at once). When the queue is full
        (the store has been down for long) the oldest queued keyframe is dropped and counted."""
        d = np.asarray(descriptor, np.float32).reshape(-1)
        entry = SharedEntry(keyframe, d / max(float(np.linalg.norm(d)), 1e-12), local)
        with self._wake:
            if len(self._queue) >= self._max_pending:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(entry)
            self.stats.pending = len(self._queue)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shared-map-writer", daemon=True)
                self._thread.start()
            self._wake.notify()

    def search(self, descriptor: np.ndarray, k: int) -> List[Candidate]:
        """Other robots' keyframes most like `descriptor`; [] when the store fails (counted, logged)."""
        if k <= 0:
            return []
        d = np.asarray(descriptor, np.float32).reshape(-1)
        t0 = time.perf_counter()
        self.stats.searches += 1
        try:
            found = self._search(d / max(float(np.linalg.norm(d)), 1e-12), int(k))
        except Exception as exc:  # a fleet store outage must not stop this robot's own loop closure
            self.stats.search_failures += 1
            if self.stats.search_failures in (1, 10, 100) or self.stats.search_failures % 1000 == 0:
                log.warning("shared map search failed (%d so far): %s: %s", self.stats.search_failures,
                            type(exc).__name__, exc)
            return []
        _recent(self.stats.search_ms, (time.perf_counter() - t0) * 1e3)
        return found

    def local_features(self, keyframes: Sequence[Keyframe], store: LocalFeatureStore) -> List[Optional[LocalFeatures]]:
        """The local features of other robots' `keyframes` (same order; None where there are none or they do
        not decode: counted in stats.bad_rows). `store` checks them (its local descriptor size)."""
        t0 = time.perf_counter()
        wanted = [kf for kf in keyframes if kf.local_features and (kf.robot, kf.id) not in self._cache]
        try:
            packed = self._fetch_local(wanted) if wanted else {}
        except Exception as exc:
            self.stats.search_failures += 1
            log.warning("shared map local-feature fetch failed: %s: %s", type(exc).__name__, exc)
            packed, wanted = {}, []
        for kf in wanted:
            text = packed.get((kf.robot, kf.id))
            try:
                self._cache[(kf.robot, kf.id)] = unpack_local(text, store) if text else None
            except LocalFeatureError as exc:
                self.stats.bad_rows += 1
                log.warning("robot %s's keyframe %d has unreadable local features in the shared map: %s",
                            kf.robot, kf.id, exc)
                self._cache[(kf.robot, kf.id)] = None
        out: List[Optional[LocalFeatures]] = []
        for kf in keyframes:
            key = (kf.robot, kf.id)
            if key in self._cache:
                self._cache.move_to_end(key)
            found = self._cache.get(key)
            out.append(found if found is None or found.dim == store.dim or not store.dim else None)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        _recent(self.stats.fetch_ms, (time.perf_counter() - t0) * 1e3)
        return out

    def route(self, robot: str, session: int, lo_ns: int, hi_ns: int) -> Optional[List[Tuple[Keyframe, np.ndarray]]]:
        """A stretch of another robot's route (keyframes and descriptors, any order): what sequence matching
        needs around a candidate. None when the store fails (counted, logged)."""
        if not ROBOT_ID.match(robot):
            self.stats.bad_rows += 1
            return None
        try:
            return self._route(robot, int(session), int(lo_ns), int(hi_ns))
        except Exception as exc:
            self.stats.search_failures += 1
            log.warning("shared map route fetch failed: %s: %s", type(exc).__name__, exc)
            return None

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued keyframe is written (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            self._hurry = True
            self._wake.notify_all()
            try:
                while self._queue or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._wake.wait(min(left, 0.05))
            finally:
                self._hurry = False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to `timeout_s`), stop the writer, release the store."""
        if not self.flush(timeout_s):
            log.warning("shared map: %d keyframes were not written before shutdown", len(self._queue))
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._shutdown()

    # ---- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        """Write queued keyframes in batches every `period_s`; a failed batch goes back to the queue's front and is
        retried with a growing pause (at most 30 s)."""
        pause = self.period_s
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closing or self._queue, timeout=None)
                if self._closing and not self._queue:
                    return
                # at most MAX_BATCH per write: after an outage the queue may hold thousands (one message each)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                self._busy = True
            try:
                self._write(batch)
            except Exception as exc:
                with self._wake:
                    self._busy = False
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self._max_pending:
                        self._queue.popleft()
                        self.stats.dropped += 1
                    self.stats.pending = len(self._queue)
                    self.stats.write_failures += 1
                if self.stats.write_failures in (1, 10, 100) or self.stats.write_failures % 1000 == 0:
                    log.warning("shared map write of %d keyframes failed (%d failures so far; retrying in %.1f s): "
                                "%s: %s", len(batch), self.stats.write_failures, pause, type(exc).__name__, exc)
                with self._wake:
                    if self._wake.wait_for(lambda: self._closing, timeout=pause):
                        return  # close() already waited for as long as it could
                pause = min(30.0, max(pause, 0.1) * 2)
                continue
            with self._wake:
                self._busy = False
                self.stats.published += len(batch)
                self.stats.pending = len(self._queue)
                self._wake.notify_all()
                pause = self.period_s
                # gather the next batch for a period (publish does not cut it short; flush, close and a full
                # batch waiting do)
                self._wake.wait_for(lambda: self._closing or self._hurry or len(self._queue) >= MAX_BATCH,
                                    timeout=self.period_s)


def _recent(values: List[float], v: float, keep: int = 1000) -> None:
    values.append(v)
    if len(values) > keep:
        del values[:len(values) - keep]


def build_shared_map(backend: str, **kwargs: Any) -> Optional[SharedMap]:
    """The configured shared map (None for `faiss`: this robot's map only). Stores are imported on use, so a
    robot without a fleet needs none of their packages."""
    if backend == "faiss":
        return None
    if backend in STORE_MODULES:
        importlib.import_module(STORE_MODULES[backend])  # registers the store
    return SHARED_MAPS.build(backend, **kwargs)
