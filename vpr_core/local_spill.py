"""Map data moved out of memory: appended to one scratch file and read back by position. Local features
(`map.max_local_mb`) are records of the keyframe's float32 xy then its float16 descriptors, exactly as held
in memory; global descriptors (`map.max_descriptor_mb`, vpr_core.descriptor_store) are whole chunks of rows.
The file is private to the process and removed when it ends (the map file, written by a save, is what persists).
"""
from __future__ import annotations

import os
import tempfile
import threading
from typing import Tuple

import numpy as np

from vpr_core.local_features import LocalFeatures


class SpillFile:
    """An append-only scratch file of records; reads and writes are positional (thread-safe)."""

    def __init__(self, directory: str = "", what: str = "local-feature") -> None:
        self.what = what  # named in errors and in the file's name
        self._fh = tempfile.TemporaryFile(dir=directory or None, prefix=f"vpr-{what}-spill-")
        self._end = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._end

    def append(self, data: bytes | memoryview) -> int:
        """Write one record at the end; returns its offset."""
        size = memoryview(data).nbytes
        with self._lock:
            offset = self._end
            written = os.pwrite(self._fh.fileno(), data, offset)
            if written != size:
                raise OSError(f"short write to the {self.what} spill file ({written} of {size} bytes)")
            self._end += size
        return offset

    def write(self, lf: LocalFeatures) -> "Spilled":
        data = np.ascontiguousarray(lf.xy, "<f4").tobytes() + np.ascontiguousarray(lf.desc, "<f2").tobytes()
        return Spilled(self, self.append(data), len(lf), lf.dim, tuple(lf.image_hw))

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fh.fileno(), size, offset)
        if len(data) != size:
            raise OSError(f"the {self.what} spill file ends at {offset + len(data)}, record needs {offset + size}")
        return data

    def close(self) -> None:
        self._fh.close()


class Spilled:
    """One keyframe's local features in the spill file: reads like LocalFeatures (len, dim, image_hw, xy,
    desc), each array read when asked for; `load` reads the whole record once."""
    __slots__ = ("file", "offset", "n", "dim", "image_hw")

    def __init__(self, file: SpillFile, offset: int, n: int, dim: int, image_hw: Tuple[int, int]) -> None:
        self.file, self.offset, self.n, self.dim, self.image_hw = file, offset, n, dim, image_hw

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.n * (8 + 2 * self.dim)

    @property
    def xy(self) -> np.ndarray:
        return np.frombuffer(self.file.read(self.offset, 8 * self.n), "<f4").reshape(self.n, 2)

    @property
    def desc(self) -> np.ndarray:
        return np.frombuffer(self.file.read(self.offset + 8 * self.n, 2 * self.n * self.dim), "<f2").reshape(
            self.n, self.dim)

    def load(self) -> LocalFeatures:
        raw = bytearray(self.file.read(self.offset, self.nbytes))  # writable, like features made in memory (torch)
        xy = np.frombuffer(raw, "<f4", 2 * self.n).reshape(self.n, 2)
        desc = np.frombuffer(raw, "<f2", self.n * self.dim, 8 * self.n).reshape(self.n, self.dim)
        return LocalFeatures(xy, desc, self.image_hw)
