"""What a valid value of each config parameter is: parameter -> Rule (a check and, for the error
message, what is expected). Config.validate() applies the table when a Config is built and on every
run-time change; a test makes sure every numeric parameter and every choice has a rule.
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

MAX_LOCAL_FEATURES = 65536  # most local features one image may keep (bounds map files on load too)
MAX_INPUT_PIXELS = 2048 * 2048  # network input height x width
PRECISIONS = ("fp32", "fp16", "bf16")
INTERPOLATIONS = ("area", "linear", "cubic")  # vpr_core.models.preprocess
QOS_PROFILES = ("sensor_data", "reliable")  # vpr_ros maps each name to a subscription QoS


@dataclass(frozen=True)
class Rule:
    """A check on one parameter's value and, for the error message, what a valid value is."""
    check: Callable[[Any], bool]
    expect: str

    def holds(self, value: Any) -> bool:
        try:
            return bool(self.check(value))
        except (TypeError, ValueError):
            return False


def _between(lo: float, hi: float = math.inf, what: str = "") -> Rule:
    bound = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
    return Rule(lambda v: lo <= v <= hi, bound + (f" ({what})" if what else ""))


def _open(lo: float, hi: float, what: str = "") -> Rule:
    return Rule(lambda v: lo < v < hi, f"in ({lo}, {hi})" + (f" ({what})" if what else ""))


def _one_of(*names: str) -> Rule:
    return Rule(lambda v: v in names, "one of " + ", ".join(names))


def _registered(module: str, registry: str, *extra: str) -> Rule:
    """A name in a vpr_core registry (imported when checked, so this module stays light)."""
    def names() -> List[str]:
        return [*extra, *getattr(importlib.import_module(module), registry).names()]
    return Rule(lambda v: v in names(), f"a name registered in {module}.{registry} (or {', '.join(extra) or '-'})")


def _numbers(count: int, positive: bool = False) -> Callable[[Any], bool]:
    return lambda v: len(v) in (0, count) and all(math.isfinite(x) and (x > 0 or not positive) for x in v)


def _image_size(v: List[int]) -> bool:
    return len(v) == 2 and all(8 <= s <= 8192 for s in v) and v[0] * v[1] <= MAX_INPUT_PIXELS


CONFIG_RULES: Dict[str, Rule] = {
    "model.max_local_features": _between(1, MAX_LOCAL_FEATURES),
    "model.device": Rule(lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N"),
    "model.precision": _one_of(*PRECISIONS),
    "model.batch_size": _between(1, 1024),
    "model.runtime": _registered("vpr_core.models.runtimes", "RUNTIMES"),
    "model.preprocess.image_size": Rule(_image_size, f"[height, width], each 8..8192, at most {MAX_INPUT_PIXELS} "
                                                     f"pixels in all"),
    "model.preprocess.mean": Rule(_numbers(3), "three finite numbers, or [] for the model's own"),
    "model.preprocess.std": Rule(_numbers(3, positive=True), "three positive numbers, or [] for the model's own"),
    "model.preprocess.interpolation": _one_of(*INTERPOLATIONS),
    "map.index": _registered("vpr_core.map_index", "INDEX_TYPES"),
    "map.use_gpu": _one_of("auto", "true", "false"),
    "map.ivf_nprobe": _between(1, 65536),
    "map.ivf_probe_share": _between(0.0, 1.0, "share of the lists scanned at least; 0 = nprobe alone"),
    "map.ivf_uncovered_max": _between(0, 1 << 20, "0 = no exact search of keyframes outside the lists' training"),
    "map.ivf_train_at": _between(78, 1 << 40, what="at least two lists of 39 training keyframes"),
    "map.ivf_regrow": _open(1.0, math.inf, "growth factor between retrainings"),
    "map.autosave_period_s": _between(0.0, what="0 = save only on shutdown"),
    "map.max_file_mb": _between(1, 1 << 20),
    "map.id_reserve": _between(1, 1_000_000),
    "map.robot_id": Rule(lambda v: len(v) <= 256, "at most 256 characters"),
    "map.backend": _one_of("faiss", "milvus"),
    "map.max_local_mb": _between(0, 1 << 24, "0 = keep every keyframe's local features in memory"),
    "map.ivf_shortlist": _between(1, 65536),
    "map.max_descriptor_mb": _between(0, 1 << 24, "0 = keep every keyframe's exact descriptor in memory"),
    "map.milvus_collection": Rule(lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", v) is not None,
                                  "a Milvus collection name: letters, digits and _, not starting with a digit"),
    "map.milvus_index": Rule(lambda v: re.fullmatch(r"[A-Z0-9_]+", v) is not None, "a Milvus index type, e.g. FLAT"),
    "map.fleet_top_k": _between(1, 1000),
    "map.fleet_publish_period_s": _between(0.01, 3600.0),
    "detector.top_k": _between(1, 1000),
    "detector.exclude_recent_count": _between(0),
    "detector.exclude_recent_s": _between(0.0),
    "detector.loop_threshold": _between(0.0, 1.0, "a cosine similarity"),
    "detector.temporal_consistency": _between(1, 1000),
    "detector.consistency_window": _between(0),
    "detector.keyframe_min_interval_s": _between(0.0),
    "detector.keyframe_max_similarity": _between(-1.0, 1.0, "a cosine similarity; 1 = keep every frame"),
    "node.image_topics": Rule(lambda v: len(v) >= 1 and all(isinstance(t, str) and t for t in v),
                              "one or more topic names (or set node.image_topic)"),
    "node.place_match_topic": Rule(lambda v: v != "", "a topic name"),
    "node.loop_closure_topic": Rule(lambda v: v != "", "a topic name"),
    "node.queue_size": _between(1, 10_000),
    "node.max_image_pixels": _between(0, 1 << 31, "0 = no limit"),
    "node.qos": _one_of(*QOS_PROFILES),
    "node.loss_gap_factor": Rule(lambda v: v == 0 or 1.0 < v <= 100.0, "0 (off) or in (1, 100]"),
    "node.loss_window": _between(3, 10_000),
    "rerank.method": _registered("vpr_core.rerank", "RERANKERS", "none"),
    "rerank.top_k": _between(1, 1000),
    "rerank.min_inliers": _between(0, 1_000_000),
    "rerank.match_threshold": _between(-1.0, 1.0, "a cosine similarity"),
    "rerank.ratio": Rule(lambda v: 0.0 < v <= 1.0, "in (0, 1] (1 = no ratio test)"),
    "rerank.px_threshold": Rule(lambda v: 0.0 < v <= 1000.0, "in (0, 1000] pixels"),
    "rerank.confidence": _open(0.0, 1.0),
    "rerank.max_iters": _between(1, 10_000_000),
    "rerank.model": _one_of("fundamental", "homography"),
    # keyframes, exclusion, sequence matching and margin (vpr_core.detector, keyframes, sequence)
    "detector.keyframe_min_distance_m": _between(0.0, what="0 = off"),
    "detector.keyframe_min_rotation_deg": _between(0.0, 360.0, "0 = off"),
    "detector.exclude_recent_m": _between(0.0, what="0 = off"),
    "detector.exclude_recent_change": _between(0.0, what="0 = off"),
    "detector.sequence_length": _between(1, 1000, "1 = single frame"),
    "detector.sequence_candidates": _between(1, 1000),
    "detector.sequence_contrast_window": _between(0, 1000, "0 = raw cosine"),
    "detector.sequence_trim": _between(0, 1000, "0 = plain mean"),
    "detector.sequence_threshold": Rule(math.isfinite, "a finite number"),
    "detector.sequence_support": _between(0.0, what="0 = off"),
    "detector.sequence_velocities": Rule(lambda v: 1 <= len(v) <= 32 and all(math.isfinite(x) and x > 0 for x in v),
                                         "1 to 32 positive numbers (map keyframes per query frame)"),
    "detector.min_margin": _between(0.0, what="0 = off"),
    "detector.min_image_contrast": _between(0.0, 1.0, "a grey-level standard deviation on a 0-1 scale (0 = off)"),
    "detector.margin_window": _between(0, 1_000_000),
    # intrinsics for the relative pose (vpr_core.geometry.camera)
    "camera.K": Rule(lambda v: len(v) in (0, 4, 9) and all(math.isfinite(x) for x in v),
                     "[] or [fx, fy, cx, cy] or 9 values row-major, all finite"),
    "camera.width": _between(0, 100_000, "0 = unknown"),
    "camera.height": _between(0, 100_000, "0 = unknown"),
    "camera.distortion": Rule(lambda v: len(v) in (0, 4, 5, 8, 12, 14) and all(math.isfinite(x) for x in v),
                              "[] or 4, 5, 8, 12 or 14 finite OpenCV coefficients"),
    # thread counts (vpr_core.runtime.apply_threads)
    "runtime.threads": _between(0, 256, "0 = auto, a quarter of the cores"),
    "runtime.search_threads": _between(0, 256, "0 = FAISS default"),
    "runtime.opencv_threads": _between(0, 256, "0 = OpenCV default"),
    "runtime.blas_threads": _between(0, 256, "0 = OpenBLAS default"),
    # relative-pose thresholds (vpr_core.geometry.pose.PoseConfig, which checks some pairs itself)
    "pose.min_inliers": _between(5, 1_000_000, "the 5-point solver's sample at least"),
    "pose.ransac_px": Rule(lambda v: 0.0 < v <= 1000.0, "in (0, 1000] pixels"),
    "pose.confidence": _open(0.0, 1.0),
    "pose.max_iters": _between(1, 10_000_000),
    "pose.seed": _between(0, 2**31 - 1),
    "pose.polish_iters": _between(0, 1000, "0 = off"),
    "pose.keypoint_sigma_px": Rule(lambda v: 0.0 < v <= 100.0, "in (0, 100] pixels"),
    "pose.max_keypoint_noise_deg": Rule(lambda v: 0.0 < v <= 180.0, "in (0, 180] degrees"),
    "pose.min_spread_ratio": _between(0.0, 1.0),
    "pose.min_coverage": _between(0.0, 1.0),
    "pose.min_parallax_deg": _between(0.0, 180.0),
    "pose.min_parallax_snr": _between(0.0),
    "pose.planar_inlier_ratio": _between(0.0, 1.0),
    "pose.planar_tolerance_deg": _between(0.0, 180.0),
    "pose.min_cheirality_ratio": _between(0.0, 1.0),
    "pose.max_rotation_sigma_deg": Rule(lambda v: 0.0 < v <= 180.0, "in (0, 180] degrees"),
    "pose.max_direction_sigma_deg": Rule(lambda v: 0.0 < v <= 180.0, "in (0, 180] degrees"),
    "pose.min_depth_m": _between(0.0),
    "pose.max_depth_m": Rule(lambda v: 0.0 < v < math.inf, "a positive distance in metres"),
    "pose.depth_rel_sigma": _between(0.0),
    "pose.unknown_scale_sigma": Rule(lambda v: 0.0 < v < math.inf, "a positive number"),
    # side inputs, diagnostics, markers, debug image (vpr_ros)
    "node.odom_max_dt_s": _between(0.0),
    "node.odom_buffer": _between(1, 1_000_000),
    "node.depth_max_dt_s": _between(0.0, what="0 = exact stamp"),
    "node.depth_buffer": _between(1, 10_000),
    "node.sync_wait_s": _between(0.0, 10.0, "0 = never wait"),
    "node.diagnostics_period_s": _between(0.0, what="0 = off"),
    "node.latency_budget_ms": _between(0.0, what="0 = never warn"),
    "node.markers_period_s": _between(0.0, what="0 = off"),
    "node.debug_thumbnails": _between(0, 1_000_000),
}
