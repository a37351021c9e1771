"""Query ids that survive kill -9: a small write-ahead file beside the map (`<map.path>.ids`).

Ids are published (PlaceMatch.query_id) long before the map is next saved, so a crash would let the
restarted node hand out the same ids again. Before an id is used, the file must promise a floor above
it; it is rewritten (temporary file, fsync, rename) once every `reserve` ids, so a crash skips at most
that many ids and never reuses one. A clean shutdown settles it to the exact next id.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vpr_core.map_file import fsync_dir

log = logging.getLogger(__name__)
MAGIC = "vpr_ros-ids"


class IdFloor:
    """The persisted lower bound for the next query id."""

    def __init__(self, path: str | Path, reserve: int = 100) -> None:
        self.path = Path(path)
        self.block = max(1, int(reserve))
        self._reserved = -1  # the floor this process has written (or read); ids below it are covered
        self._failing = False

    @property
    def tmp_path(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    def read(self) -> int:
        """The recorded floor (0 when there is no file; an unreadable file is logged and read as 0)."""
        try:
            data = json.loads(self.path.read_text())
            if not (isinstance(data, dict) and data.get("magic") == MAGIC and isinstance(data.get("next_id"), int)
                    and not isinstance(data["next_id"], bool) and data["next_id"] >= 0):
                raise ValueError(f"not a {MAGIC} record: {str(data)[:80]}")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error(f"id floor file {self.path} is unreadable ({exc}); ids continue from the map's own floor")
            return 0
        self._reserved = max(self._reserved, data["next_id"])
        return data["next_id"]

    def reserve(self, next_id: int) -> None:
        """Make sure the file promises a floor above `next_id` before that id is used."""
        if next_id < self._reserved:
            return
        try:
            self._write(next_id + self.block)
        except OSError as exc:
            if not self._failing:
                log.error(f"cannot write the id floor {self.path} ({exc.strerror}): after a crash, ids published "
                          f"since the last map save could be handed out again")
            self._failing = True
            return
        self._failing = False
        self._reserved = next_id + self.block

    def settle(self, next_id: int) -> None:
        """Record exactly `next_id` (clean shutdown: nothing more was handed out)."""
        self._write(next_id)
        self._reserved = next_id

    def _write(self, floor: int) -> None:
        tmp = self.tmp_path
        with open(tmp, "w") as fh:
            json.dump({"magic": MAGIC, "next_id": int(floor)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
