"""Extracted features kept on disk, so re-running an evaluation with other thresholds or K is instant.

Keyed by what determines them: the model (graph config and weights in memory: `identity.model_digest`),
the runtime, the number of local features kept, and every image file's path, size and modification time.
A changed image, checkpoint or setting is a new key; a cache file that does not read is recomputed.
Files live under `$VPR_ROS_CACHE/features`, else the repository's `runs/cache/features`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vpr_core.local_features import LocalFeatureStore, local_npz
from vpr_core.models import DescriptorExtractor
from vpr_core.models.identity import model_digest
from vpr_core.models.vpr_model import Extracted

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def default_cache() -> Path:
    base = os.environ.get("VPR_ROS_CACHE")
    return (Path(base).expanduser() if base else REPO / "runs" / "cache") / "features"


def feature_key(ex: DescriptorExtractor, paths: Sequence[Path]) -> str:
    files = []
    for p in paths:
        st = os.stat(p)
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    data = {"model": model_digest(ex.cfg, ex.model), "runtime": [ex.cfg.runtime, type(ex.runtime).__name__],
            "local": [ex.has_local, ex.cfg.max_local_features], "files": files}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


def load_features(folder: Path, key: str, count: int, has_local: bool) -> Optional[Extracted]:
    """The cached features of `count` images, or None (missing, unreadable or of another shape)."""
    path = folder / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            glob, contrast = z["global_desc"], z["contrast"]
            local = None
            if has_local:
                store = LocalFeatureStore.from_bytes(z["local"].tobytes())
                local = [store.get(i) for i in range(count)]
        if len(glob) != count or len(contrast) != count or (has_local and any(lf is None for lf in local)):
            raise ValueError(f"holds {len(glob)} rows for {count} images")
        return Extracted(glob, local, contrast)
    except Exception as exc:  # noqa: BLE001 - any damage: recompute (the cache is never the only copy)
        log.warning("feature cache %s is unreadable (%s); computing the features again", path, exc)
        return None


def save_features(folder: Path, key: str, ex: Extracted) -> None:
    """Write atomically (temporary file, rename): a killed run never leaves half a cache file."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"global_desc": ex.global_desc, "contrast": ex.contrast}
    if ex.local is not None:
        arrays["local"] = np.frombuffer(local_npz(list(enumerate(ex.local)), ex.local[0].dim if ex.local else 0),
                                        np.uint8)
    tmp = folder / f"{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, folder / f"{key}.npz")
