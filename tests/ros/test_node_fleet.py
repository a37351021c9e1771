"""Two robots, two node runs, one shared Milvus map (a `milvus-lite server` in its own process).

Robot A's node maps the corridor's database traversal and is stopped (SIGINT: its queued keyframes are
written on shutdown); robot B's node then drives the query traversal and publishes loop closures with
A's keyframes on the same topic, `match_robot` A, every one at a true place of A's route.
"""
from __future__ import annotations

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from offline_eval.fleet import milvus_lite_server  # noqa: E402
from vpr_core.datasets import load_dataset  # noqa: E402

FRAMES = 111  # the whole corridor: both traversals


@pytest.fixture(scope="module")
def fleet(start_node, client, images, corridor, tmp_path_factory):
    wd = tmp_path_factory.mktemp("fleet")
    with milvus_lite_server(wd / "milvus.db") as uri:
        def overrides(robot: str) -> dict:
            return {"map.backend": "milvus", "map.milvus_uri": uri, "map.robot_id": robot,
                    "map.fleet_publish_period_s": 0.2, "node.diagnostics_period_s": 0.5}
        a = start_node(wd, "robot_a", overrides("A"))
        a_ids = {}  # A's keyframe id -> database index
        for k in range(FRAMES):
            pm = client.send(client.image_msg(images.database(k), "rgb8", "camera_a"), a)
            if pm.is_keyframe:
                a_ids[pm.query_id] = k
        a_rc, a_log = a.stop(), a.log_text()
        b = start_node(wd, "robot_b", overrides("B"))
        b_frames = {}  # B's query id -> query index
        for k in range(FRAMES):
            b_frames[client.send(client.image_msg(images.query(k), "rgb8", "camera_b"), b).query_id] = k
        client.settle(1.0)
        closures, diagnostics = list(client.loop_closures), list(client.diagnostics)
        b_rc, b_log = b.stop(), b.log_text()
    return dict(a_ids=a_ids, a_rc=a_rc, a_log=a_log, b_frames=b_frames, b_rc=b_rc, b_log=b_log, closures=closures,
                diagnostics=diagnostics, positives=[set(p.tolist()) for p in load_dataset(corridor).positives])


def test_both_nodes_exit_cleanly(fleet):
    assert fleet["a_rc"] == 0, fleet["a_log"][-3000:]
    assert fleet["b_rc"] == 0, fleet["b_log"][-3000:]
    assert len(fleet["a_ids"]) >= 100  # keyframes A shared


def test_robot_b_closes_loops_with_robot_a_all_at_true_places(fleet):
    found = [c for c in fleet["closures"] if c.match_robot == "A"]
    assert len(found) >= 20, f"{len(fleet['closures'])} closures:\n{fleet['b_log'][-3000:]}"  # offline: 42
    for c in found:
        assert (c.query_robot, c.query_frame_id, c.match_frame_id) == ("B", "camera_b", "camera_a")
        q, m = fleet["b_frames"][c.query_id], fleet["a_ids"][c.match_id]
        assert m in fleet["positives"][q], f"B's frame {q} closed with A's frame {m}, not a true place"
    assert "fleet loop closure" in fleet["b_log"]


def test_robot_b_reports_the_shared_map_in_diagnostics(fleet):
    last = [{kv.key: kv.value for kv in d.status[0].values} for d in fleet["diagnostics"]
            if d.status and any(kv.key == "fleet.searches" for kv in d.status[0].values)]
    assert last, "no diagnostics with the shared map's counters"
    values = last[-1]
    assert int(values["fleet.searches"]) > 0 and int(values["fleet.search_failures"]) == 0
    assert int(values["fleet.closures"]) >= 1
