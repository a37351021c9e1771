"""What the node promises about its map files and inputs, on the real node:

run A starts on a map path holding an unreadable file and a stale temporary file of a crashed save,
with service paths confined to the map folder, a decoded-size limit, reliable QoS and a 1 s periodic
autosave; it gets frames (with a stamp gap), refused service and parameter calls, oversized frames, and
is killed with SIGKILL. Run B restarts on the same files with the limit off and sensor-data QoS.
"""
from __future__ import annotations

import ast
import re
import struct
import time
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase
from vpr_ros.conversions import to_ns

NODE = "loop_closure_node"
MAX_PIXELS = 200 * 200  # corridor frames are 160x120


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header claims width x height (CRC fixed)."""
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    b = bytearray(buf.tobytes())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def set_params(client, **values):
    """Call the node's set_parameters service; returns the list of SetParametersResult."""
    cli = client.node.create_client(SetParameters, f"/{NODE}/set_parameters")
    try:
        assert cli.wait_for_service(timeout_sec=10.0)
        req = SetParameters.Request(parameters=[Parameter(k.replace("__", "."), value=v).to_parameter_msg()
                                                for k, v in values.items()])
        return list(client.call(cli, req).results)
    finally:
        client.node.destroy_client(cli)


def summary(log: str) -> dict:
    """The counters of the node's shutdown summary line."""
    m = re.search(r"dropped (\{.*?\}), lost \(estimated\) (\d+)", log)
    assert m, f"no shutdown summary in the log:\n{log[-2000:]}"
    return {"dropped": ast.literal_eval(m.group(1)), "lost": int(m.group(2))}


def image_qos(client):
    infos = client.node.get_subscriptions_info_by_topic("/image")
    return [i.qos_profile.reliability for i in infos if i.node_name == NODE]


@pytest.fixture(scope="module")
def runs(start_node, client, images, tmp_path_factory):
    wd = tmp_path_factory.mktemp("safety")
    maps = wd / "maps"
    maps.mkdir()
    map_path = maps / "robot.vprmap"
    unreadable = b"this was a map once, now it is not \x00\xff" * 20
    map_path.write_bytes(unreadable)
    good = MapDatabase(8, "flat", "false")
    good.add(np.ones(8), Keyframe(0, 1))
    partial = good.save(wd / "donor.vprmap").read_bytes()[:200]
    (maps / "robot.vprmap.tmp").write_bytes(partial)  # a save killed half way
    (maps / "notes.txt").write_text("precious notes")
    overrides = {"map.path": str(map_path), "map.autoload": True, "map.autosave": True,
                 "map.autosave_period_s": 1.0, "node.max_image_pixels": MAX_PIXELS, "node.qos": "reliable",
                 "detector.exclude_recent_count": 0, "detector.exclude_recent_s": 0.0, "detector.top_k": 5,
                 "detector.exclude_recent_change": 0.0, "detector.sequence_length": 1,
                 "detector.keyframe_max_similarity": 0.999}  # the same picture twice is not a new keyframe
    r = SimpleNamespace(wd=wd, maps=maps, map_path=map_path, unreadable=unreadable)

    a = start_node(wd, "safety_a", overrides)
    r.a_log_start = a.log_text()
    r.tmp_after_start = (maps / "robot.vprmap.tmp").exists()
    r.aside = sorted(maps.glob("robot.vprmap.unreadable-*"))
    r.qos_a = image_qos(client)
    r.pms = [client.send(client.image_msg(images.database(k * 7), "rgb8", f"a{k}"), a) for k in range(14)]
    # services: confined paths, no overwriting of a foreign file, no crash on odd paths
    r.escape = client.save_map("../escape.vprmap")
    r.outside = client.save_map(str(wd / "outside.vprmap"))
    r.inside = client.save_map("inside.vprmap")
    r.notes = client.save_map("notes.txt")
    r.tilde = client.save_map("~nosuchuser_vpr_test/x.vprmap")
    ivf = MapDatabase(1280, "flat", "false")  # the model's size: only the index type is wrong
    ivf_path = ivf.save(maps / "ivf.vprmap")
    _retag_index(ivf_path, "ivf")
    r.load_ivf = client.load_map("ivf.vprmap")
    r.load_escape = client.load_map("../maps/../escape.vprmap")
    r.alive_after_services = a.alive()
    # run-time parameters
    r.set_top_k = set_params(client, detector__top_k=1)
    r.after_top_k = client.send(client.image_msg(images.database(3), "rgb8", "after_top_k"), a)
    r.set_device = set_params(client, model__device="cuda")
    r.set_threshold = set_params(client, detector__loop_threshold=1.5)
    r.set_path_out = set_params(client, map__path="../elsewhere.vprmap")
    # oversized frames are dropped undecoded, the next good frame is processed
    big = client.image_msg(np.zeros((240, 320, 3), np.uint8), "rgb8", "too_big_raw")
    r.big_stamp = client.publish(big)
    time.sleep(2.2)  # drop warnings are throttled to one per 2 s
    r.bomb_stamp = client.publish(client.compressed_msg(png_claiming(20000, 20000), "png_bomb", fmt="png"))
    r.after_big = client.send(client.image_msg(images.database(5), "rgb8", "after_big"), a)
    r.big_line = a.wait_log(rf"dropped frame at {r.big_stamp} ns \(too_large, 1 so far\).*", 5.0)
    # the periodic autosave writes the map while running; frames that add no keyframe (the same picture
    # again) change only the ids, which the id floor file keeps; then the node is killed
    n_kf = sum(pm.is_keyframe for pm in client.snapshot())
    r.autosaved = a.wait_log(rf"autosaved map .*robot\.vprmap: {n_kf} keyframes", 10.0)
    r.n_kf = n_kf
    r.repeats = [client.send(client.image_msg(images.database(5), "rgb8", f"again{k}"), a) for k in range(3)]
    r.max_id_a = max(pm.query_id for pm in client.snapshot())
    a.proc.proc.kill()
    a.proc.proc.wait()
    r.a_log = a.log_text()
    r.file_after_kill = MapDatabase.load(map_path, use_gpu="false")
    a.stop()

    b = start_node(wd, "safety_b", {**overrides, "node.max_image_pixels": 0, "node.qos": "sensor_data",
                                    "map.autosave_period_s": 0.0})
    r.qos_b = image_qos(client)
    r.b_first = client.send(client.image_msg(images.database(50), "rgb8", "b_first"), b)
    r.cv_stamp = client.publish(client.compressed_msg(png_claiming(70000, 70000), "cv_bomb", fmt="png"))
    r.b_after = client.send(client.image_msg(images.database(51), "rgb8", "b_after"), b)
    r.cv_line = b.wait_log(rf"dropped frame at {r.cv_stamp} ns \((\w+), 1 so far\)", 5.0)
    # a steady 5 Hz stream (long enough for the median period), a gap of 3 frames that never arrived, one more
    for k in range(12):  # one camera: one frame id (gaps are tracked per input and frame id)
        client.send(client.image_msg(images.query(k * 9), "rgb8", "cam_b"), b)
    for _ in range(3):
        client.next_stamp()
    client.send(client.image_msg(images.query(100), "rgb8", "cam_b"), b)
    r.b_rc = b.stop()
    r.b_log = b.log_text()
    r.tmp_files = sorted(p.name for p in maps.glob("*.tmp"))
    yield r


def _retag_index(path, index_type):
    import json
    import zipfile
    with zipfile.ZipFile(path) as zf:
        ms = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(ms["header.json"])
    header["index_type"] = index_type
    ms["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in ms.items():
            zf.writestr(n, d)


def test_stale_temporary_file_is_removed_at_start_and_logged(runs):
    assert not runs.tmp_after_start, "the half-written map of a crashed save is still there"
    assert re.search(r"removed .*robot\.vprmap\.tmp: a temporary file left by an interrupted save", runs.a_log_start)


def test_unreadable_map_is_moved_aside_never_overwritten(runs):
    assert len(runs.aside) == 1, f"expected the unreadable map moved aside, found {runs.aside}"
    assert runs.aside[0].read_bytes() == runs.unreadable, "the unreadable file's bytes must be kept as they were"
    assert f"moved the unreadable map {runs.map_path} to {runs.aside[0]}" in runs.a_log_start, runs.a_log_start[-2000:]


def test_service_paths_are_confined_to_the_map_directory(runs):
    for res in (runs.escape, runs.outside, runs.load_escape):
        assert not res.success and "outside map.directory" in res.message, res.message
    assert not (runs.wd / "escape.vprmap").exists() and not (runs.wd / "outside.vprmap").exists()
    assert runs.inside.success and (runs.maps / "inside.vprmap").is_file(), runs.inside.message


def test_a_foreign_file_is_never_overwritten(runs):
    assert not runs.notes.success and "not a vpr_ros map" in runs.notes.message
    assert (runs.maps / "notes.txt").read_text() == "precious notes"


def test_no_service_call_kills_the_node(runs):
    assert runs.alive_after_services
    assert not runs.tilde.success and "home" in runs.tilde.message, runs.tilde.message
    assert not runs.load_ivf.success and "ivf" in runs.load_ivf.message, runs.load_ivf.message
    assert runs.load_ivf.num_keyframes == runs.inside.num_keyframes > 0, "a failed load keeps the current map"


def test_run_time_parameters_apply_where_safe_and_are_refused_otherwise(runs):
    assert runs.set_top_k[0].successful, runs.set_top_k[0].reason
    assert len(runs.after_top_k.candidate_ids) == 1, "detector.top_k set to 1 at run time"
    assert not runs.set_device[0].successful and "cannot change while the node runs" in runs.set_device[0].reason
    assert not runs.set_threshold[0].successful
    assert "parameter 'detector.loop_threshold' = 1.5 is invalid" in runs.set_threshold[0].reason
    assert not runs.set_path_out[0].successful and "outside map.directory" in runs.set_path_out[0].reason


def test_oversized_frames_are_dropped_undecoded_and_counted(runs):
    assert runs.big_line is not None, runs.a_log[-3000:]
    assert "above node.max_image_pixels" in runs.big_line.group(0)
    assert runs.after_big.query_id > 0, "the node keeps processing after oversized frames"
    stamps = {to_ns(pm.query_stamp) for pm in runs.pms}
    assert runs.big_stamp not in stamps and runs.bomb_stamp not in stamps


def test_periodic_autosave_survives_kill_9(runs):
    assert runs.autosaved is not None, runs.a_log[-3000:]
    assert len(runs.file_after_kill) == runs.n_kf


def test_ids_published_before_kill_9_are_never_reused(runs):
    assert not any(pm.is_keyframe for pm in runs.repeats), "the repeats must change only the ids, not the map"
    assert runs.file_after_kill.next_id <= runs.repeats[0].query_id, "the autosaved map cannot know these ids"
    assert runs.b_first.query_id > runs.max_id_a, \
        f"run B handed out id {runs.b_first.query_id}; run A had published up to {runs.max_id_a} before SIGKILL"
    assert re.search(rf"loaded map .*robot\.vprmap: {runs.n_kf} keyframes", runs.b_log)


def test_opencv_errors_are_counted_drops(runs):
    assert runs.cv_line is not None and runs.cv_line.group(1) == "opencv_error", runs.b_log[-3000:]
    assert runs.b_after.query_id > runs.b_first.query_id


def test_drop_reasons_and_frame_loss_in_the_shutdown_summary(runs):
    assert runs.b_rc == 0
    b = summary(runs.b_log)
    assert b["dropped"] == {"opencv_error": 1}
    assert runs.tmp_files == [], "no temporary file is left after a clean stop"


def test_frame_loss_is_estimated_from_stamp_gaps(runs):
    assert summary(runs.b_log)["lost"] == 3, "three frames were missing from a steady 5 Hz stream"


def test_subscription_qos_follows_the_parameter(runs):
    assert runs.qos_a and all(q == ReliabilityPolicy.RELIABLE for q in runs.qos_a), runs.qos_a
    assert runs.qos_b and all(q == ReliabilityPolicy.BEST_EFFORT for q in runs.qos_b), runs.qos_b


def test_every_qos_name_the_config_accepts_has_a_profile():
    from vpr_core.config import QOS_PROFILES
    from vpr_ros.qos import SUBSCRIPTION_QOS
    assert set(SUBSCRIPTION_QOS) == set(QOS_PROFILES)
