"""The map survives a restart: run 1 maps frames and autosaves on SIGINT, run 2 autoloads the file.

Both runs share one parameters file (map.path set, autoload and autosave on), as a robot would.
Run 1 ends with a frame that is not a keyframe (the same picture twice, keyframe_max_similarity
below 1), so the last id it handed out is not in the saved map.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from vpr_ros.conversions import to_ns

PLACES = (0, 10, 20, 30, 40, 50)  # corridor database pictures mapped in run 1


@pytest.fixture(scope="module")
def restart(start_node, client, images, tmp_path_factory):
    wd = tmp_path_factory.mktemp("restart")
    map_path = wd / "persist.vprmap"
    overrides = {
        "map.path": str(map_path), "map.autoload": True, "map.autosave": True,
        "detector.exclude_recent_count": 1, "detector.exclude_recent_s": 0.0,
        "detector.keyframe_max_similarity": 0.999, "detector.top_k": 5, "detector.exclude_recent_change": 0.0,
    }
    r = SimpleNamespace(map_path=map_path, wd=wd)

    run1 = start_node(wd, "run1", overrides)
    r.run1 = []  # (frame_id, stamp, PlaceMatch)
    for k in PLACES:
        msg = client.image_msg(images.database(k), "rgb8", f"db{k}")
        r.run1.append((f"db{k}", to_ns(msg.header.stamp), client.send(msg, run1)))
    msg = client.image_msg(images.database(PLACES[-1]), "rgb8", "db_again")  # same picture: no new keyframe
    r.run1.append(("db_again", to_ns(msg.header.stamp), client.send(msg, run1)))
    r.run1_rc = run1.stop()
    r.run1_log = run1.log_text()
    r.map_existed = map_path.is_file()

    run2 = start_node(wd, "run2", overrides)
    r.run2 = run2
    r.save = client.save_map(str(wd / "after_restart.vprmap"))
    r.revisits = []  # (place index, PlaceMatch) for pictures of run 1 shown again
    for k in (PLACES[0], PLACES[2]):
        r.revisits.append((k, client.send(client.image_msg(images.database(k), "rgb8", f"again{k}"), run2)))
    yield r
    assert run2.stop() == 0, f"run 2 did not exit cleanly:\n{run2.log_tail()}"


def test_run1_exits_cleanly_and_autosaves(restart):
    r = restart
    assert r.run1_rc == 0, f"SIGINT must end the node with exit code 0:\n{r.run1_log[-3000:]}"
    assert r.map_existed, "autosave did not write map.path on shutdown"
    kf = [pm for _, _, pm in r.run1 if pm.is_keyframe]
    assert len(kf) == len(PLACES) and not r.run1[-1][2].is_keyframe, \
        "keyframe_max_similarity 0.999 keeps distinct pictures and skips the repeated one"
    assert re.search(rf"saved map .*persist\.vprmap: {len(PLACES)} keyframes", r.run1_log), r.run1_log[-2000:]


def test_restart_keeps_every_keyframe(restart):
    r = restart
    assert r.run2.wait_log(rf"loaded map .*persist\.vprmap: {len(PLACES)} keyframes", 1.0), r.run2.log_tail()
    assert r.save.success, r.save.message
    assert r.save.num_keyframes == len(PLACES)

    old = {pm.query_id: (fid, stamp) for fid, stamp, pm in r.run1 if pm.is_keyframe}
    for k, pm in r.revisits:
        assert pm.query_id > max(old), f"run 2 reused a keyframe id of run 1: {pm.query_id} <= {max(old)}"
        best = pm.candidate_ids[0]
        assert old.get(best, (None,))[0] == f"db{k}", \
            f"picture db{k} should find its run-1 keyframe first: {list(pm.candidate_ids)}"
        assert pm.scores[0] > 0.99, list(pm.scores)
        assert (pm.candidate_frame_ids[0], to_ns(pm.candidate_stamps[0])) == old[best], \
            "the loaded keyframe keeps its frame id and stamp"
    assert r.revisits[1][1].query_id > r.revisits[0][1].query_id
    assert r.run2.alive()


def test_restart_never_reuses_any_query_id(restart):
    r = restart
    last_id = max(pm.query_id for _, _, pm in r.run1)
    first_new = r.revisits[0][1].query_id
    assert first_new > last_id, f"run 2's first frame got id {first_new}; run 1 already used ids up to {last_id}"

