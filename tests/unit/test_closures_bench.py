"""offline_eval.closures: the stage benchmark's replay is the detector's own decision, and the PR
summary it reports is right."""
from __future__ import annotations

import numpy as np
import pytest

from offline_eval.closures import Stage, Stream, published, run_stage, stages
from offline_eval.protocol import stream_stamps
from vpr_core.config import load_config
from vpr_core.metrics import pr_curve
from vpr_core.pipeline import PlaceRecognizer


def _stream(dim: int, n: int = 60, seed: int = 0) -> Stream:
    """A route of n places driven twice; the second lap's frames are noisy, some heavily."""
    rng = np.random.default_rng(seed)
    route = rng.normal(size=(n, dim)).astype(np.float32)
    noise = rng.uniform(0.2, 1.6, size=(n, 1)).astype(np.float32)  # per-frame difficulty
    lap2 = route + noise * rng.normal(size=(n, dim)).astype(np.float32) * np.linalg.norm(route, axis=1,
                                                                                         keepdims=True) / np.sqrt(dim)
    frames = [(d, None, float("nan")) for d in np.concatenate([route, lap2])]
    return Stream(frames, lambda q, m: q >= n and 0 <= m < n and abs(m - (q - n)) <= 1, n)


@pytest.mark.parametrize("overrides", [
    {"detector.sequence_length": 1, "detector.loop_threshold": 0.5, "detector.temporal_consistency": 2},
    {"detector.sequence_length": 5, "detector.sequence_threshold": 1.0},
    {"detector.sequence_length": 1, "detector.loop_threshold": 0.4, "detector.min_margin": 0.05},
], ids=["single", "sequence", "margin"])
def test_replayed_decision_equals_the_detector_run_at_the_configured_threshold(default_extractor, overrides):
    dim = default_extractor.dim
    stream = _stream(dim)
    base = load_config(overrides={"map.use_gpu": "false", "detector.exclude_recent_count": 5,
                                  "detector.exclude_recent_s": 0.0, **overrides})
    result = run_stage(base, Stage("x", {}, "score"), stream, default_extractor, progress=False)
    # the real thing: the detector with the thresholds closed, every frame through it
    rec = PlaceRecognizer(load_config(overrides={"map.use_gpu": "false", "detector.exclude_recent_count": 5,
                                                 "detector.exclude_recent_s": 0.0, **overrides}),
                          extractor=default_extractor)
    live = []
    for i, ((d, _, _), t) in enumerate(zip(stream.features, stream_stamps(len(stream.features)))):
        lc = rec.process_descriptor(d, t, "camera").loop_closure
        if lc is not None:
            live.append((i, lc.match.id))
    assert live, "the synthetic stream must produce closures for this test to mean anything"
    assert result.published == len(live)
    assert result.correct == sum(stream.is_true(f, c) for f, c in live)
    assert sum(result.rejections.values()) == len(stream.features) - len(live)


def test_published_applies_temporal_consistency_like_the_detector():
    recs = [(0, 5, 0.9, 0.1, True), (1, 6, 0.9, 0.1, True), (2, 30, 0.95, 0.1, True), (3, 31, 0.95, 0.1, True),
            (4, 32, 0.5, 0.1, True), (5, 33, 0.95, 0.1, False), (6, 34, 0.95, 0.1, True), (7, 35, 0.95, 0.1, True)]
    assert published(recs, tc=2, window=2) == [(1, 6), (3, 31), (4, 32), (7, 35)]
    assert published(recs, tc=2, window=2, key=2, threshold=0.8) == [(1, 6), (3, 31), (7, 35)]
    assert published(recs, tc=1, window=2, key=2, threshold=0.92) == [(2, 30), (3, 31), (6, 34), (7, 35)]


def test_pr_summary():
    s = pr_curve([1.0, 1.0, 0.8, 0.5], [0.1, 0.4, 0.6, 0.7])
    assert s.recall_at_100 == pytest.approx(0.4) and s.recall_at_99 == pytest.approx(0.4)
    assert 0.4 < s.auc < 0.7
    assert pr_curve([0.5], [0.2]).recall_at_100 == 0.0
    with pytest.raises(ValueError):
        pr_curve([1.0], [0.1, 0.2])


def test_stages_add_one_part_each():
    cfg = load_config()
    names = [s.name for s in stages(cfg, 20)]
    assert names == ["threshold", "+consistency", "+window", "+sequence"]
    cfg.rerank.method = "mnn"
    st = stages(cfg, 20)
    assert [s.name for s in st] == ["threshold", "+consistency", "+window", "+rerank", "+sequence"]
    assert st[0].overrides["detector.exclude_recent_change"] == 0.0 and st[0].overrides["rerank.method"] == "none"
    assert st[-1].overrides["detector.sequence_length"] == 20 and "rerank.method" not in st[-1].overrides
    assert st[-1].overrides["detector.exclude_recent_change"] == cfg.detector.exclude_recent_change
