"""The fleet's shared map on Milvus (milvus-lite): robots find each other's keyframes and local features,
never their own; another model's or size's collection is refused; a store that goes down costs counted,
retried writes and empty searches, and loses nothing; damaged rows are skipped and counted."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from offline_eval.fleet import milvus_lite_server  # noqa: E402
from vpr_core.config import ConfigError  # noqa: E402
from vpr_core.keyframes import Keyframe  # noqa: E402
from vpr_core.local_features import LocalFeatureError, LocalFeatures, LocalFeatureStore  # noqa: E402
from vpr_core.shared_map import SharedMapError, build_shared_map, pack_local, unpack_local  # noqa: E402

DIM, LDIM = 64, 16


def _local(seed: int, n: int = 300) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n, LDIM)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return LocalFeatures(rng.uniform(0, 600, (n, 2)).astype(np.float32), d.astype(np.float16), (480, 640))


def _descs(n: int, seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _robot(uri: str, name: str, **kw):
    args = dict(uri=uri, collection="fleet", dim=DIM, model="m@0123456789abcdef", local_dim=LDIM,
                max_local_features=300, publish_period_s=0.05, timeout_s=5.0)
    args.update(kw)
    return build_shared_map("milvus", robot=name, **args)


@pytest.fixture
def lite(tmp_path):
    """A milvus-lite store inside this process (a folder ending in .db)."""
    return str(tmp_path / "fleet.db")


# ---- local features as text ------------------------------------------------------------------------
def test_local_features_survive_the_text_round_trip_exactly():
    lf = _local(1)
    back = unpack_local(pack_local(lf), LocalFeatureStore(LDIM))
    assert np.array_equal(back.xy, lf.xy) and np.array_equal(back.desc, lf.desc) and back.image_hw == (480, 640)


@pytest.mark.parametrize("damage", ["truncate", "not_base64", "magic", "nan", "other_dim"])
def test_damaged_local_feature_text_is_refused(damage):
    text = pack_local(_local(2))
    store = LocalFeatureStore(LDIM)
    if damage == "truncate":
        text = text[:len(text) // 2]
    elif damage == "not_base64":
        text = text[:100] + "!!" + text[102:]
    elif damage == "magic":
        import base64
        raw = bytearray(base64.b64decode(text))
        raw[:4] = b"XXXX"
        text = base64.b64encode(bytes(raw)).decode()
    elif damage == "nan":
        lf = _local(2)
        lf.desc[3, 2] = np.nan
        text = pack_local(lf)
    else:
        store = LocalFeatureStore(LDIM * 2)
    with pytest.raises(LocalFeatureError):
        unpack_local(text, store)


# ---- two robots, one collection --------------------------------------------------------------------
def test_robots_find_each_others_keyframes_and_features_never_their_own(lite):
    a, b = _robot(lite, "A"), _robot(lite, "B")
    try:
        d = _descs(40)
        for i in range(30):
            pose = [float(i), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] if i % 2 else None
            a.publish(Keyframe(i, i * 10**8, "cam_a", pose, session=2, robot="A"), d[i], _local(i) if i % 3 else None)
        b.publish(Keyframe(0, 5, "cam_b", robot="B"), d[35], _local(99))
        assert a.flush(30) and b.flush(30)
        assert a.stats.published == 30 and b.stats.published == 1
        hits = b.search(d[7], 3)
        assert [h.keyframe.robot for h in hits] == ["A"] * 3 and hits[0].id == 7 and hits[0].score == pytest.approx(1, abs=1e-5)
        kf = hits[0].keyframe
        assert (kf.stamp_ns, kf.frame_id, kf.session, kf.pose) == (7 * 10**8, "cam_a", 2, [7.0, 0, 0, 0, 0, 0, 1])
        assert b.search(d[8], 1)[0].keyframe.pose is None
        assert [h.keyframe.robot for h in a.search(d[35], 5)] == ["B"]  # A sees only B's one keyframe
        feats = b.local_features([h.keyframe for h in b.search(d[4], 1) + b.search(d[3], 1)], LocalFeatureStore(LDIM))
        assert np.array_equal(feats[0].desc, _local(4).desc) and np.array_equal(feats[0].xy, _local(4).xy)
        assert feats[1] is None  # keyframe 3 was published without local features
    finally:
        a.close()
        b.close()


def test_a_collection_of_another_model_or_size_is_refused(lite):
    _robot(lite, "A").close()
    with pytest.raises(SharedMapError, match="descriptors of model"):
        c = _robot(lite, "C", model="other@fedcba9876543210")
        c.publish(Keyframe(0, 0, robot="C"), _descs(1)[0])  # not reached: the first row decides
    with pytest.raises(SharedMapError, match="64-D descriptors"):
        _robot(lite, "C", dim=32)
    with pytest.raises(SharedMapError, match="room for"):
        _robot(lite, "C", max_local_features=4000)


def test_the_first_robot_fixes_the_model_for_everyone(lite):
    a = _robot(lite, "A")
    a.publish(Keyframe(0, 0, robot="A"), _descs(1)[0])
    assert a.flush(30)
    a.close()
    with pytest.raises(SharedMapError, match="m@0123456789abcdef"):
        _robot(lite, "C", model="other@fedcba9876543210")


@pytest.mark.parametrize("robot", ["", "1abc", "a b", "x" * 65, "robot/1"])
def test_a_robot_needs_a_partition_name(lite, robot):
    with pytest.raises(SharedMapError, match="robot_id"):
        _robot(lite, robot)


def test_an_address_that_is_neither_a_server_nor_a_lite_folder_is_refused(tmp_path):
    with pytest.raises(SharedMapError, match="milvus_uri"):
        _robot(str(tmp_path / "fleet"), "A")


def test_unreachable_server_at_start_is_a_clear_error():
    with pytest.raises(SharedMapError, match="cannot reach Milvus"):
        _robot("http://127.0.0.1:9", "A", timeout_s=2.0)


def test_damaged_rows_of_another_writer_are_skipped_and_counted(lite):
    a, b = _robot(lite, "A"), _robot(lite, "B")
    try:
        d = _descs(3)
        a.publish(Keyframe(0, 0, robot="A"), d[0], _local(0))
        a.publish(Keyframe(1, 1, robot="A"), d[1], _local(1))
        assert a.flush(30)
        client = a._client  # another writer, as the store's own API sees it
        client.upsert("fleet", [{"key": "A:1", "robot": "A", "session": 0, "kid": 1, "stamp_ns": 1, "frame_id": "",
                                 "pose": [1.0, 2.0, 3.0], "model": a.model, "has_local": True,
                                 "local_0": "garbage", "vector": d[1].tolist()}], partition_name="robot_A")
        client.upsert("fleet", [{"key": "A:0", "robot": "A", "session": 0, "kid": 0, "stamp_ns": 0, "frame_id": "",
                                 "pose": [], "model": a.model, "has_local": True,
                                 "local_0": "garbage", "vector": d[0].tolist()}], partition_name="robot_A")
        client.flush("fleet")
        hits = b.search(d[1], 2)
        assert [h.id for h in hits] == [0]  # keyframe 1's pose is 3 numbers: skipped
        assert b.local_features([hits[0].keyframe], LocalFeatureStore(LDIM)) == [None]
        assert b.stats.bad_rows == 2
    finally:
        a.close()
        b.close()


# ---- a store that goes down --------------------------------------------------------------------------
def test_a_store_that_goes_down_loses_nothing_and_counts_every_failure(tmp_path):
    data = tmp_path / "server.db"
    with milvus_lite_server(data) as uri:
        port = int(uri.rsplit(":", 1)[1])
        a, b = _robot(uri, "A", timeout_s=2.0), _robot(uri, "B", timeout_s=2.0)
        d = _descs(20)
        a.publish(Keyframe(0, 0, robot="A"), d[0], _local(0))
        assert a.flush(30) and len(b.search(d[0], 1)) == 1
    # the server is gone: frames go on, writes are retried, searches find nothing (counted)
    for i in range(1, 10):
        a.publish(Keyframe(i, i, robot="A"), d[i], _local(i))
    assert not a.flush(3.0)
    deadline = time.monotonic() + 60  # a write to a dead server fails after pymilvus's own retries
    while a.stats.write_failures < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.stats.write_failures >= 1 and a.stats.pending == 9 and a.stats.published == 1
    b._others = (float("inf"), ["robot_A"])  # as listed before the outage: the search itself must fail
    assert b.search(d[0], 1) == [] and b.stats.search_failures == 1
    with milvus_lite_server(data, port=port):  # back, with its data
        assert a.flush(60)
        assert a.stats.published == 10 and a.stats.pending == 0 and a.stats.dropped == 0
        b._others = (-float("inf"), [])
        assert sorted(h.id for h in b.search(d[0], 20)) == list(range(10))
        a.close()
        b.close()


def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path):
    with milvus_lite_server(tmp_path / "server.db") as uri:
        a = _robot(uri, "A", timeout_s=2.0)
    a._max_pending = 5
    for i in range(12):
        a.publish(Keyframe(i, i, robot="A"), _descs(12)[i])
    assert not a.flush(2.0)
    assert a.stats.dropped >= 7 and a.stats.pending <= 5
    a.close(timeout_s=1.0)


# ---- configuration -----------------------------------------------------------------------------------
def test_the_milvus_backend_needs_an_address_and_a_robot_name(default_config, default_extractor, lite):
    from vpr_core.pipeline import PlaceRecognizer
    default_config.map.backend = "milvus"
    with pytest.raises(ConfigError, match="milvus_uri"):
        PlaceRecognizer(default_config, extractor=default_extractor)
    default_config.map.milvus_uri = lite
    with pytest.raises(ConfigError, match="robot_id"):
        PlaceRecognizer(default_config, extractor=default_extractor)
    default_config.map.robot_id = "A"
    rec = PlaceRecognizer(default_config, extractor=default_extractor)
    assert rec.shared is not None and rec.shared.robot == "A" and rec.detector.fleet is not None
    rec.close()


@pytest.mark.parametrize("key,value", [("map.backend", "redis"), ("map.fleet_top_k", 0),
                                       ("map.milvus_collection", "9lives"), ("map.fleet_publish_period_s", 0.0)])
def test_bad_fleet_settings_are_config_errors(key, value):
    from vpr_core.config import load_config
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config(overrides={key: value})


def test_a_long_queue_is_written_in_bounded_batches(lite):
    """After an outage thousands may wait: they go in batches of at most MAX_BATCH, none lost."""
    from vpr_core.shared_map import MAX_BATCH
    a = _robot(lite, "A", publish_period_s=30.0)  # a long period: only full batches and flush cut it short
    sizes = []
    write = a._write
    a._write = lambda batch: (sizes.append(len(batch)), write(batch))[1]
    d = _descs(200, seed=3)
    for i in range(200):
        a.publish(Keyframe(i, i, robot="A"), d[i])
    assert a.flush(60) and a.stats.published == 200
    assert max(sizes) <= MAX_BATCH and sum(sizes) == 200
    a.close()
