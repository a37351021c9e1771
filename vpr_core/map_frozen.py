"""A map frozen for saving: what `MapDatabase.freeze` takes under the lock (an index copy, references to the
keyframes, their local features and the exact descriptors), encoded into the file's header and members later,
outside the lock (JSON, npz and checksums of a big map take seconds; frames must not wait for them).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

import faiss
import numpy as np

from vpr_core.descriptor_store import DescriptorStore
from vpr_core.keyframes import Keyframe
from vpr_core.local_features import LocalFeatures, local_npz, write_local_npz
from vpr_core.map_file import file_sha256, write_map_file
from vpr_core.map_schema import (DEFAULT_MAX_BYTES, DESCRIPTORS_MEMBER, INDEX_MEMBER, LOCAL_MEMBER, MAGIC, META_MEMBER,
                                 VERSION)


@dataclass
class FrozenMap:
    """A map as it was at `MapDatabase.freeze` (the stores it references are append-only: rows and features
    added after the freeze are not part of it)."""
    dim: int
    index_type: str
    model: str
    next_id: int
    index: faiss.Index  # a copy, serialised by `encode`
    order: List[int]
    keyframes: List[Keyframe]
    local_items: List[Tuple[int, LocalFeatures]]
    local_dim: int
    descriptors: Optional[DescriptorStore] = None  # exact descriptors of a compressed index (its first len(order) rows)

    def encode(self, spools: Optional[Tuple[BinaryIO, ...]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The file's header and members. With `spools` (seekable scratch files: index, local features and, for a
        compressed index, descriptors) those members are written there, streamed, and are the files, not bytes:
        a save then never holds the index, local features or descriptors a second time."""
        # vars, not asdict: asdict deep-copies every field (1.6 s of a 100k-keyframe save); JSON only reads them
        meta = json.dumps({"order": self.order, "keyframes": [vars(kf) for kf in self.keyframes]}).encode()
        members: Dict[str, Any] = {META_MEMBER: meta}
        if spools is None:
            members[INDEX_MEMBER] = faiss.serialize_index(self.index)  # uint8 array, written as is
            members[LOCAL_MEMBER] = local_npz(self.local_items, self.local_dim)
            if self.descriptors is not None:
                members[DESCRIPTORS_MEMBER] = b"".join(b.astype("<f2").tobytes()
                                                       for b in self.descriptors.blocks(len(self.order)))
            sha = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
        else:
            index, local = spools[:2]
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(index.write))
            write_local_npz(self.local_items, self.local_dim, local)
            members[INDEX_MEMBER], members[LOCAL_MEMBER] = index, local
            if self.descriptors is not None:
                for block in self.descriptors.blocks(len(self.order)):
                    spools[2].write(np.ascontiguousarray(block, "<f2").tobytes())
                members[DESCRIPTORS_MEMBER] = spools[2]
            sha = {META_MEMBER: hashlib.sha256(meta).hexdigest()}
            for name, fh in members.items():
                if name != META_MEMBER:
                    fh.flush()
                    sha[name] = file_sha256(fh)
        header = {"magic": MAGIC, "version": VERSION, "dim": self.dim, "index_type": self.index_type,
                  "model": self.model, "count": len(self.order), "next_id": self.next_id,
                  "sha256_index": sha[INDEX_MEMBER], "sha256_meta": sha[META_MEMBER],
                  "local_dim": self.local_dim, "local_count": len(self.local_items), "sha256_local": sha[LOCAL_MEMBER]}
        if self.descriptors is not None:
            header["sha256_descriptors"] = sha[DESCRIPTORS_MEMBER]
        return header, members

    def save(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
        """Write the frozen map atomically, its large members spooled through scratch files beside `path`
        (removed when the save ends)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = ["index", "local"] + (["descriptors"] if self.descriptors is not None else [])
        spools = [tempfile.TemporaryFile(dir=path.parent, prefix=f".{name}-spool-") for name in names]
        try:
            return write_map_file(path, *self.encode(tuple(spools)), max_bytes)
        finally:
            for fh in spools:
                fh.close()
