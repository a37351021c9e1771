"""Exact global descriptors kept beside a compressed index (`map.index: ivf_rabitq`): float16 rows by
insertion position, what the index's shortlist is re-scored against and what sequence matching and rebuilds read.

The compressed index holds compact codes only (vpr_core.map_ivf); the exact rows live here in chunks of
CHUNK_ROWS. With a memory budget (`limit`, `map.max_descriptor_mb`) the oldest full chunks move to a spill
file (vpr_core.local_spill) and single rows are read back when a search shortlists their keyframes: the
newest keyframes, which every frame's sequence matching touches, stay in memory, and every keyframe stays
searchable through its code, so nothing leaves the map (RTAB-Map's long-term memory, by contrast, is not
searched). A row that cannot be read back is returned as zeros (it scores 0: never a match), counted and logged.
"""
from __future__ import annotations

import logging
import threading
from typing import Iterator, List, Optional

import numpy as np

log = logging.getLogger(__name__)

CHUNK_ROWS = 4096  # rows per chunk: 10 MB at 1280-D, the unit that moves to the spill file
FEW_ROWS = 256  # reads of up to this many rows go row by row (a search's shortlist), larger ones chunk by chunk


class DescriptorStore:
    """Unit descriptors as float16 rows in insertion order (append-only), partly in a spill file under a budget."""

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"descriptor dimension must be positive, got {dim}")
        self.dim = dim
        self._chunks: List[Optional[np.ndarray]] = []  # (CHUNK_ROWS, dim) float16; None once spilled
        self._offsets: List[int] = []  # each chunk's offset in the spill file (-1 while only in memory)
        self._n = 0
        self._in_memory = 0  # bytes of the chunks held in memory
        self.budget = 0  # bytes of rows kept in memory at most (0 = all)
        self.spill_dir = ""
        self._spill = None  # SpillFile, made on the first eviction
        self.spill_reads = 0  # rows read back from the spill file
        self.spill_failures = 0  # spill writes or reads that failed
        self._lock = threading.Lock()  # chunk bookkeeping: a background rebuild reads while the map appends

    def __len__(self) -> int:
        return self._n

    @property
    def row_bytes(self) -> int:
        return 2 * self.dim

    @property
    def nbytes_in_memory(self) -> int:
        return self._in_memory

    @property
    def spilled_rows(self) -> int:
        """Rows that are only in the spill file now."""
        return sum(CHUNK_ROWS for c in self._chunks if c is None)

    def append(self, rows: np.ndarray) -> None:
        """Add rows (n, dim) at the end (the map checks them: finite, unit length)."""
        rows = np.asarray(rows).reshape(-1, self.dim)
        at = 0
        while at < len(rows):
            c, r = divmod(self._n, CHUNK_ROWS)
            if c == len(self._chunks):
                with self._lock:
                    self._chunks.append(np.empty((CHUNK_ROWS, self.dim), np.float16))
                    self._offsets.append(-1)
                self._in_memory += CHUNK_ROWS * self.row_bytes
            take = min(len(rows) - at, CHUNK_ROWS - r)
            self._chunks[c][r:r + take] = rows[at:at + take]
            self._n += take
            at += take
        self._evict()

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The descriptors (n, dim) float32 at these positions; spilled rows are read back (contiguous runs
        in one read each)."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= self._n):
            raise IndexError(f"descriptor positions must lie in [0, {self._n}), got {positions.min()}..{positions.max()}")
        out = np.zeros((len(positions), self.dim), np.float32)
        chunk_of, row_of = np.divmod(positions, CHUNK_ROWS)
        with self._lock:  # a consistent view: a chunk spilled meanwhile is read back from its offset
            chunks, offsets = list(self._chunks), list(self._offsets)
        if len(positions) <= FEW_ROWS:  # a search's shortlist: one row at a time beats grouping them by chunk
            rest = []
            for i, (c, r) in enumerate(zip(chunk_of.tolist(), row_of.tolist())):
                if chunks[c] is not None:
                    out[i] = chunks[c][r]
                else:
                    rest.append(i)
            todo = np.asarray(rest, np.int64)  # spilled: read back chunk by chunk, contiguous runs at once
        else:
            todo = np.arange(len(positions))
        order = todo[np.argsort(chunk_of[todo], kind="stable")]
        starts = np.flatnonzero(np.diff(chunk_of[order])) + 1
        for at in np.split(order, starts) if len(order) else ():
            c = int(chunk_of[at[0]])
            if chunks[c] is not None:
                out[at] = chunks[c][row_of[at]]
            else:
                self._read_back(offsets[c], row_of[at], out, at)
        return out

    def _read_back(self, offset: int, rows: np.ndarray, out: np.ndarray, at: np.ndarray) -> None:
        order = np.argsort(rows, kind="stable")
        rows, at = rows[order], at[order]
        runs = np.flatnonzero(np.diff(rows) != 1) + 1  # each run of consecutive rows is one read
        for rs, ats in zip(np.split(rows, runs), np.split(at, runs)):
            try:
                raw = self._spill.read(offset + int(rs[0]) * self.row_bytes, len(rs) * self.row_bytes)
            except OSError as exc:
                self.spill_failures += 1
                log.error("%d descriptors could not be read back from the spill file (%s): they score 0", len(rs), exc)
                continue
            out[ats] = np.frombuffer(raw, "<f2").reshape(len(rs), self.dim)
            self.spill_reads += len(rs)

    def blocks(self, count: Optional[int] = None) -> Iterator[np.ndarray]:
        """The first `count` rows (default all) as float16 blocks in order, a chunk at a time (for saving)."""
        count = self._n if count is None else count
        for c in range(-(-count // CHUNK_ROWS)):
            n = min(CHUNK_ROWS, count - c * CHUNK_ROWS)
            with self._lock:
                chunk, offset = self._chunks[c], self._offsets[c]
            if chunk is not None:
                yield chunk[:n]
            else:
                yield np.frombuffer(self._spill.read(offset, n * self.row_bytes), "<f2").reshape(n, self.dim)

    def limit(self, budget_bytes: int, spill_dir: str = "") -> None:
        """Keep at most `budget_bytes` of rows in memory (0 = no limit), the oldest rest in a spill file in
        `spill_dir` (default: the system's temporary folder). Chunks that view a loaded map file's buffer are
        copied, so that buffer can be freed."""
        self.budget, self.spill_dir = max(0, int(budget_bytes)), spill_dir
        self._evict()
        if self.budget:
            for c, chunk in enumerate(self._chunks):
                if chunk is not None and chunk.base is not None:
                    self._chunks[c] = chunk.copy()

    def _evict(self) -> None:
        """Move the oldest full in-memory chunks to the spill file while the budget is exceeded (never the
        chunk being filled). A spill file that cannot be written keeps everything in memory (budget off)."""
        while self.budget and self._in_memory > self.budget:
            full = self._n // CHUNK_ROWS
            c = next((i for i in range(full) if self._chunks[i] is not None), None)
            if c is None:
                return
            try:
                if self._spill is None:
                    from vpr_core.local_spill import SpillFile
                    self._spill = SpillFile(self.spill_dir, "descriptor")
                offset = self._spill.append(memoryview(np.ascontiguousarray(self._chunks[c])).cast("B"))
            except OSError as exc:
                self.spill_failures += 1
                self.budget = 0
                log.error("descriptors could not be moved to the spill file (%s): keeping them in memory "
                          "(map.max_descriptor_mb no longer holds)", exc)
                return
            with self._lock:
                self._offsets[c], self._chunks[c] = offset, None
            self._in_memory -= CHUNK_ROWS * self.row_bytes

    @classmethod
    def from_buffer(cls, data: bytes | bytearray | memoryview, dim: int, count: int) -> "DescriptorStore":
        """A store over `count` float16 rows read from a map file (viewed, not copied; the partial last chunk is
        copied so appends can fill it). Raises ValueError for a wrong size or a non-finite or non-unit row."""
        rows = np.frombuffer(data, "<f2")
        if rows.size != count * dim:
            raise ValueError(f"descriptors hold {rows.size} values, {count} keyframes of {dim} need {count * dim}")
        rows = rows.reshape(count, dim)
        store = cls(dim)
        for a in range(0, count, CHUNK_ROWS):
            block = rows[a:a + CHUNK_ROWS]
            if not np.all(np.isfinite(block)):
                raise ValueError(f"descriptors {a}..{a + len(block) - 1} hold NaN or inf values")
            norms = np.linalg.norm(block.astype(np.float32), axis=1)
            if np.any(np.abs(norms - 1.0) > 1e-2):
                raise ValueError(f"descriptor {a + int(np.argmax(np.abs(norms - 1.0)))} is not unit length")
            if len(block) == CHUNK_ROWS:
                store._chunks.append(block)
                store._offsets.append(-1)
                store._in_memory += block.nbytes
                store._n += CHUNK_ROWS
            else:
                store.append(block)
        return store
