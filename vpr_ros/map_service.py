"""The node's map files: confined service paths, saves that never replace a foreign or unreadable file,
autoload that moves an unreadable map aside, clean-up after a crashed save, the id floor beside the map
and the periodic autosave. Plain Python around PlaceRecognizer and vpr_core.map_paths; the node wires
it to its services (through vpr_ros.services.guarded, so no call can raise), parameters and logger.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from vpr_core.config import MapConfig
from vpr_core.id_floor import IdFloor
from vpr_core.map_paths import (MapPathError, check_overwritable, clean_stale_temporaries, confine, map_directory,
                                move_aside)
from vpr_core.map_schema import MapError
from vpr_core.pipeline import PlaceRecognizer


class MapFiles:
    """Map files for one node: where they may live and how they are read, written and recovered."""

    def __init__(self, recognizer: PlaceRecognizer, cfg: MapConfig, log: Any) -> None:
        self.recognizer, self.cfg, self.log = recognizer, cfg, log
        self.directory = map_directory(cfg)  # fixed at start, like the folder a robot's maps live in
        self._redirect: Dict[Path, Path] = {}  # unreadable map that could not be moved -> where saves go instead
        self._saved: Optional[Tuple[int, int]] = None  # (map object, keyframes) at the last save to map.path
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- paths -------------------------------------------------------------------------------------
    def resolve(self, requested: str) -> Path:
        """The file a service request names ("" = map.path), confined to map.directory."""
        return confine(requested or self.cfg.path, self.directory, self.cfg.allow_outside_directory)

    def configured(self) -> Optional[Path]:
        return self.resolve("") if self.cfg.path else None

    # ---- start / stop --------------------------------------------------------------------------------
    def start(self) -> None:
        """After a crash: remove stale temporary files, autoload (an unreadable map is moved aside), make
        handed-out ids durable, start the periodic autosave. A map.path outside map.directory raises."""
        path = self.configured()
        for p in clean_stale_temporaries(path, self.directory):
            self.log.warning(f"removed {p}: a temporary file left by an interrupted save")
        if path is not None and self.cfg.autoload and os.path.lexists(path):
            self._autoload(path)
        if path is not None:
            self.recognizer.track_ids(IdFloor(path.with_name(path.name + ".ids"), self.cfg.id_reserve))
        if path is not None and self.cfg.autosave_period_s > 0:
            self._thread = threading.Thread(target=self._periodic, name="vpr_autosave", daemon=True)
            self._thread.start()

    def _autoload(self, path: Path) -> None:
        try:
            n = self.recognizer.load_map(path)
            self._saved = self._state()
            self.log.info(f"loaded map {path}: {n} keyframes")
            return
        except MapError as exc:
            reason = str(exc)
        try:
            aside = move_aside(path)
            self.log.error(f"{reason}; moved the unreadable map {path} to {aside} (kept, never overwritten); "
                           f"starting with an empty map, saved to {path}")
        except OSError as err:
            beside = path.with_name(f"{path.name}.recovered-{time.strftime('%Y%m%dT%H%M%S')}")
            self._redirect[path] = beside
            self.log.error(f"{reason}; could not move {path} aside ({err.strerror}), so it is left untouched and "
                           f"this run saves its map to {beside} instead")

    def shutdown(self) -> None:
        """Stop the periodic save, save to map.path if configured, settle the id floor."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60.0)
        path = self.configured()
        if path is not None and self.cfg.autosave:
            try:
                out = self.save(path)
                self.log.info(f"saved map {out}: {len(self.recognizer.db)} keyframes")
            except (OSError, MapError, MapPathError) as exc:
                self.log.error(f"could not save the map on shutdown: {exc}")
        try:
            self.recognizer.settle_ids()
        except OSError as exc:
            self.log.error(f"could not record the next id: {exc}")

    # ---- saving ----------------------------------------------------------------------------------------
    def _state(self) -> Tuple[int, int]:
        db = self.recognizer.db
        return id(db), len(db)

    def save(self, path: Path) -> Path:
        """Save to `path` (or where an unmovable unreadable map redirects it); never replaces a non-map."""
        path = self._redirect.get(path, path)
        check_overwritable(path)
        state = self._state()
        out = self.recognizer.save_map(path)
        if path == self._redirect.get(self.configured(), self.configured()):
            self._saved = state
        return out

    def _periodic(self) -> None:
        while not self._stop.wait(self.cfg.autosave_period_s):
            path = self.configured()
            if path is None or self._state() == self._saved:
                continue
            try:
                out = self.save(path)
                self.log.info(f"autosaved map {out}: {self._saved[1]} keyframes")
            except Exception as exc:  # noqa: BLE001 -- keep trying next period
                self.log.error(f"periodic autosave to {path} failed: {type(exc).__name__}: {exc}")

    def set_path(self, requested: str) -> None:
        """Switch map.path at run time (checked first); ids are then recorded beside the new path."""
        path = self.resolve(requested) if requested else None
        self.cfg.path = requested
        self._saved = None
        self.recognizer.track_ids(IdFloor(path.with_name(path.name + ".ids"), self.cfg.id_reserve) if path else None)

    # ---- services ----------------------------------------------------------------------------------------
    def handle_save(self, request: Any, response: Any) -> Any:
        try:
            path = self.resolve(request.path)
            out = self.save(path)
            response.success, response.message = True, f"saved to {out}"
        except (MapPathError, MapError, OSError) as exc:
            response.success, response.message = False, f"could not save: {exc}"
        response.num_keyframes = len(self.recognizer.db)
        return response

    def handle_load(self, request: Any, response: Any) -> Any:
        try:
            path = self.resolve(request.path)
            self.recognizer.load_map(path)
            response.success, response.message = True, f"loaded {path}"
        except (MapPathError, MapError) as exc:
            response.success, response.message = False, f"{exc} (kept the current map)"
        response.num_keyframes = len(self.recognizer.db)
        return response
