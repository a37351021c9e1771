"""Structure-aware mutations of a real saved map file, for the map reader's fuzz test.

`cases(path, seed)` yields (name, file bytes): header fields deleted, retyped and out of range, JSON
members replaced by other JSON, keyframe entries and the id order damaged (checksums recomputed so the
structural checks are reached), members truncated, flipped, swapped, dropped, duplicated, compressed,
zip bombs, huge declared sizes, FAISS and npy length fields patched.

Run as a script (`python map_mutations.py CASE_DIR WARM_MAP`) it loads every case file written by
`write_cases` in a fresh process and prints JSON: case count, what escaped other than MapError, and the
process's peak RSS before and after (after one load of WARM_MAP, so imports do not count).
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Tuple

SHA = {"index.faiss": "sha256_index", "keyframes.json": "sha256_meta", "local.npz": "sha256_local",
       "descriptors.f16": "sha256_descriptors"}
Members = Dict[str, bytes]


def read_members(data: bytes) -> Members:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def pack(ms: Members, fix_sha: bool = True, compress: Dict[str, int] | None = None) -> bytes:
    """A zip of the members; with fix_sha the header's checksums are recomputed for the new contents."""
    ms = dict(ms)
    if fix_sha:
        try:
            header = json.loads(ms["header.json"])
            for member, key in SHA.items():
                if member in ms and isinstance(header, dict):
                    header[key] = hashlib.sha256(ms[member]).hexdigest()
            ms["header.json"] = json.dumps(header).encode()
        except (KeyError, ValueError, RecursionError):  # the header itself is what is being mutated
            pass
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in ms.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return buf.getvalue()


def _with_header(ms: Members, header) -> bytes:
    return pack({**ms, "header.json": json.dumps(header).encode()}, fix_sha=False)


def _retypes(value):
    return [str(value), float(value) if isinstance(value, int) else 1.5, [value], None, {"v": value}, True,
            -1, 2**64]


def _header_cases(ms: Members) -> Iterator[Tuple[str, bytes]]:
    header = json.loads(ms["header.json"])
    for key in header:
        yield f"header-del-{key}", _with_header(ms, {k: v for k, v in header.items() if k != key})
        for i, bad in enumerate(_retypes(header[key])):
            yield f"header-retype-{key}-{i}", _with_header(ms, {**header, key: bad})
    ranges = {"dim": [0, -1, 2**31, header["dim"] + 1, header["dim"] - 1], "count": [0, -1, 2**40, header["count"] + 1,
              header["count"] - 1], "version": [0, 3, 99], "next_id": [-1, 0, 2**63],
              "local_count": [header.get("local_count", 0) + 1, 2**40], "local_dim": [0, 2**30, 1],
              "index_type": ["ivf", "", "flat" if header["index_type"] != "flat" else "hnsw"]}
    for key, values in ranges.items():
        for v in values:
            yield f"header-range-{key}-{v}", _with_header(ms, {**header, key: v})
    yield "header-extra-field", _with_header(ms, {**header, "surprise": 1})


def _json_cases(ms: Members) -> Iterator[Tuple[str, bytes]]:
    replacements = {"list": b"[1, 2, 3]", "string": b'"vpr_ros-map"', "number": b"12", "null": b"null",
                    "empty": b"", "garbage": b"\xff\xfe{", "deep": b"[" * 100000 + b"]" * 100000,
                    "bigint": b"9" * 5000, "nan": b"NaN"}
    for member in ("header.json", "keyframes.json"):
        for name, data in replacements.items():
            yield f"{member}-as-{name}", pack({**ms, member: data})


def _keyframe_cases(ms: Members, rng: random.Random) -> Iterator[Tuple[str, bytes]]:
    meta = json.loads(ms["keyframes.json"])

    def out(name, m):
        return name, pack({**ms, "keyframes.json": json.dumps(m).encode()})

    for field in ("id", "stamp_ns", "frame_id", "pose", "local_features"):
        for j, bad in enumerate(["7", 1.5, None, [1], {"a": 1}, -3, 2**70, True]):
            m = json.loads(ms["keyframes.json"])
            m["keyframes"][rng.randrange(len(m["keyframes"]))][field] = bad
            yield out(f"kf-retype-{field}-{j}", m)
        m = json.loads(ms["keyframes.json"])
        m["keyframes"][0].pop(field)
        yield out(f"kf-del-{field}", m)
    yield out("kf-unknown-field", {**meta, "keyframes": [{**meta["keyframes"][0], "x": 1}] + meta["keyframes"][1:]})
    yield out("order-dup", {**meta, "order": meta["order"][:-1] + meta["order"][:1]})
    yield out("order-short", {**meta, "order": meta["order"][:-1]})
    yield out("order-long", {**meta, "order": meta["order"] + [10**6]})
    yield out("order-shuffled", {**meta, "order": rng.sample(meta["order"], len(meta["order"]))})
    yield out("order-strings", {**meta, "order": [str(i) for i in meta["order"]]})
    yield out("kf-dup", {**meta, "keyframes": meta["keyframes"][:-1] + meta["keyframes"][:1]})
    yield out("kf-missing", {**meta, "keyframes": meta["keyframes"][:-1]})
    yield out("ids-shifted", {"order": [i + 1000 for i in meta["order"]],
                              "keyframes": [{**k, "id": k["id"] + 1000} for k in meta["keyframes"]]})
    yield out("meta-no-order", {"keyframes": meta["keyframes"]})
    yield out("meta-lists", {"order": {}, "keyframes": {}})


def _member_cases(ms: Members, rng: random.Random) -> Iterator[Tuple[str, bytes]]:
    names = list(ms)
    for name in names:
        data = ms[name]
        for frac in (0.0, 0.5, 0.99):
            cut = data[:int(len(data) * frac)]
            yield f"trunc-{name}-{frac}", pack({**ms, name: cut})
            yield f"trunc-nosha-{name}-{frac}", pack({**ms, name: cut}, fix_sha=False)
        for k in range(6):
            flipped = bytearray(data)
            if flipped:
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            yield f"flip-{name}-{k}", pack({**ms, name: bytes(flipped)})
        rest = {k: v for k, v in ms.items() if k != name}
        yield f"drop-{name}", pack(rest)
        yield f"compressed-{name}", pack(ms, compress={name: zipfile.ZIP_DEFLATED})
        yield f"bomb-{name}", pack({**ms, name: b"\0" * (32 << 20)}, compress={name: zipfile.ZIP_DEFLATED})
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            yield f"swap-{a}-{b}", pack({**ms, a: ms[b], b: ms[a]})
    yield "extra-member", pack({**ms, "extra.bin": b"x" * 10})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        for name, data in list(ms.items()) + [("keyframes.json", ms["keyframes.json"])]:
            zf.writestr(zipfile.ZipInfo(name), data)
    yield "duplicate-member", buf.getvalue()


def _declared_size_cases(data: bytes) -> Iterator[Tuple[str, bytes]]:
    """Central-directory (and local header) sizes patched to huge values."""
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            return
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = data[pos + 46:pos + 46 + name_len].decode(errors="replace")
        local = struct.unpack_from("<I", data, pos + 42)[0]
        for size in (0xFFFFFFF0, 1 << 31, 0):
            d = bytearray(data)
            struct.pack_into("<II", d, pos + 20, size, size)
            struct.pack_into("<II", d, local + 18, size, size)
            yield f"declared-{name}-{size}", bytes(d)
        pos += 4


def _inner_length_cases(ms: Members) -> Iterator[Tuple[str, bytes]]:
    """FAISS vector lengths and npy shapes patched (checksums recomputed, so only the walkers object)."""
    index = ms["index.faiss"]
    for tag in (b"IxFI", b"IHNf"):
        at = index.find(tag)
        if at < 0:
            continue
        first = at + 4 + struct.calcsize("<iqqq?i")
        for value in (1 << 39, 1 << 20, 0, 2**64 - 1):
            d = bytearray(index)
            d[first:first + 8] = struct.pack("<Q", value)
            yield f"faiss-len-{tag.decode()}-{value}", pack({**ms, "index.faiss": bytes(d)})
    local = ms.get("local.npz")
    if local:
        for array in (b"desc.npy", b"xy.npy", b"offsets.npy"):
            start = local.find(b"'shape': (", local.find(array))
            end = local.find(b"\n", start)
            for shape in (b"(4000000000, 8)", b"(-1,)", b"()"):
                d = bytearray(local)
                d[start:end] = (b"'shape': " + shape + b", }").ljust(end - start)
                yield f"npy-shape-{array.decode()}-{shape.decode()}", pack({**ms, "local.npz": bytes(d)})


def _ivf_cases(ms: Members) -> Iterator[Tuple[str, bytes]]:
    """An IVF index's own fields patched (checksums recomputed): list count, quantizer, direct map, list
    sizes, codes and ids, each to a value FAISS would read past, allocate for, or reconstruct wrongly from."""
    index = ms["index.faiss"]
    header = struct.calcsize("<iqqq?i")
    count = json.loads(ms["header.json"])["count"]

    def patched(name: str, at: int, fmt: str, value) -> Tuple[str, bytes]:
        d = bytearray(index)
        struct.pack_into("<" + fmt, d, at, value)
        return f"ivf-{name}", pack({**ms, "index.faiss": bytes(d)})
    for tag in (b"IwFl", b"IwSq", b"Iwrr"):
        at = index.find(tag)
        if at < 0:
            continue
        nlist_at = at + 4 + header
        nlist = struct.unpack_from("<Q", index, nlist_at)[0]
        for value in (0, nlist + 1, 2**40):
            yield patched(f"nlist-{value}", nlist_at, "Q", value)
        quant = index.find(b"IxFI", at)
        yield patched("quantizer-count", quant + 4 + 4, "q", nlist + 1)
        yield patched("centroid-nan", quant + 4 + header + 8, "f", float("nan"))
        dm = quant + 4 + header + 8 + 4 * struct.unpack_from("<Q", index, quant + 4 + header)[0]
        yield patched("direct-map-type", dm, "b", 2)
        yield patched("direct-map-length", dm + 1, "Q", count + 1)
        yield patched("direct-map-entry", dm + 9, "q", 1 << 40)
        if count > 1:
            d = bytearray(index)
            d[dm + 9:dm + 17], d[dm + 17:dm + 25] = index[dm + 17:dm + 25], index[dm + 9:dm + 17]
            yield "ivf-direct-map-swap", pack({**ms, "index.faiss": bytes(d)})
        if tag == b"Iwrr":  # RaBitQ settings: dimension, code size, metric, bits; then code size, residual, query bits
            settings = dm + 9 + 8 * count
            yield patched("rabitq-dim", settings, "Q", struct.unpack_from("<Q", index, settings)[0] + 1)
            yield patched("rabitq-code-size", settings + 8, "Q", 2**40)
            yield patched("rabitq-bits", settings + 20, "Q", 8)
            yield patched("rabitq-residual", settings + 36, "?", False)
            yield patched("rabitq-query-bits", settings + 37, "B", 200)
        lists = index.find(b"ilar", dm)
        yield patched("lists-count", lists + 4, "Q", nlist + 1)
        yield patched("lists-code-size", lists + 12, "Q", struct.unpack_from("<Q", index, lists + 12)[0] + 1)
        yield patched("lists-kind", lists + 20, "4s", b"xxxx")
        yield patched("lists-sizes-length", lists + 24, "Q", 2**40)
        yield patched("lists-first-size", lists + 32, "Q", count + 1)
        last_ids = len(index) - 8 - 8 * count  # the last list's ids end where the id map's vector starts
        yield patched("last-id-out-of-range", last_ids - 8, "q", count)
        yield patched("last-id-negative", last_ids - 8, "q", -1)
        yield patched("last-id-duplicate", last_ids - 8, "q", struct.unpack_from("<q", index, last_ids - 16)[0])
        code = (lists + 32 + 8 * nlist) if index[lists + 20:lists + 24] == b"full" else None
        if code is not None and tag != b"Iwrr":  # RaBitQ codes are bits (and factors re-scoring never reads)
            yield patched("code-nan", code, "f" if tag == b"IwFl" else "e", float("nan"))
    desc = ms.get("descriptors.f16")
    if desc is not None:  # a compressed index's exact descriptors: float16 rows
        for name, d in (("nan", b"\x00\x7e" + desc[2:]), ("inf", b"\x00\x7c" + desc[2:]), ("short", desc[:-2]),
                        ("long", desc + b"\x00\x3c"), ("zero-row", bytes(2 * json.loads(ms["header.json"])["dim"])
                                                         + desc[2 * json.loads(ms["header.json"])["dim"]:])):
            yield f"descriptors-{name}", pack({**ms, "descriptors.f16": d})


def _raw_cases(data: bytes, rng: random.Random) -> Iterator[Tuple[str, bytes]]:
    for k in range(20):
        yield f"file-trunc-{k}", data[:rng.randrange(len(data))]
    for k in range(20):
        d = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            d[rng.randrange(len(d))] ^= 0xFF
        yield f"file-flip-{k}", bytes(d)
    yield "empty", b""
    yield "random", bytes(rng.getrandbits(8) for _ in range(4096))
    yield "zip-of-nothing", pack({})


def cases(path: Path, seed: int = 0) -> Iterator[Tuple[str, bytes]]:
    rng = random.Random(seed)
    data = Path(path).read_bytes()
    ms = read_members(data)
    for family in (_header_cases(ms), _json_cases(ms), _keyframe_cases(ms, rng), _member_cases(ms, rng),
                   _declared_size_cases(data), _inner_length_cases(ms), _ivf_cases(ms), _raw_cases(data, rng)):
        yield from family


def write_cases(path: Path, out_dir: Path, seed: int = 0) -> int:
    """Write every case as `<n>_<name>.vprmap` into out_dir; returns how many."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, (name, data) in enumerate(cases(path, seed), 1):
        (out_dir / f"{n:04d}_{name.replace('/', '_')}.vprmap").write_bytes(data)
    return n


def _main(case_dir: str, warm_map: str) -> None:
    """Load every case file of case_dir in this (fresh) process; report escapes and peak RSS."""
    import resource

    from vpr_core.map_database import MapDatabase, MapError

    MapDatabase.load(warm_map, use_gpu="false")  # warm-up: imports and one real load
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    escaped, loaded, n = [], 0, 0
    for path in sorted(Path(case_dir).iterdir()):
        n += 1
        try:
            MapDatabase.load(path, use_gpu="false")
            loaded += 1
        except MapError:
            pass
        except BaseException as exc:  # noqa: BLE001 -- reported
            escaped.append(f"{path.name}: {type(exc).__name__}: {exc}"[:300])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"cases": n, "loaded": loaded, "escaped": escaped, "maxrss_kb_before": before,
                      "maxrss_kb_after": after}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
