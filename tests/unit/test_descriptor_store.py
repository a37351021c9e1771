"""A compressed index's exact descriptors (vpr_core.descriptor_store): rows come back as added (float16), across
chunks and from the spill file under a memory budget; a spill file that breaks costs counted zeros or keeps
rows in memory, never an exception; a loaded buffer is checked row by row; and an `ivf_rabitq` map under a
budget searches, matches sequences, rebuilds and saves exactly as one without."""
from __future__ import annotations

import os

import numpy as np
import pytest

from vpr_core import descriptor_store
from vpr_core.descriptor_store import DescriptorStore
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.map_ivf import IvfSettings

DIM = 24


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(descriptor_store, "CHUNK_ROWS", 8)  # 8 rows x 48 B: budgets in hundreds of bytes


def _unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rows_come_back_as_added_across_chunks_and_in_any_order():
    x = _unit(30)
    store = DescriptorStore(DIM)
    store.append(x[:5])
    store.append(x[5:])  # fills chunk 0, then 1, 2, 3 (partial)
    assert len(store) == 30 and store.nbytes_in_memory == 4 * 8 * 2 * DIM
    pos = np.array([29, 0, 8, 7, 8, 15, 16])
    np.testing.assert_allclose(store.rows(pos), x[pos], atol=1e-3)
    assert store.rows(np.zeros(0, np.int64)).shape == (0, DIM)
    np.testing.assert_array_equal(np.concatenate(list(store.blocks())), x.astype(np.float16))
    assert sum(len(b) for b in store.blocks(13)) == 13
    with pytest.raises(IndexError):
        store.rows([30])


def test_a_budget_moves_the_oldest_full_chunks_to_disk_and_reads_them_back(tmp_path):
    x = _unit(45, seed=1)
    store = DescriptorStore(DIM)
    store.limit(2 * 8 * 2 * DIM, str(tmp_path))  # two chunks in memory
    for row in x:
        store.append(row[None])
        assert store.nbytes_in_memory <= 2 * 8 * 2 * DIM
    assert store.spilled_rows == 32 and len(os.listdir(tmp_path)) == 0  # anonymous scratch file in tmp_path
    pos = np.array([0, 1, 2, 9, 31, 32, 44, 3])
    np.testing.assert_allclose(store.rows(pos), x[pos], atol=1e-3)
    assert store.spill_reads == 6  # 0-2 one read, 3 is in that chunk too, 9 and 31 one each: rows counted
    np.testing.assert_array_equal(np.concatenate(list(store.blocks())), x.astype(np.float16))


def test_an_unreadable_spilled_row_scores_zero_and_is_counted(tmp_path, caplog):
    x = _unit(40, seed=2)
    store = DescriptorStore(DIM)
    store.limit(8 * 2 * DIM, str(tmp_path))
    store.append(x)
    os.ftruncate(store._spill._fh.fileno(), 8 * 2 * DIM)  # the disk lost all but the first chunk
    got = store.rows(np.array([1, 12, 39]))
    np.testing.assert_allclose(got[[0, 2]], x[[1, 39]], atol=1e-3)
    assert not got[1].any() and store.spill_failures == 1 and "could not be read back" in caplog.text


def test_a_spill_file_that_cannot_be_made_keeps_everything_in_memory(tmp_path, caplog):
    store = DescriptorStore(DIM)
    store.limit(8 * 2 * DIM, str(tmp_path / "missing"))
    x = _unit(40, seed=3)
    store.append(x)
    assert store.budget == 0 and store.spill_failures == 1 and store.spilled_rows == 0
    np.testing.assert_allclose(store.rows(np.arange(40)), x, atol=1e-3)
    assert "keeping them in memory" in caplog.text


def test_a_loaded_buffer_is_checked_and_viewed_then_copied_under_a_budget(tmp_path):
    x = _unit(20, seed=4)
    buf = bytearray(x.astype("<f2").tobytes())
    store = DescriptorStore.from_buffer(buf, DIM, 20)
    np.testing.assert_allclose(store.rows(np.arange(20)), x, atol=1e-3)
    assert store._chunks[0].base is not None  # a view of the file's buffer, no copy
    store.append(_unit(3, seed=5))  # the partial last chunk was copied, so it grows
    store.limit(8 * 2 * DIM, str(tmp_path))
    assert all(c is None or c.base is None for c in store._chunks)  # nothing keeps the buffer alive
    for bad, match in ((buf[:-2], "hold"), (b"\x00\x7e" + bytes(buf[2:]), "NaN"),
                       (bytes(2 * DIM) + bytes(buf[2 * DIM:]), "unit length")):
        with pytest.raises(ValueError, match=match):
            DescriptorStore.from_buffer(bytearray(bad), DIM, 20)


def _rabitq_map(x: np.ndarray, budget: int, spill: str) -> MapDatabase:
    db = MapDatabase(x.shape[1], "ivf_rabitq", "false", ivf=IvfSettings(nprobe=4, train_at=100, background=False))
    db.store.limit(budget, spill)
    for i, d in enumerate(x):
        db.add(d, Keyframe(i, (i + 1) * 100_000_000))
    return db


def test_an_ivf_rabitq_map_under_a_budget_behaves_exactly_as_one_without(tmp_path):
    """Search results, stored descriptors, rebuilds (trained at 100, 200, 400 from the exact rows) and the saved
    file are the same whether 2 of 60 chunks or all are in memory; the loaded file limits again."""
    x = _unit(480, seed=6, dim=64)
    free = _rabitq_map(x, 0, "")
    capped = _rabitq_map(x, 2 * 8 * 128, str(tmp_path))
    assert capped.store.spilled_rows >= 460 and capped.ivf_lists == free.ivf_lists > 1
    for q in _unit(20, seed=7, dim=64):
        a, b = free.search(q, 5, 481 * 100_000_000, 10, 0), capped.search(q, 5, 481 * 100_000_000, 10, 0)
        assert [(c.keyframe.id, c.score) for c in a] == [(c.keyframe.id, c.score) for c in b]
    np.testing.assert_array_equal(free.descriptors_at(np.arange(480)), capped.descriptors_at(np.arange(480)))
    assert capped.store.spill_reads > 0
    one, two = free.save(tmp_path / "free.vprmap"), capped.save(tmp_path / "capped.vprmap")
    assert one.read_bytes() == two.read_bytes()
    back = MapDatabase.load(two, use_gpu="false")
    back.store.limit(8 * 128, str(tmp_path))
    assert back.store.nbytes_in_memory <= 8 * 128
    np.testing.assert_array_equal(back.descriptors_at(np.arange(480)), free.descriptors_at(np.arange(480)))


def test_a_damaged_descriptor_member_is_refused_with_the_map_left_as_is(tmp_path):
    import hashlib
    import json
    import zipfile
    x = _unit(50, seed=8, dim=64)
    path = _rabitq_map(x, 0, "").save(tmp_path / "m.vprmap")
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    assert len(members["descriptors.f16"]) == 50 * 64 * 2
    for cut, match in ((False, "checksum"), (True, "descriptors are unreadable")):
        members["descriptors.f16"] = members["descriptors.f16"][:-128]  # a keyframe short
        if cut:  # with a matching checksum: the member's own size check refuses it
            header = json.loads(members["header.json"])
            header["sha256_descriptors"] = hashlib.sha256(members["descriptors.f16"]).hexdigest()
            members["header.json"] = json.dumps(header).encode()
        with zipfile.ZipFile(tmp_path / "bad.vprmap", "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        with pytest.raises(MapError, match=match):
            MapDatabase.load(tmp_path / "bad.vprmap", use_gpu="false")


def test_the_config_budget_reaches_new_and_loaded_maps_and_needs_ivf_rabitq(default_extractor, corridor_images,
                                                                          tmp_path):
    from vpr_core.config import ConfigError, load_config
    from vpr_core.pipeline import PlaceRecognizer
    with pytest.raises(ConfigError, match="max_descriptor_mb needs index: ivf_rabitq"):
        load_config(overrides={"map.max_descriptor_mb": 64})
    with pytest.raises(ConfigError, match="ivf_shortlist"):
        load_config(overrides={"map.index": "ivf_rabitq", "map.ivf_shortlist": 0})
    cfg = load_config(overrides={"map.index": "ivf_rabitq", "map.max_descriptor_mb": 3, "map.ivf_shortlist": 40,
                                 "map.spill_directory": str(tmp_path), "map.use_gpu": "false"})
    pr = PlaceRecognizer(cfg, extractor=default_extractor)
    assert pr.db.store.budget == 3 << 20 and pr.db.ivf.shortlist == 40 and pr.db.store.spill_dir == str(tmp_path)
    for i, d in enumerate(default_extractor(corridor_images)):
        pr.db.add(d, Keyframe(i, (i + 1) * 100_000_000))
    other = PlaceRecognizer(cfg, extractor=default_extractor)
    assert other.load_map(pr.save_map(tmp_path / "m.vprmap")) == 4 and other.db.store.budget == 3 << 20
