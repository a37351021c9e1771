"""Where map files may be read and written, and how they are kept safe around crashes.

Service paths are confined to one folder (`map.directory`, default the folder of `map.path`): relative
paths resolve inside it, `..` escapes, symlinks out of it and absolute paths elsewhere are refused
unless `map.allow_outside_directory`. A save replaces only a vpr_ros map (or nothing); a map that
failed to load is moved aside, never overwritten; temporary files left by an interrupted save are
recognised (by name, and by content: a zip whose first member is header.json) and removed.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import List, Optional

from vpr_core.config import MapConfig
from vpr_core.map_file import is_map_file
from vpr_core.map_schema import HEADER_MEMBER


class MapPathError(ValueError):
    """A map path is not allowed or not usable; the message says why and what to do."""


def map_directory(cfg: MapConfig) -> Optional[Path]:
    """The folder map services are confined to: map.directory, else map.path's folder, else None."""
    if cfg.directory:
        return Path(cfg.directory).expanduser().resolve()
    if cfg.path:
        return Path(cfg.path).expanduser().resolve().parent
    return None


def confine(requested: str, directory: Optional[Path], allow_outside: bool) -> Path:
    """The absolute, resolved path `requested` names; raises MapPathError if it leaves `directory`."""
    if not requested:
        raise MapPathError("the map path is empty: give a path or set map.path")
    if "\0" in requested:
        raise MapPathError(f"the map path {requested!r} contains a NUL byte")
    try:
        path = Path(requested).expanduser()
    except RuntimeError as exc:  # "~user" of an unknown user, or no home directory
        raise MapPathError(f"cannot expand {requested!r}: {exc} (no such home directory)") from None
    if not path.is_absolute():
        if directory is None:
            raise MapPathError(f"relative map path {requested!r} but no folder to resolve it in: set map.directory "
                               f"(or map.path)")
        path = directory / path
    resolved = path.resolve()  # follows symlinks and '..': what would really be opened
    if directory is not None and resolved.is_relative_to(directory.resolve()):
        return resolved
    if allow_outside:
        return resolved
    where = f"map.directory {directory}" if directory is not None else "map.directory (not set)"
    raise MapPathError(f"map path {requested!r} resolves to {resolved}, outside {where}; use a path inside it "
                       f"or set map.allow_outside_directory: true")


def check_overwritable(path: Path) -> None:
    """A save may replace `path` only if nothing is there or it is a vpr_ros map; else MapPathError."""
    if not os.path.lexists(path):
        return
    if not is_map_file(path):
        raise MapPathError(f"{path} exists and is not a vpr_ros map: refusing to overwrite it; move it away or "
                           f"choose another path")


def move_aside(path: Path) -> Path:
    """Rename `path` to `<name>.unreadable-<YYYYmmddTHHMMSS>[-N]` (never replacing anything); returns it."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        target = path.with_name(f"{path.name}.unreadable-{stamp}" + (f"-{n}" if n else ""))
        if not os.path.lexists(target):
            os.rename(path, target)
            return target
    raise FileExistsError(f"no free name to move {path} aside")


def _partial_map(path: Path) -> bool:
    """A zip local header naming header.json first: what MapDatabase.save writes first."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(30 + len(HEADER_MEMBER))
    except OSError:
        return False
    return head[:4] == b"PK\x03\x04" and head[30:] == HEADER_MEMBER.encode()


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def stale_temporaries(map_path: Optional[Path], directory: Optional[Path]) -> List[Path]:
    """Temporary files of interrupted saves: `<map>.tmp` and `<map>.ids.tmp` (whatever they hold), and
    `*.tmp` files in `directory` that hold a partial map."""
    found = []
    if map_path is not None:
        found += [p for p in (map_path.with_name(map_path.name + ".tmp"), map_path.with_name(map_path.name + ".ids.tmp"))
                  if _regular(p)]
    if directory is not None and directory.is_dir():
        found += [p for p in sorted(directory.glob("*.tmp")) if p not in found and _regular(p) and _partial_map(p)]
    return found


def clean_stale_temporaries(map_path: Optional[Path], directory: Optional[Path]) -> List[Path]:
    """Remove what stale_temporaries finds; returns the files removed (for the log)."""
    removed = []
    for p in stale_temporaries(map_path, directory):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed

