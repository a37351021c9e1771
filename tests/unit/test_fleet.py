"""Two robots on one shared Milvus map (a milvus-lite server in its own process): robot B closes loops with
robot A's keyframes on corridor, every one at a true place; robots that never shared a place close none."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from offline_eval.fleet import drive, milvus_lite_server, run  # noqa: E402
from offline_eval.protocol import extract_dataset  # noqa: E402
from vpr_core.config import load_config  # noqa: E402
from vpr_core.datasets import load_dataset  # noqa: E402
from vpr_core.fleet import RemoteRoute  # noqa: E402
from vpr_core.keyframes import Keyframe  # noqa: E402
from vpr_core.pipeline import PlaceRecognizer  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with milvus_lite_server(tmp_path_factory.mktemp("fleet") / "milvus.db") as uri:
        yield uri


# (config, overrides, closures at least): measured 42 / 34 / 11 of 111 (a single robot driving both traversals
# closes 45 / 37 / 11: README "Loop closures")
CASES = [("default", {}, 35), ("default_rerank", {}, 28), ("default", {"detector.sequence_length": 1}, 8)]


@pytest.mark.parametrize("config,overrides,least", CASES, ids=["sequence", "rerank", "single_frame"])
def test_robot_b_closes_loops_with_robot_a_keyframes_all_correct(server, corridor_root, default_extractor,
                                                                 repo_root, config, overrides, least):
    cfg = load_config(repo_root / "config" / f"{config}.yaml",
                      {"map.use_gpu": "false", "map.milvus_collection": f"corridor_{config}_{len(overrides)}",
                       **overrides})
    extractor = default_extractor
    if config == "default_rerank":
        from vpr_core.models import DescriptorExtractor
        extractor = DescriptorExtractor(cfg.model)
    r = run(cfg, str(corridor_root), server, extractor)
    assert r.published_a == r.frames_a == 111  # every database frame is a keyframe, all shared
    assert r.own_closures_b == 0  # B drives its route once: any loop it closes is with A
    assert r.closures >= least, r
    assert r.correct == r.closures, r  # precision first: not one closure at a wrong place
    assert 0 < r.fleet_ms < 1000


def test_robots_that_never_shared_a_place_close_no_loop(server, corridor_root, nordland_root, default_extractor):
    nordland = load_dataset(nordland_root).segment(0, 300)
    corridor = load_dataset(corridor_root)
    a_feats = extract_dataset(default_extractor, nordland, progress=False).database
    b_feats = extract_dataset(default_extractor, corridor, progress=False).queries

    def robot(name: str) -> PlaceRecognizer:
        cfg = load_config(overrides={"map.use_gpu": "false", "map.backend": "milvus", "map.milvus_uri": server,
                                     "map.robot_id": name, "map.milvus_collection": "unrelated"})
        return PlaceRecognizer(cfg, extractor=default_extractor)
    a = robot("A")
    drive(a, a_feats, 0, False, "A")
    assert a.shared.flush(60) and a.shared.stats.published == len(a_feats.global_desc)
    b = robot("B")
    results = drive(b, b_feats, 10**12, False, "B")
    assert all(r.fleet is not None and r.fleet.candidates for r in results)  # A's keyframes were searched
    assert all(c.keyframe.robot == "A" for r in results for c in r.fleet.candidates)
    assert not [r for r in results if r.fleet.closure is not None]
    a.close()
    b.close()


def test_a_remote_route_is_ordered_by_time_and_bounded():
    route = RemoteRoute()
    rows = [(Keyframe(i, 100 * i, robot="A"), np.full(4, i, np.float32)) for i in (5, 3, 9, 7)]
    route.merge(rows, 300, 900)
    assert [kf.id for kf in route.keyframes] == [3, 5, 7, 9]
    assert route.descriptors_at(np.array([0, 3]))[:, 0].tolist() == [3, 9]
    assert route.nearest(np.array([0, 540, 560, 2000])).tolist() == [0, 1, 1, 3]
    assert route.covers(300, 900, 30) and route.covers(400, 800, 30) and not route.covers(200, 900, 30)
    assert not route.covers(300, 900, 0)  # stale: the other robot may have driven on
    route.merge([(Keyframe(5, 500, robot="A"), np.full(4, 5, np.float32))] +
                [(Keyframe(11, 1100, robot="A"), np.full(4, 11, np.float32))], 450, 1100)
    assert [kf.id for kf in route.keyframes] == [3, 5, 7, 9, 11]  # kept once
    route.merge([(Keyframe(20 + i, 2000 + i, robot="A"), np.zeros(4, np.float32)) for i in range(3)], 2000, 2003,
                limit=6)
    assert [kf.id for kf in route.keyframes] == [20, 21, 22]  # over the limit: only the new stretch is kept
