"""The real node with two-stage re-ranking (config/default_rerank.yaml's local head and mnn settings):
closures carry their verification, unverified candidates never close a loop, and the saved map holds
every keyframe's local features.

The loop threshold is low (0.5) so that the global score never decides alone: whether a frame closes
a loop depends on the local verification (the gate itself is unit-tested in tests/unit/test_rerank.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from vpr_core.config import load_config
from vpr_core.map_database import MapDatabase
from vpr_ros.conversions import to_ns

REPO_ROOT = Path(__file__).resolve().parents[2]
RERANK = load_config(REPO_ROOT / "config" / "default_rerank.yaml")
N_MAP, N_REVISIT = 12, 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rerank")


@pytest.fixture(scope="module")
def node(start_node, workdir, images):
    run = start_node(workdir, "rerank", {
        "model.local_head": RERANK.model.local_head,
        "rerank.method": RERANK.rerank.method,
        "rerank.top_k": 20,
        "rerank.match_threshold": RERANK.rerank.match_threshold,
        "rerank.min_inliers": RERANK.rerank.min_inliers,
        "detector.top_k": 5,
        "detector.exclude_recent_count": 3,
        "detector.exclude_recent_s": 0.0,
        "detector.loop_threshold": 0.5,
        "detector.temporal_consistency": 1,
        "detector.sequence_length": 1,  # single-frame decision: this module tests the verification plumbing
        "detector.exclude_recent_change": 0.0,
        "map.path": str(workdir / "rerank.vprmap"),
        "map.autoload": False,
        "map.autosave": False,
    })
    yield run
    assert run.stop() == 0, f"node exited with an error:\n{run.log_tail()}"


@pytest.fixture(scope="module")
def stream(node, client, images):
    """Map N_MAP corridor database frames, then revisit the same stretch with the query frames."""
    sent = []
    for split, n in (("database", N_MAP), ("query", N_REVISIT)):
        for i in range(n):
            msg = client.image_msg(images.image(split, i), "rgb8", f"{split}_{i}")
            sent.append((split, i, to_ns(msg.header.stamp), client.send(msg, node)))
    client.settle()
    return sent


def test_node_logs_that_it_reranks(node, stream):
    assert node.wait_log(r"re-ranking mnn of the top 20, closures need >= \d+ mutual matches"), node.log_tail()


def test_every_closure_is_verified_by_local_features(node, client, stream):
    closures = [lc for _, _, stamp, _ in stream for lc in client.closures_for(stamp)]
    assert closures, f"no loop closure published with re-ranking on:\n{node.log_tail()}"
    for lc in closures:
        assert lc.verification_method == "mnn"
        assert lc.verified
        assert lc.num_matches >= RERANK.rerank.min_inliers
        assert lc.num_inliers == -1, "mnn does not estimate geometry"
        assert not lc.fundamental_valid and not lc.homography_valid
    for _, _, stamp, pm in stream:
        for lc in client.closures_for(stamp):
            assert lc.match_id == pm.candidate_ids[0], "a closure names the best re-ranked candidate"


def test_revisits_close_at_the_right_place(client, stream):
    db_ids = {pm.query_id: i for split, i, _, pm in stream if split == "database"}
    pairs = [(i, db_ids[lc.match_id]) for split, i, stamp, _ in stream if split == "query"
             for lc in client.closures_for(stamp) if lc.match_id in db_ids]
    assert pairs, "no revisit frame closed a loop with a mapped keyframe"
    wrong = [(q, d) for q, d in pairs if abs(q - d) > 2]  # the dataset's tolerance is +-2 places
    assert len(wrong) <= len(pairs) // 4, f"too many closures at the wrong place: {wrong} of {pairs}"


def test_saved_map_holds_every_keyframes_local_features(client, stream, workdir):
    path = workdir / "saved_rerank.vprmap"
    res = client.save_map(str(path))
    assert res.success, res.message
    db = MapDatabase.load(path)
    assert len(db) == res.num_keyframes == len(client.keyframes())
    assert len(db.local) == len(db), "every keyframe keeps its local features"
    lf = db.local_features(next(iter(db.keyframes)))
    assert lf.desc.dtype.name == "float16" and 0 < len(lf) <= RERANK.model.max_local_features
