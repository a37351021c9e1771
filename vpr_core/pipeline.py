"""The one flow, in one object: image -> descriptor -> map search -> loop-closure decision.

The ROS node and the offline direct path both drive a `PlaceRecognizer`, so they produce the
same matches on the same frames. Map swaps (load) are all-or-nothing under a lock.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np

from vpr_core.config import Config, ConfigError
from vpr_core.decision import FrameResult, PendingFrame
from vpr_core.detector import LoopClosureDetector
from vpr_core.fleet import FleetMatcher
from vpr_core.geometry import CameraModel
from vpr_core.id_floor import IdFloor
from vpr_core.images import ImageError, ImageTooLarge, OpenCVError
from vpr_core.keyframes import Candidate
from vpr_core.local_features import DescriptorError, LocalFeatures
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.map_ivf import IvfSettings
from vpr_core.models import DescriptorExtractor
from vpr_core.models.identity import same_descriptors
from vpr_core.runtime import apply_threads
from vpr_core.shared_map import ROBOT_ID, SharedMap, build_shared_map

log = logging.getLogger(__name__)

# Why a frame was not processed: exception type -> stable reason name (first match wins). Besides
# these, "queue_full" (the model fell behind; the oldest waiting frame was dropped) and "error"
# (anything else). PipelineStats.dropped counts by these names; frames lost before they arrived
# are estimated separately (PipelineStats.lost_estimate).
DROP_REASONS: Tuple[Tuple[type, str], ...] = (
    (ImageTooLarge, "too_large"),  # over node.max_image_pixels, refused undecoded
    (OpenCVError, "opencv_error"),  # OpenCV failed while decoding
    (cv2.error, "opencv_error"),  # OpenCV failed anywhere else (conversion, resize)
    (ImageError, "bad_image"),  # corrupt bytes, unsupported encoding, wrong buffer size
    (DescriptorError, "bad_descriptor"),  # NaN/inf/zero descriptor or bad local features
)
# Run-time settable (validated first by Config.validate): the detector reads them per frame.
RUNTIME_SETTINGS = ("detector.loop_threshold", "detector.sequence_threshold", "detector.sequence_support",
                    "detector.min_margin", "detector.top_k", "detector.temporal_consistency", "rerank.min_inliers")


def drop_reason(exc: BaseException) -> str:
    """The stable drop-reason name for an exception raised while handling one frame."""
    return next((reason for kind, reason in DROP_REASONS if isinstance(exc, kind)), "error")


MODES = ("mapping", "localization")


def configured_camera(cfg: Config) -> Optional[CameraModel]:
    """The `camera` section as a CameraModel (None when camera.K is empty); scaled to each frame's
    size when used, so K may be given for the camera's native resolution."""
    c = cfg.camera
    if not c.K:
        return None
    if c.width <= 0 or c.height <= 0:
        raise ConfigError("camera.K is set, so camera.width and camera.height (the image size K refers to) "
                          "must be set too")
    try:
        return CameraModel.from_config(c.K, c.width, c.height, c.distortion)
    except ValueError as exc:
        raise ConfigError(f"camera: {exc}") from None


@dataclass
class PipelineStats:
    frames: int = 0
    keyframes: int = 0
    place_matches: int = 0
    loop_closures: int = 0
    fleet_closures: int = 0  # loop closures with other robots' keyframes (map.backend milvus)
    dropped: Counter = field(default_factory=Counter)  # reason (DROP_REASONS, queue_full, error) -> frames
    lost_estimate: int = 0  # frames estimated lost before they arrived (gaps in header stamps)
    rejections: Counter = field(default_factory=Counter)  # reason (detector.REJECTIONS) -> frames not closed
    stage_ms: Dict[str, Deque[float]] = field(  # stage (detector.STAGES) -> recent frames' ms
        default_factory=lambda: defaultdict(lambda: deque(maxlen=10_000)), repr=False)
    latencies_ms: Deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)  # processing
    # the node's view: image arrival -> PlaceMatch published (queue wait and decode included), and the wait
    delivery_ms: Deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)
    queue_ms: Deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)
    rerank_ms: Deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)  # re-ranked frames

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"frames": self.frames, "keyframes": self.keyframes, "loop_closures": self.loop_closures,
                "fleet_closures": self.fleet_closures,
                "dropped": dict(self.dropped), "lost_estimate": self.lost_estimate, "rejections": dict(self.rejections),
                "latency_ms_median": float(np.median(lat)),
                "latency_ms_p95": float(np.percentile(lat, 95)),
                **({"end_to_end_ms_median": float(np.median(self.delivery_ms)),
                    "end_to_end_ms_p95": float(np.percentile(self.delivery_ms, 95)),
                    "queue_ms_median": float(np.median(self.queue_ms)),
                    "queue_ms_p95": float(np.percentile(self.queue_ms, 95))} if self.delivery_ms else {}),
                "rerank_ms_median": float(np.median(self.rerank_ms)) if self.rerank_ms else 0.0,
                "stage_ms_median": {k: float(np.median(v)) for k, v in self.stage_ms.items() if v},
                "stage_ms_p95": {k: float(np.percentile(v, 95)) for k, v in self.stage_ms.items() if v}}


class PlaceRecognizer:
    """Owns the model, the map and the detector; thread-safe for one producer and map services."""

    def __init__(self, cfg: Config, extractor: Optional[DescriptorExtractor] = None,
                 db: Optional[MapDatabase] = None) -> None:
        self.cfg = cfg
        self.threads = apply_threads(cfg.runtime)  # before the model runs: pools are sized on first use
        self.extractor = extractor if extractor is not None else DescriptorExtractor(cfg.model)
        if cfg.rerank.method != "none" and not self.extractor.has_local:
            raise ConfigError(f"rerank.method is '{cfg.rerank.method}' but model '{cfg.model.name}' has no local "
                              f"head to re-rank with: set model.local_head (e.g. {{name: feature_map, stride: 16}} "
                              f"for CNN backbones) or set rerank.method: none")
        self.db = db if db is not None else self._new_map()
        # local descriptor size the model produces: known from its local head before the first frame
        # (a map loaded at start must be checked too), else once seen
        head = getattr(getattr(self.extractor, "model", None), "local_head", None)
        self._local_dim = int(getattr(head, "out_dim", 0) or 0)
        self.shared = self._shared_map()  # the fleet's map (map.backend milvus), None for faiss
        fleet = FleetMatcher(self.shared, cfg.detector, cfg.map.fleet_top_k) if self.shared is not None else None
        self.detector = LoopClosureDetector(cfg.detector, self.db, cfg.rerank, cfg.pose, fleet)
        self.detector.robot = cfg.map.robot_id
        self.camera = configured_camera(cfg)  # camera.K, for frames that come without CameraInfo
        self.stats = PipelineStats()
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one save at a time (service, periodic, shutdown)
        self._ids: Optional[IdFloor] = None

    def describe(self, images: List[np.ndarray]) -> np.ndarray:
        return self.extractor(images)

    def process(self, image: np.ndarray, stamp_ns: int, frame_id: str, pose: Optional[List[float]] = None,
                camera: Optional[CameraModel] = None, depth: Optional[np.ndarray] = None) -> FrameResult:
        """Run the whole flow on one RGB frame; raises ImageError/DescriptorError on bad input.
        Global descriptor and local features (when the model has a local head) come from one pass.
        `pose` (odometry), `camera` (intrinsics, else camera.K) and `depth`: see LoopClosureDetector.process."""
        return self.finish(self.prepare(image, stamp_ns, frame_id, pose, camera, depth))

    def prepare(self, image: np.ndarray, stamp_ns: int, frame_id: str, pose: Optional[List[float]] = None,
                camera: Optional[CameraModel] = None, depth: Optional[np.ndarray] = None) -> PendingFrame:
        """The first half of `process`: model, search, sequence scores, keyframe. `finish` does the rest
        (re-ranking, verification, the decision), possibly on another thread, in the same frame order."""
        t0 = time.perf_counter()
        out = self.extractor.extract([image], with_local=self.extractor.has_local)
        model_ms = (time.perf_counter() - t0) * 1e3
        local = out.local[0] if out.local else None
        if local is not None:
            self._local_dim = local.dim
        pending = self.prepare_descriptor(out.global_desc[0], stamp_ns, frame_id, local=local, pose=pose,
                                          camera=camera, depth=depth, contrast=float(out.contrast[0]))
        pending.busy_ms += model_ms
        pending.timings_ms["model"] = model_ms  # preprocess + forward (+ local feature selection)
        pending.timings_ms.update(out.timings_ms)
        return pending

    def prepare_descriptor(self, desc: np.ndarray, stamp_ns: int, frame_id: str, local: Optional[LocalFeatures] = None,
                           pose: Optional[List[float]] = None, camera: Optional[CameraModel] = None,
                           depth: Optional[np.ndarray] = None, contrast: float = float("nan")) -> PendingFrame:
        """`prepare` after the model: search, sequence scores, maybe add a keyframe. `contrast` is the
        image's grey-level std (`Extracted.contrast`; NaN = unknown, never gated)."""
        t0 = time.perf_counter()
        with self._lock:
            if self._ids is not None:
                self._ids.reserve(self.detector.next_id)  # durable before the id is published
            pending = self.detector.prepare(desc, stamp_ns, frame_id, pose=pose, local=local,
                                            camera=camera or self.camera, depth=depth, contrast=contrast)
        pending.busy_ms = (time.perf_counter() - t0) * 1e3
        return pending

    def finish(self, pending: PendingFrame) -> FrameResult:
        """Re-rank, verify and decide a prepared frame; frames must be finished in the order prepared.
        PlaceMatch.latency_ms: the time both halves spent working (a wait between them not counted)."""
        t0 = time.perf_counter()
        with self._lock:
            result = self.detector.decide(pending)
        result = self.detector.decide_fleet(pending, result)  # outside the lock: the next frame's model may run
        result.place_match.latency_ms = pending.busy_ms + (time.perf_counter() - t0) * 1e3
        s = self.stats
        s.frames += 1
        s.place_matches += 1
        s.keyframes += int(result.place_match.is_keyframe)
        s.loop_closures += int(result.loop_closure is not None)
        if result.fleet is not None:
            s.fleet_closures += int(result.fleet.closure is not None)
        if result.decision.rejected:
            s.rejections[result.decision.rejected] += 1
        for stage, ms in result.place_match.timings_ms.items():
            s.stage_ms[stage].append(ms)
        s.latencies_ms.append(result.place_match.latency_ms)
        if self.detector.reranker is not None:
            s.rerank_ms.append(result.place_match.rerank_ms)
        return result

    def process_descriptor(self, desc: np.ndarray, stamp_ns: int, frame_id: str, local: Optional[LocalFeatures] = None,
                           pose: Optional[List[float]] = None, camera: Optional[CameraModel] = None,
                           depth: Optional[np.ndarray] = None, contrast: float = float("nan")) -> FrameResult:
        """The flow after the model, both halves at once: search, decide, maybe add a keyframe."""
        return self.finish(self.prepare_descriptor(desc, stamp_ns, frame_id, local, pose, camera, depth, contrast))

    def record_delivery(self, end_to_end_ms: float, queue_ms: float) -> None:
        """The node's honest latency of one frame: from the image's arrival to its PlaceMatch publish
        (queue wait and decode included), and the part of it spent waiting in the queue."""
        self.stats.delivery_ms.append(float(end_to_end_ms))
        self.stats.queue_ms.append(float(queue_ms))

    @property
    def mode(self) -> str:
        """"mapping" (frames may become keyframes) or "localization" (the map is fixed)."""
        return "mapping" if self.detector.mapping else "localization"

    def set_mode(self, mode: str) -> None:
        """Switch between building the map and localising against it, without touching the config file."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self.detector.mapping = mode == "mapping"

    def relocalise(self, image: np.ndarray, k: int, camera: Optional[CameraModel] = None,
                   depth: Optional[np.ndarray] = None) -> List[Candidate]:
        """The map's top-k places for one image, re-ranked and verified when configured, the best with
        its relative pose when intrinsics are known. Changes nothing: no keyframe, no streak, no id."""
        if k < 1:
            raise ValueError(f"relocalisation needs k >= 1 candidates, got {k}")
        out = self.extractor.extract([image], with_local=self.extractor.has_local)
        local = out.local[0] if out.local else None
        with self._lock:
            return self.detector.relocalise(out.global_desc[0], k, local, camera or self.camera, depth)

    def reset_map(self) -> None:
        """Forget every keyframe (ids keep increasing, so nothing published before is ever reused)."""
        with self._lock:
            self.db = self._new_map()
            self.detector.reset_map(self.db)

    def _shared_map(self) -> Optional[SharedMap]:
        """The fleet's shared map `map.backend` names, connected and checked (ConfigError / SharedMapError)."""
        m = self.cfg.map
        if m.backend == "faiss":
            return None
        if not m.milvus_uri:
            raise ConfigError(f"map.backend is {m.backend}: set map.milvus_uri (http://host:19530, or a local "
                              f"folder ending in .db for milvus-lite)")
        if not ROBOT_ID.match(m.robot_id):
            raise ConfigError(f"map.backend is {m.backend}: map.robot_id must name this robot in the fleet (a letter, "
                              f"then letters, digits or _; at most 64), got {m.robot_id!r}")
        return build_shared_map(m.backend, robot=m.robot_id, uri=m.milvus_uri, collection=m.milvus_collection,
                                dim=self.extractor.dim, model=getattr(self.extractor, "fingerprint", ""),
                                local_dim=self._local_dim, max_local_features=self.cfg.model.max_local_features,
                                index=m.milvus_index, publish_period_s=m.fleet_publish_period_s)

    def close(self) -> None:
        """Write the keyframes still queued for the shared map and disconnect from it (a no-op without one)."""
        if self.shared is not None:
            self.shared.close()

    def _new_map(self) -> MapDatabase:
        """An empty map that records which model's descriptors it will hold."""
        db = MapDatabase(self.extractor.dim, self.cfg.map.index, self.cfg.map.use_gpu,
                         model=getattr(self.extractor, "fingerprint", ""), ivf=self._ivf_settings())
        self._limit(db)
        return db

    def _limit(self, db: MapDatabase) -> None:
        """Apply the config's memory budgets (local features, a compressed index's exact descriptors) to a map."""
        m = self.cfg.map
        db.local.limit(m.max_local_mb << 20, m.spill_directory)
        if db.store is not None:
            db.store.limit(m.max_descriptor_mb << 20, m.spill_directory)

    def _ivf_settings(self) -> IvfSettings:
        """The IVF map types' search and training settings from the config's map section."""
        return IvfSettings.of(self.cfg.map)

    def record_stage(self, stage: str, ms: float) -> None:
        """Time spent outside the pipeline on a processed frame (the node's image decoding)."""
        self.stats.stage_ms[stage].append(float(ms))

    def drop(self, reason: str) -> int:
        """Count a frame that could not be processed; returns the running count for that reason."""
        self.stats.dropped[reason] += 1
        return self.stats.dropped[reason]

    def count_lost(self, n: int) -> None:
        """Count frames estimated lost before they arrived (vpr_core.frame_gaps)."""
        self.stats.lost_estimate += int(n)

    def track_ids(self, floor: Optional[IdFloor]) -> int:
        """Persist handed-out ids through `floor` (None = stop) and skip every id it says was used;
        returns the next id."""
        with self._lock:
            self._ids = floor
            if floor is not None:
                self.detector.skip_ids_below(floor.read())
            return self.detector.next_id

    def settle_ids(self) -> None:
        """Clean shutdown: record the exact next id, so a restart continues without a gap."""
        with self._lock:
            if self._ids is not None:
                self._ids.settle(self.detector.next_id)

    def apply_settings(self, changes: Mapping[str, Any]) -> None:
        """Adopt already validated run-time settings (RUNTIME_SETTINGS keys) from the next frame on."""
        unknown = set(changes) - set(RUNTIME_SETTINGS)
        if unknown:
            raise KeyError(f"{sorted(unknown)} cannot change at run time; settable: {', '.join(RUNTIME_SETTINGS)}")
        with self._lock:
            for key, value in changes.items():
                section, name = key.split(".")
                setattr(getattr(self.cfg, section), name, value)  # the detector holds these same sections
            if self.detector.reranker is not None:
                self.detector.reranker.min_inliers = self.cfg.rerank.min_inliers

    def save_map(self, path: str | Path) -> Path:
        """Save the map atomically; frames are held up only while its index is copied and its keyframes
        listed (`MapDatabase.freeze`), not while it is encoded, checksummed and written."""
        with self._save_lock:
            with self._lock:
                frozen = self.db.freeze()
            return frozen.save(path, self.cfg.map.max_file_mb << 20)

    def load_map(self, path: str | Path) -> int:
        """Replace the map with the file's; on any error the current map is kept and MapError raised."""
        db = MapDatabase.load(path, expected_dim=self.extractor.dim, use_gpu=self.cfg.map.use_gpu,
                              max_bytes=self.cfg.map.max_file_mb << 20, ivf=self._ivf_settings())
        ours = getattr(self.extractor, "fingerprint", "")
        if db.model and ours and not same_descriptors(db.model, ours):
            raise MapError(f"{path} holds descriptors of model {db.model}, this node runs {ours}: their descriptors "
                           f"are not comparable (load a map this model built, or rebuild it); the in-memory map "
                           f"was left unchanged")
        if not db.model:
            log.warning("%s does not record the model that built it (map format version < 3): it is assumed to be "
                        "%s's; it will record it when saved", path, ours or "this model")
            db.model = ours
        with self._lock:
            if self._local_dim and len(db.local) and db.local.dim != self._local_dim:
                raise MapError(f"{path} holds {db.local.dim}-D local features but the model produces "
                               f"{self._local_dim}-D ones: it was built with another local head; rebuild it "
                               f"(the in-memory map was left unchanged)")
            self._limit(db)
            self.db = db
            self.detector.reset_map(db)
        return len(db)
