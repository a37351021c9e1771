"""PlaceRecognizer's robustness parts: drop reasons by exception type, frames lost before arrival
(stamp gaps), ids that survive kill -9 (write-ahead id floor file) and settings changed at run time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vpr_core.config import load_config
from vpr_core.frame_gaps import GapEstimator
from vpr_core.id_floor import IdFloor
from vpr_core.images import ImageError, ImageTooLarge, OpenCVError
from vpr_core.local_features import DescriptorError
from vpr_core.pipeline import DROP_REASONS, PlaceRecognizer, drop_reason

DIM = 32
SEC = 1_000_000_000
PERIOD = SEC // 30


def _recognizer(has_local=False, **overrides):
    cfg = load_config(overrides={"map.use_gpu": "false", "detector.exclude_recent_count": 0,
                                 "detector.exclude_recent_s": 0.0, "detector.exclude_recent_change": 0.0,
                                 "detector.sequence_length": 1, **overrides})  # single frames, no exclusion
    return PlaceRecognizer(cfg, extractor=SimpleNamespace(dim=DIM, has_local=has_local, device="cpu"))


def _desc(seed):
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


# ---- drop reasons ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc, reason", [
    (ImageTooLarge("big"), "too_large"), (OpenCVError("cv"), "opencv_error"), (cv2.error("resize failed"), "opencv_error"),
    (ImageError("corrupt"), "bad_image"), (DescriptorError("nan"), "bad_descriptor"), (KeyError("x"), "error"),
])
def test_each_exception_maps_to_its_stable_drop_reason(exc, reason):
    assert drop_reason(exc) == reason


def test_drop_reason_names_are_the_documented_ones():
    assert {r for _, r in DROP_REASONS} | {"queue_full", "error"} == \
        {"queue_full", "too_large", "opencv_error", "bad_image", "bad_descriptor", "error"}


def test_summary_reports_drops_by_reason_and_lost_frames():
    pr = _recognizer()
    pr.drop("too_large")
    pr.drop("too_large")
    pr.drop("opencv_error")
    pr.count_lost(3)
    s = pr.stats.summary()
    assert s["dropped"] == {"too_large": 2, "opencv_error": 1} and s["lost_estimate"] == 3


# ---- frames lost before they arrived --------------------------------------------------------------------

def _feed(est, stamps):
    return sum(est.observe(s) for s in stamps)


def test_steady_stream_loses_nothing_even_with_jitter():
    rng = np.random.default_rng(0)
    stamps = np.cumsum(PERIOD * (1 + rng.uniform(-0.2, 0.2, 300))).astype(np.int64)
    assert _feed(GapEstimator(1.5, 30), stamps) == 0


def test_gaps_count_the_frames_missing_in_them():
    stamps = [k * PERIOD for k in range(100)]
    missing = {40, 41, 42, 70}  # three in a row, then one
    assert _feed(GapEstimator(1.5, 30), [s for k, s in enumerate(stamps) if k not in missing]) == 4


def test_repeated_or_backward_stamps_are_not_losses_and_off_means_off():
    est = GapEstimator(1.5, 30)
    stamps = [k * PERIOD for k in range(50)]
    assert _feed(est, stamps + [stamps[-1], stamps[10], stamps[-1] + PERIOD]) == 0
    assert _feed(GapEstimator(0.0, 30), [k * PERIOD for k in range(50) if k % 3]) == 0


def test_no_estimate_before_the_period_is_known():
    assert _feed(GapEstimator(1.5, 30), [0, PERIOD, 10 * PERIOD]) == 0


# ---- ids survive kill -9 ---------------------------------------------------------------------------------

def test_id_floor_file_reserves_ahead_and_settles_exactly(tmp_path):
    floor = IdFloor(tmp_path / "m.vprmap.ids", reserve=10)
    assert floor.read() == 0
    floor.reserve(0)
    assert floor.read() == 10
    for i in range(1, 10):
        floor.reserve(i)
    assert floor.read() == 10  # one write per 10 ids
    floor.reserve(10)
    assert floor.read() == 20
    floor.settle(13)
    assert floor.read() == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.vprmap.ids"]


def test_unreadable_id_floor_file_reads_as_unknown_and_says_so(tmp_path, caplog):
    path = tmp_path / "m.vprmap.ids"
    path.write_text("{not json")
    assert IdFloor(path, 10).read() == 0
    assert "m.vprmap.ids" in caplog.text


def test_recognizer_starts_above_every_id_used_before_a_kill(tmp_path):
    """A child process hands out ids with the floor file and is SIGKILLed mid-stream; a new recognizer
    on the same file starts above every id the child handed out."""
    ids_file = tmp_path / "m.vprmap.ids"
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_pipeline_robustness import _recognizer, _desc
        from vpr_core.id_floor import IdFloor
        pr = _recognizer(**{{"map.id_reserve": 7}})
        pr.track_ids(IdFloor({str(ids_file)!r}, 7))
        for k in range(1000):
            r = pr.process_descriptor(_desc(k), (k + 1) * 10**9, "cam")
            print(r.place_match.query.id, flush=True)
            if k == 22:
                time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env)
    used = []
    for line in proc.stdout:
        used.append(int(line))
        if len(used) == 23:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert used == list(range(23))
    pr = _recognizer()
    pr.track_ids(IdFloor(ids_file, 7))
    first = pr.process_descriptor(_desc(99), 10**12, "cam").place_match.query.id
    assert first > max(used), f"id {first} reused after the kill (ids up to {max(used)} were published)"
    assert first <= max(used) + 1 + 7, "at most one reservation block is skipped"


def test_settled_floor_makes_a_clean_restart_continue_exactly(tmp_path):
    pr = _recognizer()
    floor = IdFloor(tmp_path / "m.ids", 50)
    pr.track_ids(floor)
    for k in range(5):
        pr.process_descriptor(_desc(k), (k + 1) * SEC, "cam")
    pr.settle_ids()
    pr2 = _recognizer()
    pr2.track_ids(IdFloor(tmp_path / "m.ids", 50))
    assert pr2.process_descriptor(_desc(9), 100 * SEC, "cam").place_match.query.id == 5


# ---- run-time settings ---------------------------------------------------------------------------------

def test_run_time_settings_reach_the_detector_and_reranker():
    pr = _recognizer(**{"detector.top_k": 5})
    for k in range(8):
        pr.process_descriptor(_desc(k), (k + 1) * SEC, "cam")
    assert len(pr.process_descriptor(_desc(50), 20 * SEC, "cam").place_match.candidates) == 5
    pr.apply_settings({"detector.top_k": 2, "detector.loop_threshold": 0.0, "detector.temporal_consistency": 1,
                       "detector.min_margin": 0.0})
    r = pr.process_descriptor(_desc(51), 21 * SEC, "cam")
    assert len(r.place_match.candidates) == 2
    assert r.loop_closure is not None, "threshold 0 and no temporal filter: the best candidate closes"
    with pytest.raises(KeyError, match="model.device"):
        pr.apply_settings({"model.device": "cuda"})


def test_run_time_min_inliers_reaches_the_reranker():
    pr = _recognizer(has_local=True, **{"rerank.method": "mnn", "rerank.min_inliers": 12})
    assert pr.detector.reranker.min_inliers == 12
    pr.apply_settings({"rerank.min_inliers": 30})
    assert pr.detector.reranker.min_inliers == 30 and pr.cfg.rerank.min_inliers == 30
