"""The fleet's shared map on Milvus (`map.backend: milvus`): one collection, one partition per robot, keyframe
metadata and local features as fields beside each descriptor; searched with Milvus's own index and
partitions. `map.milvus_uri` names a Milvus server or cluster (http://host:19530, or a `milvus-lite server`
several robots share), or a local `<folder>.db` for milvus-lite inside this process (one process per folder).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vpr_core.keyframes import Candidate, Keyframe, check_pose
from vpr_core.shared_map import SHARED_MAPS, SharedEntry, SharedMap, SharedMapError, pack_local, packed_length

VARCHAR_MAX = 65535  # Milvus's longest string field: local features span several
META_FIELDS = ["robot", "session", "kid", "stamp_ns", "frame_id", "pose", "has_local"]
MODEL_PROPERTY = "vpr_ros.model"  # collection property: the model whose descriptors it holds
SHARED = "shared"
NOT_LOADED = 101  # Milvus's error code for a collection not loaded into memory  # Keyframe.local_features of a keyframe whose features are in the shared map


def _partition(robot: str) -> str:
    return f"robot_{robot}"


@SHARED_MAPS.register("milvus")
class MilvusMap(SharedMap):
    """This robot's keyframes go to its own partition of `collection`; searches cover the other robots'."""

    def __init__(self, robot: str, uri: str, collection: str, dim: int, model: str, local_dim: int = 0,
                 max_local_features: int = 0, index: str = "FLAT", publish_period_s: float = 1.0,
                 refresh_s: float = 2.0, timeout_s: float = 10.0) -> None:
        super().__init__(robot, publish_period_s)
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as exc:
            raise SharedMapError(f"map.backend milvus needs pymilvus (and milvus-lite for a local store): "
                                 f"install requirements.txt ({exc})") from None
        if not (uri.startswith(("http://", "https://", "tcp://", "unix:")) or uri.endswith(".db")):
            raise SharedMapError(f"map.milvus_uri must be a Milvus address (http://host:19530) or a local milvus-lite "
                                 f"folder ending in .db, got {uri!r}")
        self.uri, self.collection, self.dim, self.model = uri, collection, int(dim), model
        self.refresh_s, self.timeout_s = float(refresh_s), float(timeout_s)
        self._types = DataType
        try:
            self._client = MilvusClient(uri=uri, timeout=timeout_s)
            self._lite = str(self._client.get_server_version()).startswith("milvus_lite")
        except Exception as exc:
            raise SharedMapError(f"cannot reach Milvus at {uri}: {type(exc).__name__}: {exc}") from None
        need = math.ceil(packed_length(max_local_features, local_dim) / VARCHAR_MAX) if local_dim > 0 else 0
        self.chunks = self._open(need, index)
        if not self._client.has_partition(collection, _partition(robot)):
            self._client.create_partition(collection, _partition(robot))
        self._others: Tuple[float, List[str]] = (-math.inf, [])

    # ---- the collection ---------------------------------------------------------------------
    def _open(self, chunks: int, index: str) -> int:
        """Create the collection, or check an existing one holds this model's descriptors and room for this
        robot's local features; returns its number of local-feature string fields."""
        c, name = self._client, self.collection
        if not c.has_collection(name):
            # milvus-lite in this process logs a traceback for a call pymilvus makes while waiting for the index
            # (AllocTimestamp, which it does not implement); the call's failure is handled by pymilvus
            quiet, level = logging.getLogger("grpc._server"), logging.getLogger("grpc._server").level
            quiet.setLevel(logging.CRITICAL)
            try:
                c.create_collection(name, schema=self._schema(max(chunks, 1)), index_params=self._index(index),
                                    properties={MODEL_PROPERTY: self.model} if self.model else None)
            except Exception:
                if not c.has_collection(name):  # not another robot creating it at the same moment
                    raise
            finally:
                quiet.setLevel(level)
        described = c.describe_collection(name)
        fields = {f["name"]: f for f in described["fields"]}
        missing = {"key", "vector", "model", *META_FIELDS} - set(fields)
        if missing:
            raise SharedMapError(f"Milvus collection {name} is not a vpr_ros shared map (no field {sorted(missing)})")
        have = sum(1 for f in fields if f.startswith("local_"))
        dim = int(fields["vector"].get("params", {}).get("dim", 0))
        if dim != self.dim:
            raise SharedMapError(f"Milvus collection {name} holds {dim}-D descriptors, this model makes {self.dim}-D "
                                 f"ones: use another map.milvus_collection for this model")
        if have < chunks:
            raise SharedMapError(f"Milvus collection {name} has room for {have * VARCHAR_MAX} characters of local "
                                 f"features per keyframe, this model makes up to {chunks * VARCHAR_MAX}: lower "
                                 f"model.max_local_features or use another map.milvus_collection")
        c.load_collection(name)
        theirs = (described.get("properties") or {}).get(MODEL_PROPERTY, "")
        if not theirs:  # a collection made without the property: its first row says
            rows = c.query(name, filter='kid >= 0', output_fields=["model"], limit=1)
            theirs = rows[0]["model"] if rows else ""
        if theirs and self.model and theirs != self.model:
            raise SharedMapError(f"Milvus collection {name} holds descriptors of model {theirs}, this node runs "
                                 f"{self.model}: descriptors of different models are not comparable (use another "
                                 f"map.milvus_collection)")
        return have

    def _schema(self, chunks: int) -> Any:
        t = self._types
        s = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("key", t.VARCHAR, is_primary=True, max_length=160)  # "<robot>:<keyframe id>"
        s.add_field("robot", t.VARCHAR, max_length=64)
        s.add_field("session", t.INT64)
        s.add_field("kid", t.INT64)
        s.add_field("stamp_ns", t.INT64)
        s.add_field("frame_id", t.VARCHAR, max_length=256)
        s.add_field("pose", t.ARRAY, element_type=t.DOUBLE, max_capacity=7)  # [] = no pose
        s.add_field("model", t.VARCHAR, max_length=160)  # identity.descriptor_fingerprint
        s.add_field("has_local", t.BOOL)
        for i in range(chunks):
            s.add_field(f"local_{i}", t.VARCHAR, max_length=VARCHAR_MAX)
        s.add_field("vector", t.FLOAT_VECTOR, dim=self.dim)
        return s

    def _index(self, index: str) -> Any:
        params = self._client.prepare_index_params()
        params.add_index("vector", index_type=index, metric_type="IP")
        return params

    # ---- the store operations ---------------------------------------------------------------
    def _write(self, entries: Sequence[SharedEntry]) -> None:
        rows = []
        for e in entries:
            kf = e.keyframe
            text = pack_local(e.local) if e.local is not None else ""
            if len(text) > self.chunks * VARCHAR_MAX:
                text = ""  # more features than the collection has room for: the keyframe goes without them
            row: Dict[str, Any] = {"key": f"{self.robot}:{kf.id}", "robot": self.robot, "session": int(kf.session),
                                   "kid": int(kf.id), "stamp_ns": int(kf.stamp_ns), "frame_id": kf.frame_id[:256],
                                   "pose": list(kf.pose) if kf.pose is not None else [], "model": self.model,
                                   "has_local": bool(text), "vector": e.descriptor.tolist()}
            for i in range(self.chunks):
                row[f"local_{i}"] = text[i * VARCHAR_MAX:(i + 1) * VARCHAR_MAX]
            rows.append(row)
        self._client.upsert(self.collection, rows, partition_name=_partition(self.robot), timeout=self.timeout_s)
        if self._lite:  # milvus-lite searches sealed segments by index, its write buffer by brute force in Python
            self._client.flush(self.collection, timeout=self.timeout_s)

    def _other_partitions(self) -> List[str]:
        """The other robots' partitions (listed again every `refresh_s`: robots join while others run)."""
        when, names = self._others
        if time.monotonic() - when > self.refresh_s:
            mine = _partition(self.robot)
            names = [p for p in self._client.list_partitions(self.collection, timeout=self.timeout_s)
                     if p.startswith("robot_") and p != mine]
            self._others = (time.monotonic(), names)
        return names

    def _search(self, descriptor: np.ndarray, k: int) -> List[Candidate]:
        others = self._other_partitions()
        if not others:
            return []
        hits = self._loaded(lambda: self._client.search(
            self.collection, [descriptor.tolist()], limit=k, partition_names=others, output_fields=META_FIELDS,
            search_params={"metric_type": "IP"}, timeout=self.timeout_s))[0]
        out = []
        for hit in hits:
            kf = self._keyframe(hit["entity"])
            if kf is not None and kf.robot != self.robot:
                out.append(Candidate(kf, float(hit["distance"])))
        return out

    def _keyframe(self, row: Dict[str, Any]) -> Optional[Keyframe]:
        """A search hit's keyframe, or None (counted) if another writer stored something malformed."""
        try:
            pose = check_pose(list(row["pose"])) if len(row["pose"]) else None
            return Keyframe(int(row["kid"]), int(row["stamp_ns"]), str(row["frame_id"]), pose,
                            SHARED if row["has_local"] else "", int(row["session"]), str(row["robot"]))
        except (KeyError, TypeError, ValueError):
            self.stats.bad_rows += 1
            return None

    def _fetch_local(self, keyframes: Sequence[Keyframe]) -> Dict[Tuple[str, int], str]:
        if not keyframes or not self.chunks:
            return {}
        rows = self._loaded(lambda: self._client.query(
            self.collection, ids=[f"{kf.robot}:{kf.id}" for kf in keyframes],
            output_fields=["robot", "kid"] + [f"local_{i}" for i in range(self.chunks)], timeout=self.timeout_s))
        return {(r["robot"], int(r["kid"])): "".join(r[f"local_{i}"] for i in range(self.chunks)) for r in rows}

    def _route(self, robot: str, session: int, lo_ns: int, hi_ns: int) -> List[Tuple[Keyframe, np.ndarray]]:
        rows = self._loaded(lambda: self._client.query(
            self.collection, filter=f'robot == "{robot}" and session == {session} and stamp_ns >= {lo_ns} and '
                                    f'stamp_ns <= {hi_ns}', partition_names=[_partition(robot)],
            output_fields=META_FIELDS + ["vector"], timeout=self.timeout_s))
        out = []
        for row in rows:
            kf = self._keyframe(row)
            vec = np.asarray(row.get("vector", ()), np.float32)
            if kf is not None and vec.shape == (self.dim,) and np.isfinite(vec).all():
                out.append((kf, vec))
            elif kf is not None:
                self.stats.bad_rows += 1
        return out

    def _loaded(self, read: Callable[[], Any]) -> Any:
        """`read()`, loading the collection first when the store says it is not loaded (a restarted server)."""
        try:
            return read()
        except Exception as exc:
            if getattr(exc, "code", None) != NOT_LOADED:
                raise
        self._client.load_collection(self.collection, timeout=self.timeout_s)
        return read()

    def _shutdown(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a connection that already broke
            pass
