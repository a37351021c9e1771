"""Two robots on one shared Milvus map (a milvus-lite server in its own process): robot B closes loops with
robot A's keyframes on corridor, every one at a true place; robots that never shared a place close none."""
from __future__ import annotations

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from offline_eval.direct import extract_dataset  # noqa: E402
from offline_eval.fleet import drive, milvus_lite_server, run  # noqa: E402
from vpr_core.config import load_config  # noqa: E402
from vpr_core.datasets import load_dataset  # noqa: E402
from vpr_core.pipeline import PlaceRecognizer  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with milvus_lite_server(tmp_path_factory.mktemp("fleet") / "milvus.db") as uri:
        yield uri


@pytest.mark.parametrize("config", ["default", "default_rerank"])
def test_robot_b_closes_loops_with_robot_a_keyframes_all_correct(server, corridor_root, default_extractor,
                                                                 repo_root, config):
    cfg = load_config(repo_root / "config" / f"{config}.yaml",
                      {"map.use_gpu": "false", "map.milvus_collection": f"corridor_{config}"})
    extractor = default_extractor
    if config == "default_rerank":
        from vpr_core.models import DescriptorExtractor
        extractor = DescriptorExtractor(cfg.model)
    r = run(cfg, str(corridor_root), server, extractor)
    assert r.published_a == r.frames_a == 111  # every database frame is a keyframe, all shared
    assert r.own_closures_b == 0  # B drives its route once: any loop it closes is with A
    assert r.closures >= 6, r
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
