"""A map that outlives a run and is shared: each load starts a new session, loops close within and across
sessions and say which sessions (and robots) they join, localisation adds nothing to an old map, a map of
another model's descriptors is refused, and two maps merge without reusing an id (`vpr-core map-merge`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from map_mutations import pack, read_members

from offline_eval.protocol import extract_dataset, stream_stamps
from vpr_core.cli import main as cli
from vpr_core.config import load_config
from vpr_core.datasets import load_dataset
from vpr_core.keyframes import Keyframe
from vpr_core.local_features import LocalFeatures
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.map_merge import merge_maps
from vpr_core.pipeline import PlaceRecognizer


@pytest.fixture(scope="module")
def corridor(corridor_root, default_extractor):
    ds = load_dataset(corridor_root)
    f = extract_dataset(default_extractor, ds, progress=False)
    return ds, f.database.global_desc, f.queries.global_desc


def _recognizer(extractor, robot: str = "", **overrides) -> PlaceRecognizer:
    return PlaceRecognizer(load_config(overrides={"map.use_gpu": "false", "map.robot_id": robot, **overrides}),
                           extractor=extractor)


def _drive(rec: PlaceRecognizer, descs: np.ndarray, offset_ns: int = 0) -> list:
    return [rec.process_descriptor(d, t, "camera") for d, t in zip(descs, stream_stamps(len(descs), offset_ns))]


def test_a_loaded_map_continues_in_a_new_session_and_closes_loops_across_sessions(tmp_path, corridor,
                                                                                  default_extractor):
    ds, database, queries = corridor
    first = _recognizer(default_extractor, "robot_a")
    _drive(first, database)
    assert {kf.session for kf in first.db.keyframes.values()} == {0} and first.db.sessions()[0][1] == ["robot_a"]
    first.save_map(tmp_path / "day1.map")

    second = _recognizer(default_extractor, "robot_b")
    assert second.load_map(tmp_path / "day1.map") == len(database)
    results = _drive(second, queries, offset_ns=3600 * 10**9)  # an hour later
    closures = [r.loop_closure for r in results if r.loop_closure is not None]
    assert len(closures) >= 10, "corridor's second traversal must close loops onto the first day's map"
    n = len(database)
    assert all(c.query.session == 1 and c.query.robot == "robot_b" for c in closures)
    assert all(c.match.keyframe.session == 0 and c.match.keyframe.robot == "robot_a" for c in closures)
    correct = sum(c.match.id in set(ds.positives[c.query.id - n].tolist()) for c in closures)
    assert correct == len(closures)  # precision first: every cross-session closure at the right place
    assert second.db.sessions()[1] == (len(queries), ["robot_b"]) and second.detector.session == 1

    second.save_map(tmp_path / "day2.map")  # a third run starts session 2
    third = _recognizer(default_extractor, "robot_a")
    third.load_map(tmp_path / "day2.map")
    assert third.detector.session == 2 and third.db.next_session == 2


def test_localisation_against_an_old_map_adds_nothing(tmp_path, corridor, default_extractor):
    _, database, queries = corridor
    first = _recognizer(default_extractor)
    _drive(first, database)
    first.save_map(tmp_path / "old.map")
    loc = _recognizer(default_extractor)
    loc.load_map(tmp_path / "old.map")
    loc.set_mode("localization")
    results = _drive(loc, queries, offset_ns=3600 * 10**9)
    assert len(loc.db) == len(database) and not any(r.place_match.is_keyframe for r in results)
    assert sum(r.loop_closure is not None for r in results) >= 10


def test_a_map_of_another_model_is_refused_and_an_unrecorded_one_adopted(tmp_path, corridor, default_extractor,
                                                                         caplog):
    _, database, _ = corridor
    rec = _recognizer(default_extractor)
    assert rec.db.model == default_extractor.fingerprint and "@" in rec.db.model
    _drive(rec, database[:30])
    rec.save_map(tmp_path / "ours.map")
    other = MapDatabase.load(tmp_path / "ours.map", use_gpu="false")
    assert other.model == default_extractor.fingerprint  # recorded in the file (format version 3)
    other.model = "netvlad_same_size@0123456789abcdef"  # another model with 1280-D descriptors
    other.save(tmp_path / "theirs.map")
    fresh = _recognizer(default_extractor)
    with pytest.raises(MapError, match="netvlad_same_size@0123456789abcdef.*not comparable"):
        fresh.load_map(tmp_path / "theirs.map")
    assert len(fresh.db) == 0  # the current map is kept
    # renamed config, same weights: the same descriptors
    other.model = "renamed@" + default_extractor.fingerprint.rpartition("@")[2]
    other.save(tmp_path / "renamed.map")
    assert fresh.load_map(tmp_path / "renamed.map") == 30
    other.model = ""  # a map from before format 3 records no model: assumed ours, with a warning
    other.save(tmp_path / "unrecorded.map")
    assert fresh.load_map(tmp_path / "unrecorded.map") == 30 and fresh.db.model == default_extractor.fingerprint
    assert "does not record the model" in caplog.text


def _local(i: int) -> LocalFeatures:
    rng = np.random.default_rng(i)
    d = rng.normal(size=(6, 8)).astype(np.float32)
    return LocalFeatures(rng.uniform(0, 100, (6, 2)).astype(np.float32), d / np.linalg.norm(d, axis=1, keepdims=True),
                         (120, 160))


def _small_map(descs: np.ndarray, robot: str, session: int, model: str = "m@00000000000000aa") -> MapDatabase:
    db = MapDatabase(descs.shape[1], "flat", "false", model=model)
    for i, d in enumerate(descs):
        db.add(d, Keyframe(i, (i + 1) * 10**8, "cam", session=session, robot=robot), _local(i))
    db.id_floor = len(descs) + 5  # ids handed out to frames that did not become keyframes
    return db


def test_merge_keeps_both_maps_and_reuses_no_id(tmp_path, corridor):
    _, database, queries = corridor
    a, b = _small_map(database[:40], "robot_a", 0), _small_map(queries[:30], "robot_b", 0)
    merged = merge_maps(a, b)
    assert len(merged) == 70 and merged.sessions() == {0: (40, ["robot_a"]), 1: (30, ["robot_b"])}
    assert sorted(merged.keyframes)[:40] == list(range(40)) and min(sorted(merged.keyframes)[40:]) == a.next_id
    assert merged.next_id == a.next_id + b.next_id  # neither map's handed-out ids come back
    kid = a.next_id + 7  # b's keyframe 7: its descriptor, local features and robot came along
    assert merged.search(queries[7], 1)[0].id == kid and merged.keyframes[kid].robot == "robot_b"
    assert np.array_equal(merged.local.get(kid).desc, b.local.get(7).desc)
    merged.save(tmp_path / "fleet.map")
    back = MapDatabase.load(tmp_path / "fleet.map", use_gpu="false")
    assert back.sessions() == merged.sessions() and back.model == a.model and back.next_id == merged.next_id


def test_merge_refuses_maps_of_different_models(corridor):
    _, database, _ = corridor
    a = _small_map(database[:5], "a", 0)
    with pytest.raises(MapError, match="different models"):
        merge_maps(a, _small_map(database[:5], "b", 0, model="other@00000000000000bb"))
    with pytest.raises(MapError, match="1280-D map with a 64-D"):
        merge_maps(a, _small_map(database[:5, :64], "b", 0))
    unknown = _small_map(database[:5], "b", 0, model="")
    with pytest.raises(MapError, match="assume-same-model"):
        merge_maps(a, unknown)
    assert len(merge_maps(a, unknown, assume_same_model=True)) == 10


def test_cli_map_merge_and_map_info(tmp_path, corridor, capsys):
    _, database, queries = corridor
    _small_map(database[:12], "robot_a", 0).save(tmp_path / "a.map")
    _small_map(queries[:8], "robot_b", 0).save(tmp_path / "b.map")
    assert cli(["map-merge", str(tmp_path / "a.map"), str(tmp_path / "b.map"), "--out", str(tmp_path / "ab.map")]) == 0
    assert "20 keyframes" in capsys.readouterr().out
    assert cli(["map-info", str(tmp_path / "ab.map")]) == 0
    out = capsys.readouterr().out
    assert "session 0: 12 keyframes, robot robot_a" in out and "session 1: 8 keyframes, robot robot_b" in out
    _small_map(database[:3], "c", 0, model="other@00000000000000cc").save(tmp_path / "c.map")
    assert cli(["map-merge", str(tmp_path / "a.map"), str(tmp_path / "c.map"), "--out", str(tmp_path / "x.map")]) == 2
    assert "different models" in capsys.readouterr().err and not (tmp_path / "x.map").exists()


def _rewrite(src, dst, edit_header, edit_meta) -> None:
    """Copy a map file with its header and keyframes.json edited (checksums kept consistent)."""
    ms = read_members(src.read_bytes())
    meta, header = json.loads(ms["keyframes.json"]), json.loads(ms["header.json"])
    edit_meta(meta)
    edit_header(header)
    dst.write_bytes(pack({**ms, "keyframes.json": json.dumps(meta).encode(), "header.json": json.dumps(header).encode()}))


def test_a_version_2_map_loads_as_session_0_without_a_recorded_model(tmp_path, corridor):
    _, database, _ = corridor
    _small_map(database[:4], "a", 2).save(tmp_path / "v3.map")

    def to_v2(header):
        header["version"] = 2
        del header["model"]

    def no_sessions(meta):
        for kf in meta["keyframes"]:
            del kf["session"], kf["robot"]
    _rewrite(tmp_path / "v3.map", tmp_path / "v2.map", to_v2, no_sessions)
    db = MapDatabase.load(tmp_path / "v2.map", use_gpu="false")
    assert len(db) == 4 and db.model == "" and db.sessions() == {0: (4, [""])} and db.next_session == 1
    with pytest.raises(MapError, match="unknown field"):  # a version 2 file never held a model field
        _rewrite(tmp_path / "v3.map", tmp_path / "bad.map", lambda h: h.update(version=2), lambda m: None)
        MapDatabase.load(tmp_path / "bad.map", use_gpu="false")


@pytest.mark.parametrize("field, value", [("session", -1), ("session", "1"), ("session", 1 << 31), ("robot", 5),
                                          ("robot", "r" * 300)])
def test_a_bad_session_or_robot_in_the_file_is_refused(tmp_path, corridor, field, value):
    _, database, _ = corridor
    _small_map(database[:3], "a", 0).save(tmp_path / "m.map")
    _rewrite(tmp_path / "m.map", tmp_path / "bad.map", lambda h: None,
             lambda meta: meta["keyframes"][1].__setitem__(field, value))
    with pytest.raises(MapError, match=f"keyframe entry 1 field '{field}'"):
        MapDatabase.load(tmp_path / "bad.map", use_gpu="false")
