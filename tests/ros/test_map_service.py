"""vpr_ros.map_service without ROS: saves are redirected when an unreadable map cannot be moved aside,
the periodic autosave writes only when the map changed, service handlers refuse paths outside the folder."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from vpr_core.config import load_config
from vpr_core.map_database import MapDatabase
from vpr_core.pipeline import PlaceRecognizer
from vpr_ros import map_service
from vpr_ros.map_service import MapFiles

DIM = 16


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg, **kw: self.lines.append((level, msg))

    def text(self):
        return "\n".join(m for _, m in self.lines)


def _files(tmp_path, **overrides):
    cfg = load_config(overrides={"map.use_gpu": "false", "map.path": str(tmp_path / "m.vprmap"), **overrides})
    pr = PlaceRecognizer(cfg, extractor=SimpleNamespace(dim=DIM, has_local=False, device="cpu"))
    return MapFiles(pr, cfg.map, Log()), pr


def test_unmovable_unreadable_map_is_left_alone_and_saves_go_beside_it(tmp_path, monkeypatch):
    (tmp_path / "m.vprmap").write_bytes(b"not a map")

    def cannot_move(path):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(map_service, "move_aside", cannot_move)
    files, pr = _files(tmp_path, **{"map.autosave_period_s": 0.0})
    files.start()
    pr.process_descriptor(np.ones(DIM), 1, "cam")
    files.shutdown()
    assert (tmp_path / "m.vprmap").read_bytes() == b"not a map"
    beside = list(tmp_path.glob("m.vprmap.recovered-*"))
    assert len(beside) == 1 and len(MapDatabase.load(beside[0])) == 1
    assert f"saves its map to {beside[0]}" in files.log.text()


def test_periodic_autosave_writes_only_when_the_map_changed(tmp_path):
    files, pr = _files(tmp_path, **{"map.autosave_period_s": 0.2})
    files.start()
    try:
        pr.process_descriptor(np.ones(DIM), 1, "cam")
        deadline = time.monotonic() + 10
        while not (tmp_path / "m.vprmap").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = (tmp_path / "m.vprmap").stat().st_mtime_ns
        time.sleep(0.7)
        assert (tmp_path / "m.vprmap").stat().st_mtime_ns == first, "saved again without a change"
        assert sum("autosaved map" in m for _, m in files.log.lines) == 1
    finally:
        files.shutdown()


@pytest.mark.parametrize("requested", ["../x.vprmap", "/etc/x.vprmap"])
def test_service_handlers_refuse_paths_outside_the_directory(tmp_path, requested):
    files, pr = _files(tmp_path)
    res = files.handle_save(SimpleNamespace(path=requested), SimpleNamespace())
    assert not res.success and "outside map.directory" in res.message and res.num_keyframes == 0
    res = files.handle_load(SimpleNamespace(path=requested), SimpleNamespace())
    assert not res.success and "kept the current map" in res.message


def test_a_map_path_outside_an_explicit_directory_stops_the_start(tmp_path):
    from vpr_core.map_paths import MapPathError
    files, _ = _files(tmp_path, **{"map.directory": str(tmp_path / "maps")})
    with pytest.raises(MapPathError, match="outside map.directory"):
        files.start()


def test_map_path_changed_at_run_time_moves_saves_and_the_id_floor(tmp_path):
    (tmp_path / "maps").mkdir()
    files, pr = _files(tmp_path, **{"map.path": str(tmp_path / "maps" / "a.vprmap"), "map.autosave_period_s": 0.0})
    files.start()
    pr.process_descriptor(np.ones(DIM), 1, "cam")
    files.set_path("b.vprmap")  # relative: inside the map folder
    pr.process_descriptor(np.full(DIM, 2.0) + np.arange(DIM), 2, "cam")
    files.shutdown()
    assert not (tmp_path / "maps" / "a.vprmap").exists()
    assert len(MapDatabase.load(tmp_path / "maps" / "b.vprmap")) == 2
    assert (tmp_path / "maps" / "b.vprmap.ids").read_text().count('"next_id": 2') == 1
