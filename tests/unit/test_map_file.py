"""Reading a map file trusts nothing in it: only regular files, bounded member sizes read from the zip
directory first, every header and keyframe field typed and ranged, ids consistent, FAISS bytes walked
before FAISS reads them. Whatever is wrong, MapDatabase.load raises MapError (and nothing else)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import threading
import tracemalloc
import zipfile

import faiss
import numpy as np
import pytest

from vpr_core.keyframes import Keyframe
from vpr_core.local_features import LocalFeatures
from vpr_core.map_database import MapDatabase, MapError

DIM = 16
LDIM = 8


def _map(index="flat", n=6, seed=0, local=True):
    rng = np.random.default_rng(seed)
    db = MapDatabase(DIM, index, "false")
    for i in range(n):
        lf = LocalFeatures(rng.uniform(0, 50, (5, 2)), rng.normal(size=(5, LDIM)), (60, 80)) if local and i % 2 == 0 else None
        db.add(rng.normal(size=DIM), Keyframe(i, 10**9 * (i + 1), f"cam{i}", [0.0, 1.0, 2.0, 0, 0, 0, 1.0]), lf)
    return db


@pytest.fixture
def saved(tmp_path):
    return _map().save(tmp_path / "m.vprmap")


def members(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rewrite(path, ms, compress=zipfile.ZIP_STORED, fix_sha=True, **header_changes):
    """Write members back (fixing the checksums so only the structural checks can object)."""
    ms = dict(ms)
    header = json.loads(ms["header.json"])
    if fix_sha:
        for member, key in (("index.faiss", "sha256_index"), ("keyframes.json", "sha256_meta"),
                            ("local.npz", "sha256_local")):
            if member in ms:
                header[key] = hashlib.sha256(ms[member]).hexdigest()
    header.update(header_changes)
    ms["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, data in ms.items():
            zf.writestr(name, data)
    return path


def load(path):
    return MapDatabase.load(path, expected_dim=DIM, use_gpu="false")


def refused(path, *patterns):
    with pytest.raises(MapError) as info:
        load(path)
    for p in patterns:
        assert p in str(info.value), str(info.value)
    return str(info.value)


def refused_peak(path, *patterns) -> int:
    """`refused`, returning the peak bytes Python allocated while the reader refused the file."""
    tracemalloc.start()
    try:
        refused(path, *patterns)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---- only regular files ------------------------------------------------------------------------------

def _load_within(path, fifo, seconds=5.0):
    """load(path) in a thread; if it blocks (a FIFO waiting for a writer), unblock it and fail."""
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(_catch(lambda: load(path))), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():  # release the blocked reader so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(seconds)
        pytest.fail(f"loading {path.name} blocked: it waited for a writer instead of refusing")
    return outcome[0]


def _catch(fn):
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 -- the test inspects it
        return exc
    return None


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.vprmap"
    os.mkfifo(fifo)
    exc = _load_within(fifo, fifo)
    assert isinstance(exc, MapError) and "FIFO" in str(exc), repr(exc)


def test_a_symlink_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.vprmap").symlink_to(tmp_path / "pipe")
    exc = _load_within(tmp_path / "link.vprmap", tmp_path / "pipe")
    assert isinstance(exc, MapError) and "FIFO" in str(exc), repr(exc)


def test_a_device_or_directory_is_refused_naming_what_it_is(tmp_path):
    refused("/dev/null", "character device", "not a regular file")
    refused(tmp_path, "directory", "not a regular file")


def test_a_file_over_the_size_cap_is_refused_before_reading(saved):
    with pytest.raises(MapError, match="max_file_mb"):
        MapDatabase.load(saved, use_gpu="false", max_bytes=saved.stat().st_size - 1)
    assert len(MapDatabase.load(saved, use_gpu="false", max_bytes=saved.stat().st_size)) == 6


# ---- header.json --------------------------------------------------------------------------------------

RETYPED = {"dim": str(DIM), "count": 6.0, "version": "2", "index_type": 1, "magic": ["vpr_ros-map"],
           "next_id": True, "sha256_index": 0, "local_dim": None, "local_count": "3", "sha256_meta": {}}


@pytest.mark.parametrize("field", sorted(RETYPED))
def test_a_retyped_header_field_is_named_with_its_type(saved, field):
    header = json.loads(members(saved)["header.json"])
    header[field] = RETYPED[field]
    rewrite(saved, members(saved) | {"header.json": json.dumps(header).encode()}, fix_sha=False)
    msg = refused(saved)
    if field != "magic":  # a wrong magic just says "not a map"
        assert f"'{field}'" in msg and "must be" in msg, msg


def test_dim_as_a_string_says_so_instead_of_comparing_sizes(saved):
    rewrite(saved, members(saved), dim=str(DIM))
    msg = refused(saved, "'dim'", "must be an integer", "a string")
    assert "produces" not in msg, msg


@pytest.mark.parametrize("field", ["dim", "index_type", "count", "sha256_index", "sha256_meta", "local_dim",
                                   "local_count", "sha256_local"])
def test_a_missing_header_field_is_named(saved, field):
    header = json.loads(members(saved)["header.json"])
    del header[field]
    with zipfile.ZipFile(saved, "w") as zf:
        for name, data in (members(_map().save(saved.with_name("src.vprmap"))) | {"header.json": json.dumps(header)}).items():
            zf.writestr(name, data)
    refused(saved, f"'{field}'")


@pytest.mark.parametrize("change, words", [
    ({"dim": 0}, "'dim'"), ({"dim": -16}, "'dim'"), ({"count": -1}, "'count'"), ({"next_id": -5}, "'next_id'"),
    ({"index_type": "ivf"}, "'ivf'"), ({"index_type": ""}, "index_type"), ({"count": 2**62}, "'count'"),
    ({"local_count": 99}, "disagree"), ({"sha256_index": "zz"}, "sha256"), ({"extra": 1}, "unknown field"),
])
def test_an_out_of_range_or_unknown_header_value_is_refused(saved, change, words):
    rewrite(saved, members(saved), **change)
    refused(saved, words)


def test_a_header_that_is_not_an_object_is_refused(saved):
    for value in ([1, 2], "vpr_ros-map", 3, None):
        _raw_header(saved, json.dumps(value).encode())
        refused(saved, "header.json")


def _raw_header(path, data):
    ms = members(path) | {"header.json": data}
    with zipfile.ZipFile(path, "w") as zf:
        for name, d in ms.items():
            zf.writestr(name, d)


# ---- keyframes.json -------------------------------------------------------------------------------------

def _meta_change(saved, fn):
    ms = members(saved)
    meta = json.loads(ms["keyframes.json"])
    meta = fn(meta)
    rewrite(saved, ms | {"keyframes.json": json.dumps(meta).encode()})


@pytest.mark.parametrize("name, fn, words", [
    ("unknown field", lambda m: (m["keyframes"][1].update(colour="red"), m)[1], "unknown field"),
    ("id as string", lambda m: (m["keyframes"][1].update(id="1"), m)[1], "'id'"),
    ("stamp as float", lambda m: (m["keyframes"][2].update(stamp_ns=1.5e9), m)[1], "'stamp_ns'"),
    ("negative stamp", lambda m: (m["keyframes"][2].update(stamp_ns=-1), m)[1], "'stamp_ns'"),
    ("stamp beyond ROS time", lambda m: (m["keyframes"][2].update(stamp_ns=2**62), m)[1], "'stamp_ns'"),
    ("short pose", lambda m: (m["keyframes"][0].update(pose=[1.0, 2.0]), m)[1], "'pose'"),
    ("frame id number", lambda m: (m["keyframes"][0].update(frame_id=7), m)[1], "'frame_id'"),
    ("session as bool", lambda m: (m["keyframes"][4].update(session=True), m)[1], "'session'"),
    ("robot as number", lambda m: (m["keyframes"][4].update(robot=5), m)[1], "'robot'"),
    ("pose with a bool", lambda m: (m["keyframes"][1].update(pose=[True, 0, 0, 0, 0, 0, 1]), m)[1], "'pose'"),
    ("no id", lambda m: (m["keyframes"][3].pop("id"), m)[1], "lacks 'id'"),
    ("entry is a list", lambda m: (m["keyframes"].__setitem__(0, [0, 1]), m)[1], "not an object"),
    ("duplicate keyframe", lambda m: (m["keyframes"].__setitem__(1, dict(m["keyframes"][0])), m)[1], "twice"),
    ("order misses an id", lambda m: (m["order"].__setitem__(5, 77), m)[1], "exactly once"),
    ("order repeats an id", lambda m: (m["order"].__setitem__(5, 0), m)[1], "exactly once"),
    ("order too short", lambda m: (m["order"].pop(), m)[1], "order of 5"),
    ("order permuted", lambda m: (m["order"].reverse(), m)[1], "order disagree"),  # same ids, not the index's order
    ("whole file a list", lambda m: [m], "must be an object"),
    ("whole file a string", lambda m: "keyframes", "must be an object"),
    ("extra top-level key", lambda m: m | {"more": 1}, "must be an object"),
])
def test_a_bad_keyframe_entry_or_order_is_refused(saved, name, fn, words):
    _meta_change(saved, fn)
    refused(saved, words)


def test_a_nan_pose_is_refused(saved):
    ms = members(saved)
    text = ms["keyframes.json"].decode().replace("[0.0, 1.0, 2.0, 0, 0, 0, 1.0]", "[NaN, 1.0, 2.0, 0, 0, 0, 1.0]", 1)
    assert "NaN" in text
    rewrite(saved, ms | {"keyframes.json": text.encode()})
    refused(saved, "'pose'")


# ---- index.faiss --------------------------------------------------------------------------------------

def test_index_bytes_faiss_cannot_read_are_a_map_error(saved):
    ms = members(saved)
    rewrite(saved, ms | {"index.faiss": b"IxM2" + b"\x07" * 200})
    refused(saved, "index.faiss")


def test_an_index_with_other_ids_than_the_keyframes_is_refused(tmp_path, saved):
    other = MapDatabase(DIM, "flat", "false")
    rng = np.random.default_rng(3)
    for i in range(6):
        other.add(rng.normal(size=DIM), Keyframe(100 + i, 10**9))
    index = faiss.serialize_index(other._cpu_index).tobytes()
    rewrite(saved, members(saved) | {"index.faiss": index})
    refused(saved, "ids")


def test_an_index_of_another_type_than_the_header_says_is_refused(tmp_path, saved):
    hnsw = _map("hnsw")
    rewrite(saved, members(saved) | {"index.faiss": faiss.serialize_index(hnsw._cpu_index).tobytes()})
    refused(saved, "IxFI", "IHNf")


def _hnsw_bytes(db):
    return bytearray(faiss.serialize_index(db._cpu_index).tobytes())


def test_an_hnsw_graph_linking_a_missing_vector_is_refused_before_faiss_sees_it(tmp_path):
    db = _map("hnsw", n=20)
    path = db.save(tmp_path / "h.vprmap")
    assert len(load(path)) == 20  # control
    data = _hnsw_bytes(db)
    # neighbours vector: find it as the 5th vector after the IHNf header; patch its first link out of range
    at = data.index(b"IHNf") + 4 + struct.calcsize("<iqqq?i")
    for itemsize in (8, 4, 4, 8):  # assign_probas, cum_nneighbor_per_level, levels, offsets
        (n,) = struct.unpack_from("<Q", data, at)
        at += 8 + n * itemsize
    data[at + 8:at + 12] = struct.pack("<i", 10**6)
    rewrite(path, members(path) | {"index.faiss": bytes(data)})
    refused(path, "hnsw graph links a vector that does not exist")


def test_an_index_length_field_claiming_terabytes_is_refused_without_allocating(saved):
    ms = members(saved)
    data = bytearray(ms["index.faiss"])
    at = data.index(b"IxFI") + 4 + struct.calcsize("<iqqq?i")
    data[at:at + 8] = struct.pack("<Q", 1 << 39)  # faiss would resize a vector to 2 TB before reading
    rewrite(saved, ms | {"index.faiss": bytes(data)})
    peak = refused_peak(saved, "index.faiss")
    assert peak < 8 << 20


# ---- zip directory: sizes, compression, members ---------------------------------------------------------

def test_a_compressed_member_is_refused(saved):
    rewrite(saved, members(saved), compress=zipfile.ZIP_DEFLATED)
    refused(saved, "compressed")


def test_a_zip_bomb_is_refused_without_inflating_it(saved):
    ms = members(saved)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as zf:
        for name, data in ms.items():
            if name == "keyframes.json":
                zf.writestr(zipfile.ZipInfo(name), b" " * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                zf.writestr(name, data)
    saved.write_bytes(bomb.getvalue())
    assert saved.stat().st_size < 1 << 20
    peak = refused_peak(saved, "compressed")
    assert peak < 8 << 20, f"{peak >> 20} MB allocated while refusing a 64 MB bomb"


def _set_declared_size(path, member, size):
    """Patch a member's sizes in the central directory (and local header) to `size`."""
    data = bytearray(path.read_bytes())
    pos = 0
    while True:
        pos = data.index(b"PK\x01\x02", pos)
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + name_len].decode() == member:
            struct.pack_into("<II", data, pos + 20, size, size)
            local = struct.unpack_from("<I", data, pos + 42)[0]
            struct.pack_into("<II", data, local + 18, size, size)
            break
        pos += 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", ["index.faiss", "keyframes.json", "local.npz", "header.json"])
def test_a_huge_declared_member_size_is_refused_before_reading(saved, member):
    _set_declared_size(saved, member, 0xFFFFFFF0)
    refused(saved, member, "declares")


def test_members_must_be_exactly_those_of_the_version(saved):
    ms = members(saved)
    rewrite(saved, ms | {"extra.bin": b"x"})
    refused(saved, "extra.bin")
    ms.pop("local.npz")
    rewrite(saved, ms)
    refused(saved, "local.npz")


def test_swapped_members_are_refused(saved):
    ms = members(saved)
    swapped = ms | {"keyframes.json": ms["index.faiss"], "index.faiss": ms["keyframes.json"]}
    rewrite(saved, swapped)
    refused(saved)


# ---- local.npz -------------------------------------------------------------------------------------------

def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_local_features_with_a_pickled_array_are_refused(saved):
    ms = members(saved)
    with np.load(io.BytesIO(ms["local.npz"])) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["ids"] = np.array([object()], dtype=object)
    rewrite(saved, ms | {"local.npz": _npz(**arrays)})
    refused(saved, "local features")


def test_local_features_declaring_a_huge_shape_are_refused_without_allocating(saved):
    ms = members(saved)
    data = bytearray(ms["local.npz"])
    at = data.index(b"'shape': (", data.index(b"desc.npy"))
    end = data.index(b"\n", at)  # the npy header is padded with spaces up to its newline
    patched = b"'shape': (4000000000, 8), }".ljust(end - at)
    assert len(patched) == end - at
    data[at:end] = patched
    rewrite(saved, ms | {"local.npz": bytes(data)})
    peak = refused_peak(saved, "local features")
    assert peak < 8 << 20


# ---- writing ----------------------------------------------------------------------------------------------

def test_save_refuses_a_map_the_reader_would_refuse_and_writes_nothing(tmp_path):
    db = _map(n=6)
    with pytest.raises(MapError, match="max_file_mb"):
        db.save(tmp_path / "small_cap.vprmap", max_bytes=200)
    assert list(tmp_path.iterdir()) == []


def test_every_index_type_round_trips_through_the_checks(tmp_path):
    """The byte-layout walker must accept what this FAISS writes (a FAISS upgrade that changes it fails here)."""
    from vpr_core.map_index import INDEX_LAYOUTS, INDEX_TYPES
    assert set(INDEX_LAYOUTS) == set(INDEX_TYPES.names())
    for index in INDEX_TYPES.names():
        for n in (0, 1, 7, 300):
            db = _map(index, n=n)
            back = load(db.save(tmp_path / f"{index}{n}.vprmap"))
            assert len(back) == n and back.keyframes == db.keyframes


def test_is_map_file_tells_maps_from_other_files(tmp_path, saved):
    from vpr_core.map_file import is_map_file
    assert is_map_file(saved)
    (tmp_path / "notes.txt").write_text("my notes")
    assert not is_map_file(tmp_path / "notes.txt")
    assert not is_map_file(tmp_path / "missing")
    assert not is_map_file(tmp_path)
    assert not is_map_file("/dev/null")


def test_local_features_with_a_huge_zip_directory_are_refused_without_parsing_it(saved):
    """100k tiny entries: zipfile would build 100k ZipInfo objects (~50 MB) before any name check."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(100_000):
            zf.writestr(f"{k}.npy", b"")
    rewrite(saved, members(saved) | {"local.npz": buf.getvalue()}, local_count=6)  # a header that allows its size
    peak = refused_peak(saved, "local features")
    assert peak < 2 * len(buf.getvalue()) + (4 << 20), f"{peak >> 20} MB to refuse it"
