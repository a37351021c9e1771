"""Benchmark output: a plain-text table (with ratios against the baseline measured in the same
run), a JSON record, and a Recall@K plot."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from offline_eval.direct import PathResult
from offline_eval.landmarks import as_json
from vpr_core.metrics import recall_at_k


def recall_table(results: Sequence[PathResult], baseline: Optional[PathResult] = None, title: str = "") -> str:
    head = (f"{'path':<22}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'R@1 / base':>12}{'AUC-PR':>8}{'R@100%P':>9}"
            f"{'seconds':>10}{'missing':>9}")
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for r in results:
        rows = [(r.path, r.recall)] if not r.recall_global else \
            [(f"{r.path} (global)", r.recall_global), (f"{r.path} (re-ranked)", r.recall)]
        for name, rec in rows:
            ratio = (rec[1] / baseline.recall[1]) if baseline and baseline.recall.get(1) else float("nan")
            # the PR curve is of the path's final ranking (re-ranked when re-ranking is on)
            pr = r.pr if r.pr is not None and rec is r.recall else None
            auc, r100 = (f"{pr.auc:>8.3f}", f"{pr.recall_at_100:>9.3f}") if pr else (f"{'-':>8}", f"{'-':>9}")
            lines.append(f"{name:<22}{rec[1]:>8.3f}{rec[5]:>8.3f}{rec[10]:>8.3f}"
                         f"{ratio:>11.2f}x{auc}{r100}{r.seconds:>10.1f}{r.missing:>9d}")
    reranked = [r for r in results if r.recall_global]
    lines += [f"{r.path}: re-ranking took {r.rerank_ms:.1f} ms per query" for r in reranked]
    return "\n".join(lines)


def agreement(a: PathResult, b: PathResult) -> float:
    """Fraction of queries whose top-1 database image is the same on both paths."""
    return float(np.mean(a.ranked[:, 0] == b.ranked[:, 0])) if len(a.ranked) else float("nan")


def save_json(results: Sequence[PathResult], path: Path, **meta) -> Path:
    path.write_text(json.dumps({**meta, "results": [
        {"path": r.path, "recall": r.recall, "seconds": r.seconds, "missing": r.missing,
         "pr": asdict(r.pr) if r.pr is not None else None,
         **({"landmarks": as_json(r.landmarks)} if r.landmarks else {}),
         **({"recall_global": r.recall_global, "rerank_ms": r.rerank_ms} if r.recall_global else {})}
        for r in results]}, indent=2))
    return path


def plot_recall(results: Sequence[PathResult], positives: List[np.ndarray], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(range(1, results[0].ranked.shape[1] + 1))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in results:
        rec = recall_at_k(r.ranked, positives, ks)
        ax.plot(ks, [rec[k] for k in ks], marker="o", label=r.path)
    ax.set(xlabel="K", ylabel="Recall@K", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
