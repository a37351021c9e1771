"""Reading a stored (uncompressed) zip without trusting it: the directory's size checked before zipfile
parses it, each member found through its own local header, and numpy arrays of an npz parsed in place
(views, no copies). Raises ValueError; the map file reader (vpr_core.map_file) turns that into MapError.
"""
from __future__ import annotations

import io
import math
import struct
import zipfile
from typing import BinaryIO, Callable, Dict, Mapping, Tuple

import numpy as np

MAX_ENTRIES = 8  # a map file has 4 members, an npz of local features 6


def check_directory(fh: BinaryIO, size: int) -> None:
    """The zip's end record must list a few entries in a small directory (read before zipfile parses it)."""
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ValueError("no zip end record")
    _, _, _, entries, total, cd_size, _, _ = struct.unpack("<4s4H2LH", tail[at:at + 22])
    if entries > MAX_ENTRIES or total > MAX_ENTRIES or cd_size > 64 << 10:
        raise ValueError(f"the zip directory lists {total} entries in {cd_size} bytes; at most {MAX_ENTRIES} "
                         f"are expected")
    fh.seek(0)


LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra len


def stored_span(read_at: Callable[[int, int], bytes], info: zipfile.ZipInfo, size: int) -> Tuple[int, int]:
    """(offset, length) of a stored member's bytes, found through its local header, which must agree with
    the directory. No CRC pass: the map header's sha256 of each member is the one checksum read."""
    head = read_at(info.header_offset, LOCAL_HEADER.size)
    if len(head) != LOCAL_HEADER.size:
        raise ValueError(f"member {info.filename}: local header runs past the end")
    sig, _, _, method, _, _, _, _, _, name_len, extra_len = LOCAL_HEADER.unpack(head)
    name = read_at(info.header_offset + LOCAL_HEADER.size, name_len)
    if sig != b"PK\x03\x04" or method != zipfile.ZIP_STORED or name != info.filename.encode():
        raise ValueError(f"member {info.filename}: its local header does not match the zip directory")
    start = info.header_offset + LOCAL_HEADER.size + name_len + extra_len
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size or start + info.file_size > size:
        raise ValueError(f"member {info.filename} is compressed or runs past the end of the data")
    return start, info.file_size


class ViewFile(io.RawIOBase):
    """A read-only, seekable file over a buffer without copying it (io.BytesIO copies a bytearray)."""

    def __init__(self, data) -> None:
        super().__init__()
        self.view, self.pos = memoryview(data).cast("B"), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.view)}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self.view) - self.pos))
        b[:n] = self.view[self.pos:self.pos + n]
        self.pos += n
        return n


def read_npz(data: bytes | bytearray, spec: Mapping[str, Tuple[str, int]]) -> Dict[str, np.ndarray]:
    """Arrays {name: (dtype, ndim)} from an uncompressed npz; every member's header must declare exactly
    the bytes it holds, no pickles. Raises ValueError (never allocates more than the data's size). The
    arrays are views of `data` (writable when it is a bytearray): no copy is made."""
    check_directory(ViewFile(data), len(data))
    view = memoryview(data).cast("B")
    with zipfile.ZipFile(ViewFile(data)) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        if len(infos) != len(zf.infolist()) or set(infos) != {f"{k}.npy" for k in spec}:
            raise ValueError(f"npz members are {sorted(infos)}, expected {sorted(spec)}")
        out = {}
        for name, (dtype, ndim) in spec.items():
            start, length = stored_span(lambda off, n: bytes(view[off:off + n]), infos[f"{name}.npy"], len(data))
            fh = io.BytesIO(view[start:start + min(length, 64 << 10)])  # the .npy header (at most 64 kB)
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, got = read(fh)
            want = np.dtype(dtype).newbyteorder("<")
            if got != want or fortran or len(shape) != ndim:
                raise ValueError(f"npz array {name} is {got}{list(shape)}, expected {ndim}-D {want}")
            body = view[start + fh.tell():start + length]
            if math.prod(shape) * want.itemsize != len(body):
                raise ValueError(f"npz array {name} declares shape {shape} but holds {len(body)} bytes")
            out[name] = np.frombuffer(body, want).reshape(shape)
        return out
