"""Fuzz the map reader with structure-aware mutations of real saved maps (tests/unit/map_mutations.py):
only MapError may escape MapDatabase.load, a map that does load is searchable, and memory stays bounded
(Python/numpy allocations per case by tracemalloc; the whole process's peak RSS in a fresh subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from map_mutations import cases, write_cases

from vpr_core.keyframes import Keyframe
from vpr_core.local_features import LocalFeatures
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.map_ivf import IvfSettings

DIM = 1280  # the default model's descriptor size
MIN_CASES = 200


def _real_map(tmp_path: Path, index: str, n: int = 16) -> Path:
    """A map as the node saves it with the default re-ranking model: unit descriptors, poses, local features
    (IVF types: 160 keyframes, trained into 4 lists, so the lists, quantizer and direct map are all there)."""
    rng = np.random.default_rng(7)
    ivf = IvfSettings(train_at=78)
    n = 160 if index.startswith("ivf") else n
    db = MapDatabase(DIM, index, "false", ivf=ivf)
    for i in range(n):
        lf = LocalFeatures(rng.uniform(0, 320, (40, 2)), rng.normal(size=(40, 112)), (240, 320)) if i % 2 else None
        db.add(rng.normal(size=DIM), Keyframe(i, (1_700_000_000 + i) * 10**9, "camera",
                                             [float(i), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), lf)
    return db.save(tmp_path / f"real_{index}.vprmap")


@pytest.mark.parametrize("index", ["flat", "flat_fp16", "hnsw", "ivf_flat", "ivf_fp16", "ivf_rabitq"])
def test_only_map_error_escapes_and_memory_stays_bounded(tmp_path, index):
    src = _real_map(tmp_path, index)
    size = src.stat().st_size
    bound = max(32 << 20, 8 * size)  # bytes a load may allocate: a few copies of the file at most
    target = tmp_path / "case.vprmap"
    escaped, over, loaded, n = [], [], 0, 0
    query = np.random.default_rng(1).normal(size=DIM)
    for name, data in cases(src, seed={"flat": 0, "hnsw": 1, "flat_fp16": 2, "ivf_flat": 4, "ivf_fp16": 5, "ivf_rabitq": 6}[index]):
        n += 1
        target.write_bytes(data)
        tracemalloc.start()
        try:
            db = MapDatabase.load(target, use_gpu="false")
            loaded += 1
            db.search(query, 5)  # a map that loads must be usable
        except MapError:
            pass
        except BaseException as exc:  # noqa: BLE001 -- collected and reported below
            escaped.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        if peak > bound:
            over.append(f"{name}: {peak >> 20} MB")
    assert n >= MIN_CASES, f"only {n} fuzz cases"
    assert not escaped, f"{len(escaped)} of {n} cases raised something other than MapError:\n" + "\n".join(escaped[:15])
    assert not over, f"cases allocated more than {bound >> 20} MB:\n" + "\n".join(over[:15])
    assert loaded < n // 10, f"{loaded} of {n} mutated maps loaded: the mutations do not reach the checks"


def test_whole_fuzz_run_in_a_fresh_process_keeps_peak_rss_bounded(tmp_path):
    """Peak RSS counts FAISS's C++ allocations too, which tracemalloc does not see."""
    src = _real_map(tmp_path, "hnsw")
    n = write_cases(src, tmp_path / "cases", seed=3)  # made here, so the child's RSS is only loading
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("map_mutations.py")),
                          str(tmp_path / "cases"), str(src)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cases"] == n >= MIN_CASES and not report["escaped"], report["escaped"][:10]
    grown_mb = (report["maxrss_kb_after"] - report["maxrss_kb_before"]) / 1024
    assert grown_mb < 96, f"peak RSS grew by {grown_mb:.0f} MB over {report['cases']} cases of a " \
                          f"{src.stat().st_size >> 10} KB map"
