"""Thread counts as a decision: how many threads torch, FAISS and OpenCV may use in this process.

A robot runs the node beside SLAM. A pool larger than the cores left over turns every small piece of
work (a batch-1 forward, one query's search, one pair's matching) into waiting for preempted workers:
on 2 cores beside one busy process a 2-thread forward took 64 ms median / 208 ms p95, 1 thread 39 / 42 ms.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cv2
import faiss
import torch
from threadpoolctl import ThreadpoolController

from vpr_core.config import RuntimeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Threads:
    """The thread counts in effect after `apply_threads` (blas: numpy's OpenBLAS, -1 = none loaded)."""
    torch: int
    search: int
    opencv: int
    blas: int = -1


def auto_threads(cpus: int | None = None) -> int:
    """A quarter of the CPU cores, at least one: the rest stays with SLAM and the OS."""
    cpus = cpus if cpus is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else os.cpu_count() or 1)
    return max(1, int(cpus) // 4)


def apply_threads(cfg: RuntimeConfig) -> Threads:
    """Set numpy's OpenBLAS, torch's intra-op, FAISS's OpenMP and OpenCV's thread counts (process-wide)."""
    # OpenBLAS first: an OpenMP build sets the OpenMP default as it goes, which the counts below then override
    blas = ThreadpoolController().select(internal_api="openblas")  # numpy's; torch's own BLAS is not touched
    if cfg.blas_threads:
        blas.limit(limits=cfg.blas_threads)
    torch.set_num_threads(cfg.threads or auto_threads())
    if cfg.search_threads:
        faiss.omp_set_num_threads(cfg.search_threads)
    if cfg.opencv_threads:
        cv2.setNumThreads(cfg.opencv_threads)
    counts = [i["num_threads"] for i in blas.info()]
    applied = Threads(torch.get_num_threads(), faiss.omp_get_max_threads(), cv2.getNumThreads(),
                      min(counts) if counts else -1)
    log.info("threads: torch %d, faiss %d, opencv %d, openblas %d", applied.torch, applied.search, applied.opencv,
             applied.blas)
    return applied
