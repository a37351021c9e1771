"""Local features in the map: LocalFeatureStore validation, MapDatabase.add with local features, the
version-2 map file (local.npz, its checksum, v1 compatibility), and PlaceRecognizer with re-ranking."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from vpr_core.config import ConfigError, load_config
from vpr_core.keyframes import Keyframe
from vpr_core.local_features import LocalFeatureError, LocalFeatures, LocalFeatureStore
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.pipeline import PlaceRecognizer

DIM = 32  # global descriptors
LDIM = 16  # local descriptors
SEC = 1_000_000_000


def _unit(n, dim, seed):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _local(seed, n=20, dim=LDIM, hw=(120, 160)):
    xy = np.random.default_rng(seed).uniform(0, 160, (n, 2)).astype(np.float32)
    return LocalFeatures(xy, _unit(n, dim, seed + 1000).astype(np.float16), hw)


def _map(n=6):
    """Keyframes 0..n-1; the odd ones have no local features (20 each for the even ones)."""
    db = MapDatabase(DIM, "flat", "false")
    for i, d in enumerate(_unit(n, DIM, seed=0)):
        db.add(d, Keyframe(i, i * SEC, "cam"), _local(i) if i % 2 == 0 else None)
    return db


def _state(db):
    return (len(db), {k: dict(vars(kf)) for k, kf in db.keyframes.items()}, sorted(db.local.ids()), db.local.dim,
            [c.id for c in db.search(db.descriptors([0])[0], 3)])


# ---- validation: bad local features change nothing -------------------------------------------------

def _mutated(**fields):
    def make():
        lf = _local(7)
        for k, v in fields.items():
            setattr(lf, k, v(lf))
        return lf
    return make


BAD = {
    "nan_desc": _mutated(desc=lambda lf: np.where(np.arange(LDIM) == 3, np.nan, lf.desc)),
    "inf_desc": _mutated(desc=lambda lf: np.where(np.arange(LDIM) == 0, np.inf, lf.desc)),
    "float16_overflow": lambda: LocalFeatures(_local(7).xy, np.full((20, LDIM), 1e5, np.float32), (120, 160)),
    "nan_xy": _mutated(xy=lambda lf: np.where([[True, False]], np.nan, lf.xy)),
    "inf_xy": lambda: LocalFeatures(np.full((20, 2), 1e300), _local(7).desc, (120, 160)),  # inf in float32
    "wrong_dim": lambda: _local(7, dim=LDIM + 1),
    "xy_not_2_columns": _mutated(xy=lambda lf: np.zeros((20, 3), np.float32)),
    "desc_1d": _mutated(desc=lambda lf: lf.desc[0]),
    "count_mismatch": _mutated(desc=lambda lf: lf.desc[:5]),
    "zero_channels": _mutated(desc=lambda lf: np.zeros((20, 0), np.float16)),
    "zero_height": lambda: _local(7, hw=(0, 160)),
    "negative_width": lambda: _local(7, hw=(120, -5)),
    "one_sided_size": lambda: _local(7, hw=(120,)),
    "not_local_features": lambda: (_local(7).xy, _local(7).desc),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_local_features_raise_and_leave_the_map_unchanged(bad):
    db = _map()
    before = _state(db)
    kf = Keyframe(100, 100 * SEC)
    with pytest.raises(LocalFeatureError):
        db.add(_unit(1, DIM, seed=9)[0], kf, BAD[bad]())
    assert _state(db) == before and kf.local_features == ""
    db.add(_unit(1, DIM, seed=9)[0], kf, _local(8))  # the id was not used up
    assert len(db) == 7 and 100 in db.local


def test_check_makes_a_compact_copy_and_accepts_the_float16_range():
    store = LocalFeatureStore()
    xy = np.random.default_rng(0).uniform(0, 100, (5, 2))  # float64 in
    desc = np.full((5, 4), 60000.0)  # large, but float16 can hold it
    out = store.check(LocalFeatures(xy, desc, (np.int64(100), 200.0)))
    assert out.xy.dtype == np.float32 and out.desc.dtype == np.float16 and out.image_hw == (100, 200)
    assert out.xy.flags.c_contiguous and out.desc.flags.c_contiguous
    store.put(3, out)
    xy[:] = -1.0  # the caller's arrays are not the stored ones
    assert np.all(store.get(3).xy >= 0) and store.dim == 4 and 3 in store and len(store) == 1
    with pytest.raises(LocalFeatureError, match="5-D.*4-D"):
        store.check(LocalFeatures(xy, np.ones((5, 5)), (1, 1)))
    assert store.check(LocalFeatures(np.zeros((0, 2)), np.zeros((0, 4)), (1, 1))).desc.shape == (0, 4)


def test_store_bytes_round_trip_in_the_given_order():
    store = LocalFeatureStore()
    for kid in (5, 2, 9):
        store.add(kid, _local(kid, n=kid))
    store.add(4, LocalFeatures(np.zeros((0, 2)), np.zeros((0, LDIM)), (10, 20)))  # no features at all
    back = LocalFeatureStore.from_bytes(store.to_bytes([9, 4, 5, 77, 2]))
    assert list(back.ids()) == [9, 4, 5, 2] and back.dim == LDIM
    for kid in (9, 4, 5, 2):
        a, b = store.get(kid), back.get(kid)
        np.testing.assert_array_equal(a.xy, b.xy)
        np.testing.assert_array_equal(a.desc, b.desc)
        assert b.desc.dtype == np.float16 and b.image_hw == a.image_hw
    empty = LocalFeatureStore.from_bytes(LocalFeatureStore().to_bytes())
    assert len(empty) == 0 and empty.dim == 0


def test_from_bytes_rejects_inconsistent_arrays():
    with np.load(io.BytesIO(_store_bytes())) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in (("offsets", arrays["offsets"][::-1].copy()), ("ids", np.zeros(2, np.int64)),
                       ("desc", arrays["desc"].astype(np.float32)), ("image_hw", arrays["image_hw"][:1])):
        buf = io.BytesIO()
        np.savez(buf, **{**arrays, key: value})
        with pytest.raises(ValueError):
            LocalFeatureStore.from_bytes(buf.getvalue())


def _store_bytes():
    store = LocalFeatureStore()
    store.add(0, _local(0))
    store.add(1, _local(1, n=3))
    return store.to_bytes()


# ---- the map file -------------------------------------------------------------------------------------

def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _rewrite(path, members, **header_changes):
    header = json.loads(members["header.json"])
    header.update(header_changes)
    members = {**members, "header.json": json.dumps(header).encode()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_save_load_round_trips_local_features_exactly(tmp_path):
    db = _map()
    path = db.save(tmp_path / "m.vprmap")
    header = json.loads(_members(path)["header.json"])
    assert (header["version"], header["local_count"], header["local_dim"]) == (4, 3, LDIM)
    back = MapDatabase.load(path, expected_dim=DIM, use_gpu="false")
    assert back.keyframes == db.keyframes
    assert [back.keyframes[i].local_features for i in range(6)] == ["local.npz", "", "local.npz", "", "local.npz", ""]
    assert sorted(back.local.ids()) == [0, 2, 4] and back.local.dim == LDIM
    for kid in (0, 2, 4):
        a, b = db.local_features(kid), back.local_features(kid)
        assert b.desc.dtype == np.float16 and b.xy.dtype == np.float32 and b.image_hw == (120, 160)
        np.testing.assert_array_equal(a.desc, b.desc)
        np.testing.assert_array_equal(a.xy, b.xy)
    assert back.local_features(1) is None


def test_a_map_without_local_features_round_trips(tmp_path):
    db = MapDatabase(DIM, "flat", "false")
    db.add(_unit(1, DIM, 0)[0], Keyframe(0, 0))
    back = MapDatabase.load(db.save(tmp_path / "m.vprmap"))
    assert len(back) == 1 and len(back.local) == 0 and back.local.dim == 0


def test_a_keyframe_claiming_local_features_without_any_still_saves_a_loadable_map(tmp_path):
    db = MapDatabase(DIM, "flat", "false")
    src = _map(2)  # keyframe 0 of another map has local features
    db.add(src.descriptors([0])[0], src.keyframes[0])  # re-added without them
    back = MapDatabase.load(db.save(tmp_path / "m.vprmap"))
    assert len(back) == 1 and len(back.local) == 0 and back.keyframes[0].local_features == ""


def _tamper_local(path):
    members = _members(path)
    data = bytearray(members["local.npz"])
    data[-200] ^= 0xFF  # inside the arrays: still a parseable npz
    _rewrite(path, {**members, "local.npz": bytes(data)})


def test_tampered_local_features_fail_the_checksum(tmp_path):
    path = _map().save(tmp_path / "m.vprmap")
    MapDatabase.load(path)  # control: the untampered file loads
    _tamper_local(path)
    with pytest.raises(MapError, match="checksum.*local"):
        MapDatabase.load(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_a_truncated_map_file_is_refused(tmp_path, keep):
    path = _map().save(tmp_path / "m.vprmap")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MapError, match="truncated or corrupt"):
        MapDatabase.load(path)


def test_a_version_1_map_loads_with_an_empty_store(tmp_path):
    """Written the way format 1 was: header without local fields, no local.npz member."""
    import faiss
    db = MapDatabase(DIM, "flat", "false")
    for i, d in enumerate(_unit(4, DIM, seed=0)):
        db.add(d, Keyframe(i, i * SEC, "cam", local_features="feat/1.npz" if i == 1 else ""))  # v1: free-form
    meta = json.dumps({"order": [0, 1, 2, 3], "keyframes": [vars(db.keyframes[i]) for i in range(4)]}).encode()
    index = faiss.serialize_index(db._cpu_index).tobytes()
    header = {"magic": "vpr_ros-map", "version": 1, "dim": DIM, "index_type": "flat", "count": 4, "next_id": 4,
              "sha256_index": hashlib.sha256(index).hexdigest(), "sha256_meta": hashlib.sha256(meta).hexdigest()}
    path = tmp_path / "v1.vprmap"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("header.json", json.dumps(header))
        zf.writestr("keyframes.json", meta)
        zf.writestr("index.faiss", index)
    back = MapDatabase.load(path, expected_dim=DIM)
    assert len(back) == 4 and len(back.local) == 0 and back.local.dim == 0 and back.next_id == 4
    assert [back.keyframes[i].local_features for i in range(4)] == ["", "feat/1.npz", "", ""]
    assert back.search(db.descriptors([2])[0], 1)[0].id == 2
    back.add(_unit(1, DIM, 5)[0], Keyframe(4, 4 * SEC), _local(4, dim=8))  # it takes local features of any size
    again = MapDatabase.load(back.save(tmp_path / "v2.vprmap"))
    assert list(again.local.ids()) == [4] and again.local.dim == 8


@pytest.mark.parametrize("change", [{"local_count": 2}, {"local_count": 4}, {"local_dim": LDIM * 2}])
def test_a_header_that_disagrees_with_local_npz_is_refused(tmp_path, change):
    path = _map().save(tmp_path / "m.vprmap")
    _rewrite(path, _members(path), **change)
    with pytest.raises(MapError, match="disagree"):
        MapDatabase.load(path)


def test_a_keyframe_whose_local_features_are_missing_is_refused(tmp_path):
    db = _map()
    path = db.save(tmp_path / "m.vprmap")
    db.local._items.pop(2)  # drop keyframe 2's features from local.npz, keep its keyframe entry
    local = db.local.to_bytes([0, 4])
    _rewrite(path, {**_members(path), "local.npz": local}, local_count=2,
             sha256_local=hashlib.sha256(local).hexdigest())
    with pytest.raises(MapError, match="1 missing"):
        MapDatabase.load(path)


# ---- PlaceRecognizer with re-ranking --------------------------------------------------------------------

def _overrides(**kw):
    return {"detector.sequence_length": 1, "detector.exclude_recent_change": 0.0, "detector.temporal_consistency": 2, "detector.exclude_recent_count": 0, "detector.exclude_recent_s": 5.0, "map.use_gpu": "false", **kw}


@pytest.mark.parametrize("method", ["mnn", "degensac"])
def test_re_ranking_without_a_local_head_is_a_config_error(default_extractor, method):
    cfg = load_config(overrides=_overrides(**{"rerank.method": method}))
    with pytest.raises(ConfigError, match="local_head"):
        PlaceRecognizer(cfg, extractor=default_extractor)
    PlaceRecognizer(load_config(overrides=_overrides()), extractor=default_extractor)  # control: method none


def test_load_map_with_tampered_local_features_keeps_the_current_map(tmp_path, default_extractor):
    pr = PlaceRecognizer(load_config(overrides=_overrides()), extractor=default_extractor)
    for i, d in enumerate(_unit(3, default_extractor.dim, seed=4)):
        pr.process_descriptor(d, i * SEC, "camera", local=_local(i))
    path = pr.save_map(tmp_path / "m.vprmap")
    _tamper_local(path)
    db, before = pr.db, _state(pr.db)
    with pytest.raises(MapError, match="checksum"):
        pr.load_map(path)
    assert pr.db is db and pr.detector.db is db and _state(pr.db) == before


@pytest.fixture(scope="module")
def local_cfg():
    return load_config(overrides=_overrides(**{"model.local_head": {"name": "feature_map", "stride": 16},
                                               "rerank.method": "mnn"}))


@pytest.fixture(scope="module")
def local_extractor(local_cfg):
    """The default model with a stride-16 feature-map local head (112-D cells), built once."""
    from vpr_core.models import DescriptorExtractor, build_model
    return DescriptorExtractor(local_cfg.model, build_model(local_cfg.model))


def test_pipeline_re_ranks_real_images_and_keeps_their_local_features(tmp_path, local_cfg, local_extractor,
                                                                      corridor_images):
    pr = PlaceRecognizer(local_cfg, extractor=local_extractor)
    first = [pr.process(img, i * SEC, "camera") for i, img in enumerate(corridor_images[:2])]
    assert all(r.loop_closure is None for r in first)
    assert len(pr.db.local) == 2 and pr.db.local.dim == 112
    n = len(pr.db.local_features(0))
    assert 0 < n <= local_cfg.model.max_local_features and pr.db.keyframes[0].local_features == "local.npz"
    again = [pr.process(img, (100 + i) * SEC, "camera") for i, img in enumerate(corridor_images[:2])]
    assert [r.place_match.best.id for r in again] == [0, 1]
    v = again[0].place_match.best.verification
    assert v.method == "mnn" and v.num_matches == n and v.verified  # the same image: every feature matches
    assert [r.loop_closure is not None for r in again] == [False, True]  # temporal_consistency 2
    assert again[1].loop_closure.verification.verified
    assert pr.stats.summary()["rerank_ms_median"] > 0

    path = pr.save_map(tmp_path / "corridor.vprmap")
    pr2 = PlaceRecognizer(local_cfg, extractor=local_extractor)
    assert pr2.load_map(path) == 4
    assert pr2.db.keyframes == pr.db.keyframes
    for kid in range(4):
        np.testing.assert_array_equal(pr2.db.local_features(kid).desc, pr.db.local_features(kid).desc)
        np.testing.assert_array_equal(pr2.db.local_features(kid).xy, pr.db.local_features(kid).xy)
    r = pr2.process(corridor_images[1], 200 * SEC, "camera")
    assert r.place_match.best.id in (1, 3) and r.place_match.best.verification.num_matches == n


def test_load_map_refuses_other_local_features_even_before_the_first_frame(tmp_path, local_cfg, local_extractor,
                                                                           corridor_images):
    other = MapDatabase(local_extractor.dim, "flat", "false")
    other.add(_unit(1, local_extractor.dim, seed=1)[0], Keyframe(0, 0), _local(0, dim=LDIM))
    path = other.save(tmp_path / "other.vprmap")
    pr = PlaceRecognizer(local_cfg, extractor=local_extractor)  # e.g. autoload at start: no frame seen yet
    with pytest.raises(MapError, match="16-D local features.*112-D"):
        pr.load_map(path)
    assert len(pr.db) == 0
    pr.process(corridor_images[0], 0, "camera")
    with pytest.raises(MapError, match="16-D local features"):
        pr.load_map(path)
    assert len(pr.db) == 1 and pr.db.local.dim == 112


def _pooled_map(n: int, seed: int):
    """A map of n keyframes whose local features (500 x 64-D each) cycle through 4 shared sets: many MB in
    the file, few in memory. Returns the map and the 4 sets."""
    rng = np.random.default_rng(seed)
    pool = [LocalFeatures(rng.uniform(0, 100, (500, 2)).astype(np.float32),
                          rng.normal(size=(500, 64)).astype(np.float16), (120, 160)) for _ in range(4)]
    db = MapDatabase(DIM, "flat", "false")
    for i in range(n):
        db.add(rng.normal(size=DIM), Keyframe(i, i * 10**8), pool[i % 4])
    return db, pool


def test_loading_reads_local_features_once_without_copies(tmp_path):
    """The map file's local features are read once, straight into the buffer the arrays view: the load's peak
    Python/numpy allocation stays near the file's size (it was ~2.8x: zip read, npz read, a copy per array)."""
    import tracemalloc
    db, pool = _pooled_map(400, seed=8)  # ~26 MB of local features
    path = db.save(tmp_path / "big.vprmap")
    size = path.stat().st_size
    tracemalloc.start()
    back = MapDatabase.load(path, use_gpu="false")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(back.local.get(399).desc, pool[3].desc) and len(back.local) == 400
    assert peak < 1.3 * size, f"loading a {size >> 20} MB map allocated {peak >> 20} MB at its peak"


def test_saving_streams_local_features_without_a_second_copy(tmp_path):
    """local.npz is written keyframe by keyframe through a scratch file beside the map: the save's peak
    Python/numpy allocation stays a small share of the local features (it was ~2x: concatenated arrays,
    then the npz buffer), and the file loads back exactly, its checksum over the streamed bytes."""
    import tracemalloc
    db, pool = _pooled_map(400, seed=11)  # ~26 MB of local features
    local_bytes = 400 * 500 * (64 * 2 + 8)
    tracemalloc.start()
    path = db.save(tmp_path / "streamed.vprmap")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < local_bytes / 4, f"saving {local_bytes >> 20} MB of local features allocated {peak >> 20} MB"
    assert not [p for p in tmp_path.iterdir() if p.name != "streamed.vprmap"]  # no scratch file left behind
    back = MapDatabase.load(path, use_gpu="false")
    assert len(back.local) == 400 and np.array_equal(back.local.get(399).desc, pool[3].desc)
    assert np.array_equal(back.local.get(0).xy, db.local.get(0).xy)


def test_a_save_holds_the_map_only_while_it_is_frozen(tmp_path):
    """`freeze` (what PlaceRecognizer.save_map does under its lock) copies the index and lists references:
    no JSON, npz or checksum of the local features is made while frames wait; `encode` does that after."""
    import tracemalloc
    db, pool = _pooled_map(300, seed=9)  # ~20 MB of local features
    rng = np.random.default_rng(10)
    tracemalloc.start()
    frozen = db.freeze()
    held = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    local_bytes = 300 * 500 * (64 * 2 + 8)
    assert held < local_bytes / 20, f"freeze allocated {held >> 10} kB for {local_bytes >> 20} MB of local features"
    db.add(rng.normal(size=DIM), Keyframe(300, 300 * 10**8), pool[0])  # the map moves on; the frozen copy does not
    header, members = frozen.encode()
    path = tmp_path / "frozen.vprmap"
    from vpr_core.map_file import write_map_file
    write_map_file(path, header, members)
    back = MapDatabase.load(path, use_gpu="false")
    assert len(back) == 300 and len(back.local) == 300 and np.array_equal(back.local.get(299).desc, pool[3].desc)
