"""One run of the real node shared by the stream tests: images in, PlaceMatch/LoopClosure out, every
input encoding, bad input, and the map services.

The node runs with no temporal filter and a loop threshold inside the range of corridor scores
(descriptor cosines there are ~0.83-0.93), so that frames on both sides of the threshold occur and
the closure contract can be checked frame by frame; `exclude_recent_count` is 3 and time exclusion is off,
so the number of candidates a frame gets is exactly predictable from the keyframes before it.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from vpr_core.images import encode_jpeg
from vpr_ros.conversions import to_ns

TOP_K = 5
EXCLUDE_RECENT = 3
LOOP_THRESHOLD = 0.87  # splits the corridor frames: some closures, some not


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stream")


@pytest.fixture(scope="module")
def node(start_node, workdir, images):  # `images` first: skip before starting a node when data is absent
    run = start_node(workdir, "stream", {
        "detector.top_k": TOP_K,
        "detector.exclude_recent_count": EXCLUDE_RECENT,
        "detector.exclude_recent_s": 0.0,
        "detector.loop_threshold": LOOP_THRESHOLD,
        "detector.temporal_consistency": 1,
        "detector.sequence_length": 1,  # single-frame decision: this module tests the plumbing
        "detector.exclude_recent_change": 0.0,
        "map.path": str(workdir / "configured.vprmap"),
        "map.autoload": False,
        "map.autosave": False,
    })
    yield run
    assert run.stop() == 0, f"node exited with an error:\n{run.log_tail()}"


class MapModel:
    """What the node's map must hold when it handles a frame, rebuilt from everything the node
    published in this run (PlaceMatches arrive in processing order): keyframe ids in insertion order
    and id -> (stamp, frame_id). Built from the record, so one failing test does not derail the next."""

    def __init__(self, client, pm) -> None:
        self.order: list = []
        self.info: dict = {}
        for m in client.snapshot():
            if m is pm:
                break
            if m.is_keyframe:
                self.order.append(m.query_id)
                self.info[m.query_id] = (to_ns(m.query_stamp), m.header.frame_id)
        else:
            raise AssertionError("the PlaceMatch is not in the client's record")


def check_against_map(client, pm, stamp: int, frame_id: str, check_pm) -> MapModel:
    """Structure, stamp, frame id, recent-keyframe exclusion and candidate metadata of one PlaceMatch."""
    check_pm(pm, TOP_K)
    assert to_ns(pm.query_stamp) == stamp
    assert pm.header.frame_id == frame_id
    mm = MapModel(client, pm)
    ids = list(pm.candidate_ids)
    excluded = set(mm.order[-EXCLUDE_RECENT:])
    assert not excluded & set(ids), f"recent keyframes {excluded} were not excluded: {ids}"
    assert len(ids) == min(TOP_K, max(0, len(mm.order) - EXCLUDE_RECENT)), \
        f"{len(ids)} candidates with {len(mm.order)} keyframes in the map"
    for cid, cstamp, cframe in zip(ids, pm.candidate_stamps, pm.candidate_frame_ids):
        assert cid in mm.info, f"candidate {cid} is not a keyframe the node announced"
        assert (to_ns(cstamp), cframe) == mm.info[cid], "candidate stamp/frame id must be the keyframe's"
    if mm.info:
        assert pm.query_id > max(mm.info), "query ids must increase"
    return mm


def test_images_in_place_match_out(node, client, images, check_pm):
    n = 15
    sent = []  # (phase, index, stamp, frame_id, PlaceMatch)
    for phase, split in (("map", "database"), ("revisit", "query")):
        for i in range(n):
            frame_id = f"{split}_{i}"
            msg = client.image_msg(images.image(split, i), "rgb8", frame_id)
            stamp = to_ns(msg.header.stamp)
            pm = client.send(msg, node)
            assert pm.is_keyframe, "mapping mode adds every frame (keyframe policy: keep all)"
            mm = check_against_map(client, pm, stamp, frame_id, check_pm)
            sent.append((phase, i, stamp, frame_id, pm, mm))
    client.settle()
    for phase, i, stamp, *_ in sent:
        assert len(client.matches_for(stamp)) == 1, f"{phase} frame {i}: expected exactly one PlaceMatch"

    # Every frame whose best candidate reaches the threshold is a closure (temporal_consistency 1),
    # and the closure repeats that best candidate.
    db_ids = {pm.query_id: i for phase, i, _, _, pm, _ in sent if phase == "map"}
    revisit_closures = []
    tops = [pm.scores[0] for *_, pm, _ in sent if pm.scores]
    assert min(tops) < LOOP_THRESHOLD <= max(tops), f"threshold test is vacuous: best scores {tops}"
    for phase, i, stamp, frame_id, pm, mm in sent:
        closures = client.closures_for(stamp)
        over = bool(pm.scores) and pm.scores[0] >= LOOP_THRESHOLD
        assert len(closures) == int(over), f"{phase} frame {i}: best score {list(pm.scores)[:1]}, " \
                                           f"{len(closures)} closures"
        for lc in closures:
            assert lc.query_id == pm.query_id and to_ns(lc.query_stamp) == stamp
            assert lc.query_frame_id == frame_id and lc.header.frame_id == frame_id
            assert lc.match_id == pm.candidate_ids[0]
            assert lc.score == pytest.approx(pm.scores[0], abs=1e-6)
            assert (to_ns(lc.match_stamp), lc.match_frame_id) == mm.info[lc.match_id], \
                "match_stamp/match_frame_id must be those of the matched keyframe"
            assert lc.match_id < lc.query_id
            assert lc.verification_method in ("none", "mnn", "degensac")
            if phase == "revisit" and lc.match_id in db_ids:
                revisit_closures.append((i, db_ids[lc.match_id]))
    assert revisit_closures, "no loop closure from a revisit frame to a mapped database keyframe"
    # query i shows database i; the dataset's tolerance is +-2 places
    assert any(abs(q - d) <= 2 for q, d in revisit_closures), f"no closure at the right place: {revisit_closures}"


def test_every_encoding_gives_a_place_match(node, client, images, check_pm):
    rgb = images.database(40)

    def send(msg, frame_id):
        stamp = to_ns(msg.header.stamp)
        pm = client.send(msg, node)
        check_against_map(client, pm, stamp, frame_id, check_pm)
        assert pm.is_keyframe
        return pm

    first = send(client.image_msg(rgb, "rgb8", "enc_rgb8"), "enc_rgb8")
    for k in (60, 70, 80):  # push the rgb8 keyframe out of the "recent" exclusion window
        send(client.image_msg(images.database(k), "rgb8", f"filler_{k}"), f"filler_{k}")

    bgr = send(client.image_msg(rgb, "bgr8", "enc_bgr8"), "enc_bgr8")
    assert bgr.candidate_ids[0] == first.query_id, "bgr8 of the picture must find its rgb8 keyframe first"
    assert bgr.scores[0] > 0.999, f"rgb8 and bgr8 of one picture must give the same descriptor: {bgr.scores[0]}"

    jpeg = send(client.compressed_msg(encode_jpeg(rgb, 95), "enc_jpeg"), "enc_jpeg")
    assert jpeg.candidate_ids[0] == first.query_id  # bgr8 twin is still inside the exclusion window
    assert jpeg.scores[0] > 0.98, f"JPEG q95 of the picture should score ~1 against it: {jpeg.scores[0]}"

    mono = send(client.image_msg(rgb, "mono8", "enc_mono8"), "enc_mono8")
    assert mono.candidate_ids[0] == first.query_id, "grey version of the picture should still find it first"
    assert 0.8 < mono.scores[0] < 0.999, f"mono8 loses colour, so not identical but close: {mono.scores[0]}"

    # an empty header.frame_id gets node.default_frame_id
    msg = client.image_msg(images.database(90), "rgb8", "")
    pm = client.send(msg, node)
    assert pm.header.frame_id == "camera"
    check_against_map(client, pm, to_ns(msg.header.stamp), "camera", check_pm)


def test_bad_input_never_kills_the_node(node, client, images, check_pm):
    good = images.database(100)

    def good_frame(tag):
        msg = client.image_msg(good, "rgb8", tag)
        pm = client.send(msg, node)
        check_against_map(client, pm, to_ns(msg.header.stamp), tag, check_pm)
        return pm

    unknown = client.image_msg(good, "rgb8", "bad_encoding")
    unknown.encoding = "foo"
    short = client.image_msg(good, "rgb8", "bad_short")
    short.data = bytes(short.data[: short.step * short.height // 2])
    garbage = client.compressed_msg(os.urandom(5000), "bad_jpeg")
    bad = [(unknown, r"unsupported image encoding 'foo'"),
           (short, r"buffer holds \d+ bytes"),
           (garbage, r"could not be decoded")]
    for k, (msg, why) in enumerate(bad):
        if k:
            time.sleep(2.2)  # the node throttles its drop warning to one per 2 s
        stamp = client.publish(msg)
        good_frame(f"after_bad_{k}")  # one worker, FIFO: the bad frame was handled before this one
        assert client.matches_for(stamp) == [], "a frame that cannot be decoded must not produce a PlaceMatch"
        assert node.alive(), f"the node died on bad input:\n{node.log_tail()}"
        line = node.wait_log(rf"dropped frame at {stamp} ns \(bad_image, \d+ so far\): .*")
        assert line is not None, f"the log does not mention the dropped frame {stamp}:\n{node.log_tail()}"
        assert re.search(why, line.group(0)), line.group(0)
    assert node.alive()


def test_map_services(node, client, images, check_pm, workdir):
    # a marker picture, then enough other keyframes that it is outside the "recent" window when saved
    for k, tag in ((45, "svc_marker"), (106, "svc_fill1"), (107, "svc_fill2"), (108, "svc_fill3")):
        msg = client.image_msg(images.database(k), "rgb8", tag)
        pm = client.send(msg, node)
        check_against_map(client, pm, to_ns(msg.header.stamp), tag, check_pm)
        assert pm.is_keyframe
    marker = [m.query_id for m in client.keyframes() if m.header.frame_id == "svc_marker"]
    n_kf = len(client.keyframes())  # every keyframe the node announced in this run

    saved = workdir / "saved.vprmap"
    res = client.save_map(str(saved))
    assert res.success, res.message
    assert res.num_keyframes == n_kf
    assert saved.is_file() and not saved.with_name(saved.name + ".tmp").exists()

    res = client.save_map("")  # empty path: the configured map.path
    assert res.success and res.num_keyframes == n_kf, res.message
    assert Path(node.cfg.map.path).is_file()

    blocker = workdir / "a_file"
    blocker.write_text("not a directory")
    res = client.save_map(str(blocker / "sub" / "map.vprmap"))
    assert not res.success and res.message, "saving under a regular file cannot succeed"

    corrupt = workdir / "corrupt.vprmap"
    corrupt.write_bytes(b"this is not a map\x00\xff" * 50)
    truncated = workdir / "truncated.vprmap"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    for bad in (corrupt, truncated):
        res = client.load_map(str(bad))
        assert not res.success, f"loading {bad.name} must fail"
        assert re.search(r"corrupt|truncated", res.message), res.message
        assert res.num_keyframes == n_kf, "a failed load must keep the current map"
    res = client.load_map(str(workdir / "missing.vprmap"))
    assert not res.success and res.num_keyframes == n_kf and "not found" in res.message

    # the map still works after the failed loads: a new frame is searched against all keyframes
    msg = client.image_msg(images.database(105), "rgb8", "after_failed_load")
    pm = client.send(msg, node)
    check_against_map(client, pm, to_ns(msg.header.stamp), "after_failed_load", check_pm)
    assert pm.is_keyframe

    res = client.load_map(str(saved))
    assert res.success, res.message
    assert res.num_keyframes == n_kf, "the saved map holds exactly the keyframes announced before saving"

    # after the load ids keep increasing (no reuse of the id of the frame added after saving) and
    # the loaded keyframes are found again: the marker picture matches its keyframe
    msg = client.image_msg(images.database(45), "rgb8", "after_load")
    pm = client.send(msg, node)
    check_pm(pm, TOP_K)
    assert pm.query_id > max(m.query_id for m in client.snapshot() if m is not pm), \
        "ids must not be reused after a load"
    assert list(pm.candidate_ids[:1]) == marker and pm.scores[0] > 0.999, (list(pm.candidate_ids), list(pm.scores))
    res = client.save_map(str(workdir / "after_load.vprmap"))
    assert res.success and res.num_keyframes == n_kf + 1
    assert node.alive()
