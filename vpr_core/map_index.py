"""The map's FAISS index types: how each is built, and how its serialized bytes are checked before FAISS reads them.

`faiss.deserialize_index` trusts the length fields inside the bytes (it allocates what they claim before
reading) and an HNSW graph's neighbour ids (a bad one is an out-of-bounds read at search time), and an IVF
index's list numbers, list ids and direct map (reconstruction and search index through them unchecked). So a
map file's index is walked here first, for the layouts this package writes, and every length, id, level and
list entry is checked against the header's descriptor size and count; only then does FAISS see it.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import faiss
import numpy as np

from vpr_core.map_ivf import MIN_POINTS_PER_LIST, RABITQ_BITS, new_map_index
from vpr_core.registry import Registry


class IndexFormatError(ValueError):
    """Serialized index bytes do not have the layout their map header announces."""


INDEX_TYPES: Registry[Callable[[int], faiss.Index]] = Registry("map index")


@INDEX_TYPES.register("flat")
def _flat(dim: int) -> faiss.Index:
    """Exact search: right for maps up to about a million keyframes."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


@INDEX_TYPES.register("flat_fp16")
def _flat_fp16(dim: int) -> faiss.Index:
    """Exact search over descriptors stored as float16: half the memory of `flat`, scores within ~1e-3."""
    return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                        faiss.METRIC_INNER_PRODUCT))


@INDEX_TYPES.register("hnsw")
def _hnsw(dim: int, m: int = 32) -> faiss.Index:
    """Approximate graph search (no training needed): 0.9 ms at 1M keyframes, but a map of dissimilar regions
    can strand the greedy search in the larger one (corridor among 100k Nordland keyframes: R@1 0.68 -> 0.42)."""
    inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efSearch = 128
    return faiss.IndexIDMap2(inner)


@INDEX_TYPES.register("ivf_flat")
def _ivf_flat(dim: int) -> faiss.Index:
    """Inverted lists of float32 descriptors (exact scores) under a quantizer trained on the map itself
    (vpr_core.map_ivf): a search scans the `map.ivf_nprobe` lists nearest the query; exact until trained."""
    return new_map_index(dim, "flat")


@INDEX_TYPES.register("ivf_fp16")
def _ivf_fp16(dim: int) -> faiss.Index:
    """`ivf_flat` with the lists' descriptors stored as float16: half the memory, faster scans, scores
    within ~1e-3 (as `flat_fp16`)."""
    return new_map_index(dim, "fp16")


@INDEX_TYPES.register("ivf_rabitq")
def _ivf_rabitq(dim: int) -> faiss.Index:
    """Inverted lists of 4-bit RaBitQ codes (a quarter of `ivf_fp16`'s bytes, scanned ~4x faster): the codes
    shortlist `map.ivf_shortlist` keyframes, re-scored exactly against float16 descriptors the map keeps
    beside the index (in memory, or partly on disk under `map.max_descriptor_mb`). For 100k-1M+ keyframes."""
    return new_map_index(dim, "rabitq")


@functools.lru_cache(maxsize=None)
def rabitq_code_size(dim: int) -> int:
    """Bytes of one ivf_rabitq code for `dim`-D descriptors (sign bits, extra bits and per-vector factors)."""
    return int(faiss.IndexIVFRaBitQ(faiss.IndexFlatIP(dim), dim, 1, faiss.METRIC_INNER_PRODUCT, True, RABITQ_BITS).code_size)


_SEARCH_PARAMS: Tuple[Tuple[type, Callable[[Any, faiss.IDSelector], faiss.SearchParameters]], ...] = (
    (faiss.IndexHNSW, lambda inner, sel: faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)),
    (faiss.IndexIVF, lambda inner, sel: faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe)),
)


def search_parameters(inner: faiss.Index, sel: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters with this id selector that keep the (downcast) inner index's own search settings:
    a bare SearchParameters would reset HNSW's efSearch or IVF's nprobe to FAISS's defaults."""
    for kind, make in _SEARCH_PARAMS:
        if isinstance(inner, kind):
            return make(inner, sel)
    return faiss.SearchParameters(sel=sel)


@dataclass(frozen=True)
class IndexLayout:
    """What a serialized index of one type looks like: its FAISS blocks outermost first, and how many
    bytes a stored vector may take at most (descriptor, id and, for graphs, its links)."""
    chain: Tuple[str, ...]
    bytes_per_vector: Callable[[int], int]
    fixed_bytes: int = 64 * 1024  # headers, level tables
    separate_descriptors: bool = False  # the exact descriptors are a map file member of their own (codes only here)


INDEX_LAYOUTS: Dict[str, IndexLayout] = {  # one per INDEX_TYPES name
    "flat": IndexLayout(("IxM2", "IxFI"), lambda dim: 4 * dim + 8),
    "flat_fp16": IndexLayout(("IxM2", "IxSQ"), lambda dim: 2 * dim + 8),
    "hnsw": IndexLayout(("IxM2", "IHNf", "IxFI"), lambda dim: 4 * dim + 8 + 1024),  # ~65 links x 4 B on average
    # list code + list id + direct map + id map, and at most one centroid per MIN_POINTS_PER_LIST keyframes
    "ivf_flat": IndexLayout(("IxM2", "IwFl"), lambda dim: 4 * dim + 24 + 4 * dim // MIN_POINTS_PER_LIST + 4),
    "ivf_fp16": IndexLayout(("IxM2", "IwSq"), lambda dim: 2 * dim + 24 + 4 * dim // MIN_POINTS_PER_LIST + 4),
    "ivf_rabitq": IndexLayout(("IxM2", "Iwrr"), lambda dim: rabitq_code_size(dim) + 24 + 4 * dim // MIN_POINTS_PER_LIST + 4,
                              separate_descriptors=True),
}


def max_index_bytes(index_type: str, dim: int, count: int) -> int:
    """The most bytes a serialized index of `count` vectors of `dim` floats may take."""
    layout = INDEX_LAYOUTS[index_type]
    return layout.fixed_bytes + count * layout.bytes_per_vector(dim)


class _Reader:
    """Reads a FAISS byte stream, refusing any length that runs past the bytes there are."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise IndexFormatError(f"{what} needs {n} bytes at offset {self.pos}, the index has {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def vector(self, dtype: str, what: str) -> np.ndarray:
        """A size_t count, then that many items (FAISS's READVECTOR; READXBVECTOR counts 4-byte groups)."""
        (n,) = self.unpack("Q", what + " length")
        itemsize = np.dtype(dtype).itemsize
        if n > (len(self.data) - self.pos) // itemsize:
            raise IndexFormatError(f"{what} claims {n} items, more than the {len(self.data) - self.pos} bytes left")
        return np.frombuffer(self.take(n * itemsize, what), dtype="<" + dtype)


def _header(r: _Reader, fourcc: str, dim: int, count: int) -> None:
    d, ntotal, _, _, _, metric = r.unpack("iqqq?i", f"{fourcc} header")
    if d != dim or ntotal != count:
        raise IndexFormatError(f"{fourcc} block holds {ntotal} vectors of {d} floats, the header says {count} of {dim}")
    if metric != faiss.METRIC_INNER_PRODUCT:
        raise IndexFormatError(f"{fourcc} block uses metric {metric}, maps use inner product ({faiss.METRIC_INNER_PRODUCT})")


def _flat_block(r: _Reader, dim: int, count: int) -> None:
    codes = r.vector("f4", "flat vectors")
    if codes.size != dim * count:
        raise IndexFormatError(f"flat block stores {codes.size} floats, {count} vectors of {dim} need {dim * count}")
    if not np.all(np.isfinite(codes)):
        raise IndexFormatError("flat block holds NaN or inf values")


def _fp16_settings(r: _Reader, dim: int) -> int:
    """A float16 scalar quantizer's settings (FAISS's write_ScalarQuantizer); returns its code size."""
    qtype, _, _, d, code_size = r.unpack("iifQQ", "scalar quantizer settings")
    if qtype != faiss.ScalarQuantizer.QT_fp16 or d != dim or code_size != 2 * dim:
        raise IndexFormatError(f"scalar quantizer block is type {qtype} for {d} floats in {code_size} bytes; the "
                               f"map stores {dim} float16 values (type {faiss.ScalarQuantizer.QT_fp16})")
    if len(r.vector("f4", "scalar quantizer training")):
        raise IndexFormatError("a float16 scalar quantizer has no training values")
    return code_size


def _fp16_block(r: _Reader, dim: int, count: int) -> None:
    code_size = _fp16_settings(r, dim)
    codes = r.vector("u1", "float16 vectors")
    if codes.size != code_size * count:
        raise IndexFormatError(f"float16 block stores {codes.size} bytes, {count} vectors of {dim} need {code_size * count}")
    if not np.all(np.isfinite(codes.view(np.float16))):
        raise IndexFormatError("float16 block holds NaN or inf values")


def _hnsw_block(r: _Reader, dim: int, count: int) -> None:
    r.vector("f8", "hnsw level probabilities")
    cum = r.vector("i4", "hnsw neighbours per level").astype(np.int64)
    levels = r.vector("i4", "hnsw levels").astype(np.int64)
    offsets = r.vector("u8", "hnsw offsets")
    neighbors = r.vector("i4", "hnsw neighbours")
    entry, max_level, _, _, _ = r.unpack("iiiii", "hnsw search settings")
    if len(cum) < 2 or cum[0] != 0 or np.any(np.diff(cum) < 0):
        raise IndexFormatError("hnsw neighbours-per-level table is not a cumulative count")
    if len(levels) != count or len(offsets) != count + 1 or (count and (levels.min() < 1 or levels.max() >= len(cum))):
        raise IndexFormatError(f"hnsw levels/offsets do not describe {count} vectors")
    if offsets[0] != 0 or np.any(np.diff(offsets.astype(np.int64)) != cum[levels]) or offsets[-1] != len(neighbors):
        raise IndexFormatError("hnsw offsets do not match the levels")
    top = int(levels.max()) - 1 if count else -1
    if max_level != top or not (-1 <= entry < count) or (count and (entry < 0 or levels[entry] - 1 != top)):
        raise IndexFormatError(f"hnsw entry point {entry} / top level {max_level} do not match the graph")
    for start in range(0, count, 65536):  # each link must name a vector that lives on that link's level
        stop = min(count, start + 65536)
        a, b = int(offsets[start]), int(offsets[stop])
        node = np.repeat(np.arange(start, stop), np.diff(offsets[start:stop + 1].astype(np.int64)))
        slot_level = np.searchsorted(cum, np.arange(a, b) - offsets[node].astype(np.int64), side="right") - 1
        nb = neighbors[a:b].astype(np.int64)
        linked = nb >= 0
        if np.any(nb < -1) or np.any(nb >= count) or np.any(levels[nb[linked]] <= slot_level[linked]):
            raise IndexFormatError("hnsw graph links a vector that does not exist on that level")


def _ivf_fp16_codes(r: _Reader, dim: int) -> int:
    """What an IVF of float16 codes writes before its lists: its scalar quantizer, code size, residual flag."""
    _fp16_settings(r, dim)
    code_size, by_residual = r.unpack("Q?", "IVF code size")
    if code_size != 2 * dim or by_residual:
        raise IndexFormatError(f"IVF float16 codes of {code_size} bytes{' on residuals' if by_residual else ''}; "
                               f"the map stores {dim} float16 values per keyframe, not residuals")
    return code_size


def _ivf_rabitq_codes(r: _Reader, dim: int) -> int:
    """What an IVF of RaBitQ codes writes before its lists: its quantizer (dimension, code size, metric, bits),
    then code size, residual flag and query bits. Codes are bits and factors: a damaged one misranks only its
    own keyframe in the shortlist, which the map re-scores exactly from its checked descriptors."""
    d, code_size, metric, bits = r.unpack("QQiQ", "RaBitQ quantizer settings")
    size, by_residual, qb = r.unpack("Q?B", "IVF RaBitQ code size")
    want = rabitq_code_size(dim)
    if (d, code_size, size, metric, bits, by_residual) != (dim, want, want, faiss.METRIC_INNER_PRODUCT, RABITQ_BITS, True) \
            or not 0 <= qb <= 8:
        raise IndexFormatError(f"RaBitQ codes for {d}-D in {code_size}/{size} bytes, metric {metric}, {bits} bits, "
                               f"residual {by_residual}, query bits {qb}; the map stores {dim}-D {RABITQ_BITS}-bit "
                               f"inner-product codes on residuals ({want} bytes)")
    return want


_IVF_CODES: Dict[str, Tuple[Callable[[_Reader, int], int], str]] = {  # fourcc -> settings reader (code bytes), dtype
    "IwFl": (lambda r, dim: 4 * dim, "f4"),
    "IwSq": (_ivf_fp16_codes, "f2"),
    "Iwrr": (_ivf_rabitq_codes, "u1"),  # FAISS writes multi-bit RaBitQ as Iwrr
}


def _ivf_block(r: _Reader, dim: int, count: int, fourcc: str) -> None:
    """An IVF index (vpr_core.map_ivf): list count, its quantizer's centroids, the direct map, then the lists,
    whose ids must be every position once and agree with the direct map (reconstruction reads through it)."""
    nlist, _ = r.unpack("QQ", "IVF list count and nprobe")
    if not 1 <= nlist <= max(1, count // MIN_POINTS_PER_LIST):
        raise IndexFormatError(f"IVF index has {nlist} lists for {count} vectors (1 to {max(1, count // MIN_POINTS_PER_LIST)})")
    tag = bytes(r.take(4, "IVF quantizer tag")).decode("latin-1")
    if tag != "IxFI":
        raise IndexFormatError(f"IVF quantizer is a '{tag}' block, expected 'IxFI'")
    _header(r, "IVF quantizer", dim, nlist)
    _flat_block(r, dim, nlist)
    (kind,) = r.unpack("b", "IVF direct map type")
    direct = r.vector("i8", "IVF direct map")
    if kind != 1 or len(direct) != count:  # 1 = DirectMap::Array, one entry per position
        raise IndexFormatError(f"IVF direct map is type {kind} with {len(direct)} entries, expected an array of {count}")
    read_settings, dtype = _IVF_CODES[fourcc]
    _inverted_lists(r, count, nlist, read_settings(r, dim), dtype, direct)


def _inverted_lists(r: _Reader, count: int, nlist: int, want: int, dtype: str, direct: np.ndarray) -> None:
    """FAISS's ArrayInvertedLists ('ilar'): sizes ('full' or 'sprs'), then each non-empty list's codes (`want`
    bytes each) and ids."""
    tag = bytes(r.take(4, "inverted lists tag")).decode("latin-1")
    lists, code_size = r.unpack("QQ", "inverted lists header")
    if tag != "ilar" or lists != nlist or code_size != want:
        raise IndexFormatError(f"inverted lists '{tag}' of {lists} lists x {code_size} B, expected 'ilar' of "
                               f"{nlist} x {want} B")
    kind = bytes(r.take(4, "inverted lists kind")).decode("latin-1")
    raw = r.vector("u8", "inverted list sizes")
    if kind == "full" and len(raw) == nlist:
        sizes = raw.astype(np.uint64)
    elif kind == "sprs" and len(raw) % 2 == 0 and np.all(raw[0::2] < nlist) and np.all(np.diff(raw[0::2].astype(np.int64)) > 0):
        sizes = np.zeros(nlist, np.uint64)
        sizes[raw[0::2].astype(np.int64)] = raw[1::2]
    else:
        raise IndexFormatError(f"inverted list sizes are '{kind}' with {len(raw)} values for {nlist} lists")
    if np.any(sizes > count) or int(sizes.sum()) != count:
        raise IndexFormatError(f"inverted lists hold {int(sizes.astype(np.float64).sum())} vectors, the index {count}")
    ids, where, at = np.empty(count, np.int64), np.empty(count, np.int64), 0
    for lst in np.flatnonzero(sizes):
        n = int(sizes[lst])
        codes = np.frombuffer(r.take(n * code_size, f"list {lst} codes"), dtype="<" + dtype)
        if not np.all(np.isfinite(codes)):
            raise IndexFormatError(f"inverted list {lst} holds NaN or inf values")
        ids[at:at + n] = np.frombuffer(r.take(8 * n, f"list {lst} ids"), dtype="<i8")
        where[at:at + n] = (int(lst) << 32) | np.arange(n, dtype=np.int64)  # FAISS's lo_build(list, offset)
        at += n
    if count and (ids.min() < 0 or ids.max() >= count or np.any(np.bincount(ids, minlength=count) != 1)):
        raise IndexFormatError(f"inverted lists do not hold each of the {count} positions exactly once")
    if np.any(direct[ids] != where):
        raise IndexFormatError("IVF direct map does not point where the lists hold each vector")


_BLOCKS: Dict[str, Callable[[_Reader, int, int], None]] = {
    "IxFI": _flat_block, "IxSQ": _fp16_block, "IHNf": _hnsw_block,
    **{fourcc: (lambda r, dim, count, f=fourcc: _ivf_block(r, dim, count, f)) for fourcc in _IVF_CODES}}


def check_index_bytes(data: bytes, index_type: str, dim: int, count: int) -> np.ndarray:
    """Walk a serialized index of `index_type` and return its keyframe ids (int64); raises IndexFormatError
    unless every block, length, id and graph link is what `count` vectors of `dim` floats need."""
    if index_type not in INDEX_LAYOUTS:
        raise IndexFormatError(f"no reader for index type '{index_type}'; known: {', '.join(sorted(INDEX_LAYOUTS))}")
    r = _Reader(data)
    chain = INDEX_LAYOUTS[index_type].chain
    for fourcc in chain:
        got = bytes(r.take(4, "block tag")).decode("latin-1")
        if got != fourcc:
            raise IndexFormatError(f"expected a '{fourcc}' block for a {index_type} index, found '{got}'")
        _header(r, fourcc, dim, count)
        block = _BLOCKS.get(fourcc)
        if block is not None:
            block(r, dim, count)
    ids = r.vector("i8", "id map")  # the IxM2 wrapper's ids follow its inner blocks
    if len(ids) != count:
        raise IndexFormatError(f"id map holds {len(ids)} ids for {count} vectors")
    if r.pos != len(r.data):
        raise IndexFormatError(f"{len(r.data) - r.pos} stray bytes after the index")
    return ids.copy()
