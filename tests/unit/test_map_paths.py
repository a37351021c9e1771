"""vpr_core.map_paths: where map services may read and write, what a save may replace, and the
clean-up after a crash (unreadable maps moved aside, stale temporary files of interrupted saves)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from vpr_core.config import MapConfig
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase
from vpr_core.map_paths import (MapPathError, check_overwritable, clean_stale_temporaries, confine, map_directory,
                                move_aside)


def _map(path):
    db = MapDatabase(8, "flat", "false")
    db.add(np.ones(8), Keyframe(0, 1))
    return db.save(path)


# ---- confinement -------------------------------------------------------------------------------------------

def test_relative_paths_resolve_inside_the_directory(tmp_path):
    assert confine("a.vprmap", tmp_path, False) == tmp_path.resolve() / "a.vprmap"
    assert confine("sub/../b.vprmap", tmp_path, False) == tmp_path.resolve() / "b.vprmap"


@pytest.mark.parametrize("requested", ["../escape.vprmap", "sub/../../escape.vprmap", "/etc/passwd", "~/x.vprmap"])
def test_escapes_and_outside_absolute_paths_are_refused(tmp_path, requested):
    with pytest.raises(MapPathError, match="outside map.directory"):
        confine(requested, tmp_path / "maps", False)


def test_absolute_path_inside_the_directory_is_fine(tmp_path):
    assert confine(str(tmp_path / "x.vprmap"), tmp_path, False) == tmp_path.resolve() / "x.vprmap"


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MapPathError, match="outside"):
        confine("link/x.vprmap", tmp_path / "maps", False)


def test_allow_outside_directory_lets_absolute_paths_through(tmp_path):
    assert confine(str(tmp_path / "x.vprmap"), tmp_path / "maps", True) == tmp_path.resolve() / "x.vprmap"


@pytest.mark.parametrize("requested, words", [("", "empty"), ("a\0b", "NUL"), ("~nosuchuser123/x", "home")])
def test_unusable_paths_say_why(tmp_path, requested, words):
    with pytest.raises(MapPathError, match=words):
        confine(requested, tmp_path, True)


def test_relative_path_without_a_directory_is_refused(tmp_path):
    with pytest.raises(MapPathError, match="map.directory"):
        confine("x.vprmap", None, False)


def test_map_directory_defaults_to_the_folder_of_map_path(tmp_path):
    assert map_directory(MapConfig(path=str(tmp_path / "m.vprmap"))) == tmp_path.resolve()
    assert map_directory(MapConfig(path="", directory=str(tmp_path / "d"))) == (tmp_path / "d").resolve()
    assert map_directory(MapConfig()) is None


# ---- what a save may replace ---------------------------------------------------------------------------

def test_only_maps_or_nothing_may_be_overwritten(tmp_path):
    check_overwritable(tmp_path / "new.vprmap")  # nothing there
    check_overwritable(_map(tmp_path / "old.vprmap"))  # one of ours
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    with pytest.raises(MapPathError, match="not a vpr_ros map"):
        check_overwritable(notes)
    with pytest.raises(MapPathError, match="not a vpr_ros map"):
        check_overwritable(tmp_path)
    assert notes.read_text() == "precious"


# ---- after a crash -------------------------------------------------------------------------------------

def test_move_aside_never_overwrites_and_names_the_target(tmp_path):
    bad = tmp_path / "m.vprmap"
    bad.write_bytes(b"broken map")
    first = move_aside(bad)
    assert re.fullmatch(r"m\.vprmap\.unreadable-\d{8}T\d{6}", first.name) and first.read_bytes() == b"broken map"
    assert not bad.exists()
    bad.write_bytes(b"broken again")
    second = move_aside(bad)
    assert second != first and first.read_bytes() == b"broken map" and second.read_bytes() == b"broken again"


def test_stale_temporaries_of_interrupted_saves_are_removed_and_others_kept(tmp_path):
    good = _map(tmp_path / "m.vprmap")
    partial = good.read_bytes()[:300]  # a save killed half way: a zip that starts with header.json
    (tmp_path / "m.vprmap.tmp").write_bytes(partial)
    (tmp_path / "m.vprmap.ids.tmp").write_text('{"magic": "vpr_ros-ids", "ne')
    (tmp_path / "other.vprmap.tmp").write_bytes(partial)  # a service save to another name
    (tmp_path / "notes.tmp").write_text("not ours")
    (tmp_path / "empty.tmp").write_bytes(b"")
    removed = clean_stale_temporaries(tmp_path / "m.vprmap", tmp_path)
    assert sorted(p.name for p in removed) == ["m.vprmap.ids.tmp", "m.vprmap.tmp", "other.vprmap.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tmp", "m.vprmap", "notes.tmp"]


def test_stale_temporary_of_the_map_path_is_removed_even_when_empty(tmp_path):
    (tmp_path / "m.vprmap.tmp").write_bytes(b"")  # killed right after creating it
    assert [p.name for p in clean_stale_temporaries(tmp_path / "m.vprmap", None)] == ["m.vprmap.tmp"]
    os.mkdir(tmp_path / "m.vprmap.tmp")  # never a directory
    assert clean_stale_temporaries(tmp_path / "m.vprmap", None) == []
