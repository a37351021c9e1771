"""vpr_core.map_database: add/search with exclusions, input validation, and the map file format."""
from __future__ import annotations

import json
import zipfile

import faiss
import numpy as np
import pytest

from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import DescriptorError
from vpr_core.map_database import MapDatabase, MapError

DIM = 32
INDEXES = ["flat", "flat_fp16", "hnsw"]
SCORE_TOL = {"flat": 1e-5, "flat_fp16": 1e-3, "hnsw": 1e-5}  # float16 storage rounds a unit vector's self-score


def _unit(rng, n, dim=DIM):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _filled(index="flat", n=20, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    descs = _unit(rng, n, dim)
    db = MapDatabase(dim, index, "false")
    for i, d in enumerate(descs):
        pose = [float(i), 2.0 * i, 0.5, 0.0, 0.0, 0.0, 1.0]
        db.add(d, Keyframe(i, stamp_ns=i * 1_000_000_000 + 17, frame_id=f"cam{i % 3}", pose=pose,
                           local_features=f"feat/{i}.npz" if i % 2 else ""))
    return db, descs


def _snapshot(db, queries, **kw):
    return [[(c.id, round(c.score, 6)) for c in db.search(q, 5, **kw)] for q in queries]


def _brute_force(descs, q, allowed, k):
    q = q / np.linalg.norm(q)
    scores = {i: float(descs[i] @ q) for i in allowed}
    return sorted(scores, key=lambda i: -scores[i])[:k]


# ---- add / search -----------------------------------------------------------------------------------

@pytest.mark.parametrize("index", INDEXES)
def test_each_keyframe_finds_itself_with_score_one(index):
    db, descs = _filled(index)
    assert len(db) == 20 and db.next_id == 20
    for i in (0, 7, 19):
        hits = db.search(descs[i], k=3)
        assert isinstance(hits[0], Candidate)
        assert hits[0].id == i and hits[0].keyframe is db.keyframes[i]
        assert hits[0].score == pytest.approx(1.0, abs=SCORE_TOL[index])
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert len({h.id for h in hits}) == 3


def test_search_matches_brute_force_and_normalises_the_query():
    db, descs = _filled("flat")
    rng = np.random.default_rng(1)
    for q in rng.normal(size=(5, DIM)):
        hits = db.search(q * 7.5, k=4)  # scale must not matter
        assert [h.id for h in hits] == _brute_force(descs, q, range(20), 4)
        for h in hits:
            assert h.score == pytest.approx(float(descs[h.id] @ (q / np.linalg.norm(q))), abs=1e-5)


def test_stored_descriptors_are_normalised():
    db = MapDatabase(4, "flat", "false")
    db.add(np.array([3.0, 0.0, 4.0, 0.0]), Keyframe(0, 0))
    np.testing.assert_allclose(db.descriptors([0])[0], [0.6, 0.0, 0.8, 0.0], atol=1e-6)
    assert db.descriptors([]).shape == (0, 4)


def test_exclude_recent_count_excludes_the_last_added():
    db, descs = _filled("flat")
    assert db.search(descs[19], k=1)[0].id == 19  # control: without exclusion it matches itself
    hits = db.search(descs[19], k=5, exclude_recent_count=1)
    assert 19 not in [h.id for h in hits] and len(hits) == 5
    hits = db.search(descs[17], k=5, exclude_recent_count=3)
    assert not {17, 18, 19} & {h.id for h in hits}
    assert [h.id for h in hits] == _brute_force(descs, descs[17], range(17), 5)


def test_exclude_recent_ns_excludes_keyframes_close_in_time():
    db, descs = _filled("flat")
    stamp = db.keyframes[10].stamp_ns
    assert db.search(descs[10], k=1, query_stamp_ns=stamp)[0].id == 10  # control
    hits = db.search(descs[10], k=20, query_stamp_ns=stamp, exclude_recent_ns=2_500_000_000)
    ids = {h.id for h in hits}
    assert not {8, 9, 10, 11, 12} & ids  # within 2.5 s, before and after
    assert ids == set(range(20)) - {8, 9, 10, 11, 12}
    # without a query stamp the time window cannot apply
    assert db.search(descs[10], k=1, exclude_recent_ns=2_500_000_000)[0].id == 10


@pytest.mark.parametrize("index", INDEXES)
def test_time_exclusion_reaches_past_the_nearest_when_they_are_all_recent(index):
    """Forty recent keyframes near the query and fourteen old ones: top-k must come from the old ones."""
    rng = np.random.default_rng(3)
    base = _unit(rng, 1)[0]
    db = MapDatabase(DIM, index, "false")
    old = _unit(rng, 14)
    for i, d in enumerate(old):
        db.add(d + 0.3 * base, Keyframe(i, i * 10**9))
    for j in range(40):
        db.add(base + 0.05 * _unit(rng, 1)[0], Keyframe(100 + j, (100 + j) * 10**9))
    hits = db.search(base, k=3, query_stamp_ns=140 * 10**9, exclude_recent_ns=60 * 10**9)
    assert len(hits) == 3 and all(h.id < 14 for h in hits)
    expected = _brute_force({i: (old[i] + 0.3 * base) / np.linalg.norm(old[i] + 0.3 * base) for i in range(14)},
                            base, range(14), 3)
    assert [h.id for h in hits] == expected


@pytest.mark.parametrize("index", INDEXES)
@pytest.mark.parametrize("stamps", ["driven", "two_sessions"])
def test_exclusion_windows_cost_one_search(monkeypatch, index, stamps):
    """The recent keyframes (by count and by time) are left out inside one FAISS search, even when every
    one of them is nearer the query than the rest of the map (a real frame looks like its recent past),
    and whether the stamps grow in insertion order or not (a previous session's map loaded first)."""
    rng = np.random.default_rng(7)
    base = _unit(rng, 1)[0]
    db = MapDatabase(DIM, index, "false")
    old = _unit(rng, 30)
    # "two_sessions": another run's keyframes first, stamped after this run's, a third of them inside the window
    t_old = (np.arange(30) if stamps == "driven" else 170 + 2 * np.arange(30)) * 10**9
    for i, d in enumerate(old):
        db.add(d + 0.3 * base, Keyframe(i, int(t_old[i])))
    recent = [base + 0.05 * _unit(rng, 1)[0] for _ in range(60)]
    for j, d in enumerate(recent):
        db.add(d, Keyframe(100 + j, (100 + j) * 10**9))
    searches, kind = [], type(faiss.downcast_index(db._cpu_index.index))  # the map searches its inner index
    real_search = kind.search
    monkeypatch.setattr(kind, "search", lambda self, *a, **kw: (searches.append(1), real_search(self, *a, **kw))[1])
    hits = db.search(base, k=5, query_stamp_ns=160 * 10**9, exclude_recent_ns=30 * 10**9, exclude_recent_count=20)
    assert len(searches) == 1
    outside = lambda t: abs(160 * 10**9 - int(t)) >= 30 * 10**9  # noqa: E731  (too_recent's rule)
    allowed = {i: (old[i] + 0.3 * base) / np.linalg.norm(old[i] + 0.3 * base) for i in range(30) if outside(t_old[i])}
    allowed.update({100 + j: recent[j] / np.linalg.norm(recent[j]) for j in range(40)  # the last 20 added: out
                    if outside((100 + j) * 10**9)})
    assert 100 in allowed and 130 in allowed and 131 not in allowed
    stored = {i: db.descriptors([i])[0] for i in allowed}  # what the index holds (float16-rounded for flat_fp16)
    assert [h.id for h in hits] == _brute_force(stored, base, allowed, 5)
    assert {h.id for h in hits} <= set(allowed) and len(hits) == 5


@pytest.mark.parametrize("index", INDEXES)
def test_k_larger_than_the_map(index):
    db, descs = _filled(index, n=6)
    hits = db.search(descs[0], k=50)
    assert sorted(h.id for h in hits) == list(range(6))
    hits = db.search(descs[0], k=50, exclude_recent_count=2)
    assert sorted(h.id for h in hits) == [0, 1, 2, 3]
    assert db.search(descs[0], k=5, exclude_recent_count=10) == []


def test_empty_map_search():
    db = MapDatabase(DIM, "flat", "false")
    assert len(db) == 0 and db.next_id == 0
    assert db.search(np.ones(DIM), k=5) == []


def test_search_with_k_zero_returns_nothing():
    db, descs = _filled("flat")
    assert db.search(descs[0], k=0, exclude_recent_count=3) == []


# ---- bad descriptors --------------------------------------------------------------------------------

def _bad_descriptors():
    nan = np.ones(DIM, np.float32)
    nan[3] = np.nan
    inf = np.ones(DIM, np.float32)
    inf[0] = np.inf
    return {"nan": nan, "inf": inf, "-inf": -inf, "zero": np.zeros(DIM, np.float32),
            "short": np.ones(DIM - 1, np.float32), "long": np.ones(DIM + 1, np.float32),
            "two_rows": np.ones((2, DIM), np.float32)}


@pytest.mark.parametrize("index", INDEXES)
@pytest.mark.parametrize("kind", list(_bad_descriptors()))
def test_bad_descriptor_is_rejected_and_the_map_is_unchanged(index, kind):
    db, descs = _filled(index, n=10)
    bad = _bad_descriptors()[kind]
    before = _snapshot(db, descs[:3])
    with pytest.raises(DescriptorError):
        db.add(bad, Keyframe(10, 10 * 10**9))
    with pytest.raises(DescriptorError):
        db.search(bad, k=3)
    assert len(db) == 10 and db.next_id == 10 and 10 not in db.keyframes
    assert _snapshot(db, descs[:3]) == before
    db.add(descs[0] * 0.5, Keyframe(10, 0))  # and it still works afterwards
    assert len(db) == 11


def test_descriptor_error_messages():
    db = MapDatabase(DIM, "flat", "false")
    bad = _bad_descriptors()
    with pytest.raises(DescriptorError, match=f"{DIM - 1} values.*{DIM}-D"):
        db.add(bad["short"], Keyframe(0, 0))
    with pytest.raises(DescriptorError, match="NaN or inf"):
        db.add(bad["nan"], Keyframe(0, 0))
    with pytest.raises(DescriptorError, match="zeros"):
        db.add(bad["zero"], Keyframe(0, 0))


@pytest.mark.parametrize("index", INDEXES)
def test_duplicate_id_is_rejected_and_the_map_is_unchanged(index):
    db, descs = _filled(index, n=5)
    before = _snapshot(db, descs)
    new = _unit(np.random.default_rng(9), 1)[0]
    with pytest.raises(ValueError, match="id 3"):
        db.add(new, Keyframe(3, 99))
    assert len(db) == 5 and db.keyframes[3].stamp_ns == 3 * 10**9 + 17
    assert _snapshot(db, descs) == before
    assert _snapshot(db, [new]) == _snapshot(_filled(index, n=5)[0], [new])


def test_invalid_construction():
    with pytest.raises(ValueError):
        MapDatabase(0)
    with pytest.raises(KeyError, match="did you mean 'flat'"):
        MapDatabase(DIM, "flta", "false")


# ---- save / load ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", INDEXES)
def test_save_load_round_trip(tmp_path, index):
    db, descs = _filled(index)
    path = db.save(tmp_path / "maps" / "m.vprmap")  # parent folder is created
    assert path == tmp_path / "maps" / "m.vprmap" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["m.vprmap"]  # no .tmp left behind
    loaded = MapDatabase.load(path, expected_dim=DIM, use_gpu="false")
    assert loaded.dim == DIM and loaded.index_type == index and len(loaded) == 20
    assert loaded.next_id == 20
    assert loaded.keyframes == db.keyframes
    assert loaded.keyframes[5].pose == [5.0, 10.0, 0.5, 0.0, 0.0, 0.0, 1.0]
    assert loaded.keyframes[5].frame_id == "cam2" and loaded.keyframes[5].stamp_ns == 5 * 10**9 + 17
    assert loaded.keyframes[5].local_features == "feat/5.npz"
    queries = np.vstack([descs, _unit(np.random.default_rng(4), 5)])
    assert _snapshot(loaded, queries) == _snapshot(db, queries)
    assert _snapshot(loaded, queries, exclude_recent_count=4) == _snapshot(db, queries, exclude_recent_count=4)
    stamp = db.keyframes[12].stamp_ns
    assert (_snapshot(loaded, queries, query_stamp_ns=stamp, exclude_recent_ns=3 * 10**9)
            == _snapshot(db, queries, query_stamp_ns=stamp, exclude_recent_ns=3 * 10**9))
    np.testing.assert_allclose(loaded.descriptors([0, 19]), db.descriptors([0, 19]), atol=1e-6)
    # the loaded map keeps working
    loaded.add(descs[0], Keyframe(20, 0))
    assert len(loaded) == 21 and loaded.search(descs[0], 2)[0].score == pytest.approx(1.0, abs=SCORE_TOL[index])


def test_empty_map_round_trip(tmp_path):
    db = MapDatabase(DIM, "flat", "false")
    loaded = MapDatabase.load(db.save(tmp_path / "empty.vprmap"), use_gpu="false")
    assert len(loaded) == 0 and loaded.dim == DIM and loaded.next_id == 0


def test_save_over_an_existing_file_replaces_it(tmp_path):
    path = tmp_path / "m.vprmap"
    _filled(n=3)[0].save(path)
    _filled(n=7)[0].save(path)
    assert len(MapDatabase.load(path, use_gpu="false")) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.vprmap"]


@pytest.fixture
def saved_map(tmp_path):
    db, _ = _filled("flat")
    return db.save(tmp_path / "good.vprmap")


def _load_fails(path, match=None):
    with pytest.raises(MapError, match=match):
        MapDatabase.load(path, expected_dim=DIM, use_gpu="false")


@pytest.mark.parametrize("cut", [1, 100, 0.5])
def test_truncated_file_is_a_map_error(tmp_path, saved_map, cut):
    data = saved_map.read_bytes()
    keep = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    bad = tmp_path / "cut.vprmap"
    bad.write_bytes(data[:keep])
    _load_fails(bad)


def _member_data_offset(path, name):
    """Byte offset and size of a member's stored data inside the zip file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = path.read_bytes()
    start = info.header_offset
    name_len = int.from_bytes(raw[start + 26:start + 28], "little")
    extra_len = int.from_bytes(raw[start + 28:start + 30], "little")
    return start + 30 + name_len + extra_len, info.file_size


@pytest.mark.parametrize("member", ["index.faiss", "keyframes.json", "header.json"])
def test_flipped_byte_in_the_middle_of_a_member_is_a_map_error(tmp_path, saved_map, member):
    offset, size = _member_data_offset(saved_map, member)
    data = bytearray(saved_map.read_bytes())
    data[offset + size // 2] ^= 0x5A
    bad = tmp_path / "flipped.vprmap"
    bad.write_bytes(bytes(data))
    _load_fails(bad)


def test_no_single_flipped_byte_silently_changes_the_map(tmp_path):
    """Flip bytes of a small map file in turn (every zip header/directory byte, and every 8th byte of
    the members' data): loading must fail, or give back exactly the same map (some bytes are redundant
    zip metadata, e.g. the local-header CRC copy)."""
    db, descs = _filled("flat", n=3)
    path = db.save(tmp_path / "small.vprmap")
    data = path.read_bytes()
    payload = set()
    for member in ("header.json", "keyframes.json", "index.faiss"):
        start, size = _member_data_offset(path, member)
        payload.update(range(start, start + size))
    offsets = [o for o in range(len(data)) if o not in payload or o % 8 == 0]
    ids = sorted(db.keyframes)
    ref = db.descriptors(ids)
    bad = tmp_path / "bad.vprmap"
    loaded_ok = 0
    for off in offsets:
        flipped = bytearray(data)
        flipped[off] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            m = MapDatabase.load(bad, expected_dim=DIM, use_gpu="false")
        except Exception:  # noqa: BLE001 -- which exception is checked in the xfail test below
            continue
        loaded_ok += 1
        same = (m.keyframes == db.keyframes and m.index_type == db.index_type and len(m) == len(db)
                and np.array_equal(m.descriptors(ids), ref))
        assert same, f"flipping byte {off} changed the map silently"
    assert 0 < loaded_ok < len(offsets) // 2  # redundant bytes exist, but most flips are detected


@pytest.mark.parametrize("field", [6, 8, 10], ids=["version-needed", "flags", "compression-method"])
def test_flipped_byte_in_the_zip_directory_is_a_map_error(tmp_path, saved_map, field):
    data = bytearray(saved_map.read_bytes())
    central = data.index(b"PK\x01\x02")  # first central-directory entry
    data[central + field] ^= 0x5A
    bad = tmp_path / "flipped.vprmap"
    bad.write_bytes(bytes(data))
    _load_fails(bad)


def _rewrite(src, dst, **replace):
    """Copy a map file, replacing some members (a consistent zip, so only our own checks can object)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def test_sha256_checksum_catches_a_changed_index(tmp_path, saved_map):
    with zipfile.ZipFile(saved_map) as zf:
        index = bytearray(zf.read("index.faiss"))
    index[len(index) // 2] ^= 0x01
    _load_fails(_rewrite(saved_map, tmp_path / "x.vprmap", **{"index.faiss": bytes(index)}), "checksum")


def test_sha256_checksum_catches_changed_metadata(tmp_path, saved_map):
    with zipfile.ZipFile(saved_map) as zf:
        meta = json.loads(zf.read("keyframes.json"))
    meta["keyframes"][0]["frame_id"] = "tampered"
    _load_fails(_rewrite(saved_map, tmp_path / "x.vprmap", **{"keyframes.json": json.dumps(meta)}), "checksum")


@pytest.mark.parametrize("field, value, match", [("magic", "something-else", "not a vpr_ros map"),
                                                 ("version", 99, "version 99")])
def test_wrong_magic_or_version(tmp_path, saved_map, field, value, match):
    with zipfile.ZipFile(saved_map) as zf:
        header = json.loads(zf.read("header.json"))
    header[field] = value
    _load_fails(_rewrite(saved_map, tmp_path / "x.vprmap", **{"header.json": json.dumps(header)}), match)


def test_zip_without_map_members(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    _load_fails(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 1000, b"PK\x03\x04" + b"\0" * 200],
                         ids=["empty", "garbage", "fake-zip-header"])
def test_garbage_file_is_a_map_error(tmp_path, content):
    path = tmp_path / "garbage.vprmap"
    path.write_bytes(content)
    _load_fails(path)


def test_missing_file_is_a_map_error(tmp_path):
    _load_fails(tmp_path / "missing.vprmap", "not found")


def test_directory_is_a_map_error(tmp_path):
    _load_fails(tmp_path)


def test_other_dimension_with_expected_dim(tmp_path):
    db, _ = _filled(n=4, dim=16)
    path = db.save(tmp_path / "d16.vprmap")
    with pytest.raises(MapError) as info:
        MapDatabase.load(path, expected_dim=DIM, use_gpu="false")
    assert "16-D" in str(info.value) and f"{DIM}-D" in str(info.value)
    assert MapDatabase.load(path, use_gpu="false").dim == 16  # without expected_dim it loads


def test_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "m.vprmap"
    good, descs = _filled(n=5)
    good.save(path)
    before = path.read_bytes()
    bigger, _ = _filled(n=9, seed=1)
    (tmp_path / "m.vprmap.tmp").mkdir()  # the temporary file cannot be created
    with pytest.raises(OSError):
        bigger.save(path)
    assert path.read_bytes() == before
    loaded = MapDatabase.load(path, expected_dim=DIM, use_gpu="false")
    assert len(loaded) == 5 and _snapshot(loaded, descs) == _snapshot(good, descs)


def test_failed_save_of_unserialisable_metadata_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "m.vprmap"
    db, _ = _filled(n=5)
    db.save(path)
    before = path.read_bytes()
    db.add(np.ones(DIM), Keyframe(5, 0, pose=object()))  # not JSON-serialisable
    with pytest.raises(TypeError):
        db.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.vprmap"]


def test_save_to_a_directory_fails_and_keeps_the_directory(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    db, _ = _filled(n=3)
    with pytest.raises(OSError):
        db.save(target)
    assert (target / "keep.txt").read_text() == "x"


def test_failed_save_leaves_no_tmp_file(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    db, _ = _filled(n=3)
    with pytest.raises(OSError):
        db.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
