"""Benchmark output, every writer in one place: plain-text tables (paths with ratios against the baseline
measured in the same run; the model zoo), JSON records, and figures: Recall@K curves, precision-recall
curves and an example-match sheet."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from offline_eval.protocol import PathResult
from offline_eval.zoo import ZooRow, config_label
from offline_eval.landmarks import as_json
from vpr_core.metrics import RECALL_KS, recall_at_k, retrieval_pr


def recall_table(results: Sequence[PathResult], baseline: Optional[PathResult] = None, title: str = "") -> str:
    head = (f"{'path':<22}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'R@20':>8}{'R@1 / base':>12}{'AUC-PR':>8}{'R@100%P':>9}"
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
            at = "".join(f"{rec[k]:>8.3f}" if k in rec else f"{'-':>8}" for k in RECALL_KS)
            lines.append(f"{name:<22}{at}{ratio:>11.2f}x{auc}{r100}{r.seconds:>10.1f}{r.missing:>9d}")
    reranked = [r for r in results if r.recall_global]
    lines += [f"{r.path}: re-ranking took {r.rerank_ms:.1f} ms per query" for r in reranked]
    return "\n".join(lines)


def agreement(a: PathResult, b: PathResult) -> float:
    """Fraction of queries whose top-1 database image is the same on both paths."""
    return float(np.mean(a.ranked[:, 0] == b.ranked[:, 0])) if len(a.ranked) else float("nan")


def per_query(r: PathResult, positives: Sequence[np.ndarray]) -> List[dict]:
    """Each query's outcome: its top-1 database index and score, and the rank of its first true match
    (None when none is in the ranking, or the query has no true match)."""
    out = []
    for i, pos in enumerate(positives):
        hit = np.flatnonzero(np.isin(r.ranked[i], pos)) if len(pos) else np.zeros(0, np.int64)
        top = int(r.ranked[i, 0]) if r.ranked.shape[1] else -1
        out.append({"top1": top, "score": float(r.scores[i, 0]) if top >= 0 else None,
                    "first_true_rank": int(hit[0]) + 1 if len(hit) else None})
    return out


def save_json(results: Sequence[PathResult], path: Path, positives: Optional[Sequence[np.ndarray]] = None,
              **meta) -> Path:
    """results.json: per path the aggregate metrics and, given the ground truth, every query's outcome."""
    path.write_text(json.dumps({**meta, "results": [
        {"path": r.path, "recall": r.recall, "seconds": r.seconds, "missing": r.missing,
         "pr": asdict(r.pr) if r.pr is not None else None,
         **({"queries": per_query(r, positives)} if positives is not None else {}),
         **({"landmarks": as_json(r.landmarks)} if r.landmarks else {}),
         **({"recall_global": r.recall_global, "rerank_ms": r.rerank_ms} if r.recall_global else {})}
        for r in results]}, indent=2))
    return path


def zoo_table(rows: Sequence[ZooRow], title: str, baseline: Optional[PathResult] = None) -> str:
    """One line per config; R@1 and R@5 after re-ranking and ms per query for every K measured; the
    raw-pixel baseline of the same run last, when given."""
    ks = sorted({k for r in rows for k in r.reranked}) or [20, 100]
    head = (f"{'config':<34}{'dim':>6}{'img/s b1':>10}{'img/s b16':>10}{'R@1':>7}{'R@5':>7}"
            + "".join(f"{f'R@1 rr{k}':>10}{f'R@5 rr{k}':>10}{'ms/q':>8}" for k in ks) + "  weights")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        rr = "".join(f"{r.reranked[k][1]:>10.3f}{r.reranked[k].get(5, float('nan')):>10.3f}{r.rerank_ms[k]:>8.1f}"
                     if k in r.reranked else f"{'-':>10}{'-':>10}{'-':>8}" for k in ks)
        lines.append(f"{config_label(r.config):<34}{r.dim:>6}{r.ips_b1:>10.1f}{r.ips_b16:>10.1f}{r.recall[1]:>7.3f}"
                     f"{r.recall[5]:>7.3f}{rr}  {r.weights}")
    if baseline is not None:
        rr = "".join(f"{'-':>10}{'-':>10}{'-':>8}" for _ in ks)
        lines.append(f"{baseline.path:<34}{32 * 24:>6}{'-':>10}{'-':>10}{baseline.recall[1]:>7.3f}"
                     f"{baseline.recall[5]:>7.3f}{rr}  none ({baseline.seconds:.1f} s for the whole dataset)")
    return "\n".join(lines)


def zoo_json(rows: Sequence[ZooRow], path: Path, **meta) -> Path:
    path.write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    return path


def _save_lines(path: Path, lines: Sequence[tuple], title: str, xlabel: str, ylabel: str,
                figsize: tuple = (5, 3.5), legend_size: Optional[int] = None, **limits) -> Path:
    """One PNG of (x, y, label, marker) series on axes from 0 to 1 in y: the frame every benchmark curve uses."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    for x, y, label, marker in lines:
        ax.plot(x, y, marker=marker, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, 1.02), **limits)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_zoo(rows: Sequence[ZooRow], path: Path, title: str) -> Path:
    """Recall@N curves of several model configs on one plot (global descriptor, same dataset and run)."""
    lines = []
    for r in rows:
        ks = sorted(int(k) for k in r.curve)
        lines.append((ks, [r.curve[k] for k in ks], f"{config_label(r.config)} ({r.dim}-D)", "."))
    return _save_lines(path, lines, title, "N", "Recall@N", figsize=(5.5, 3.8), legend_size=7)


def plot_recall(results: Sequence[PathResult], positives: List[np.ndarray], path: Path, title: str) -> Path:
    """Recall@K curves of each path, K up to its ranking's depth."""
    ks = list(range(1, results[0].ranked.shape[1] + 1))
    lines = []
    for r in results:
        rec = recall_at_k(r.ranked, positives, ks)
        lines.append((ks, [rec[k] for k in ks], r.path, "o"))
    return _save_lines(path, lines, title, "K", "Recall@K")


def plot_pr(results: Sequence[PathResult], positives: List[np.ndarray], path: Path, title: str) -> Path:
    """Precision-recall curves of accepting each path's top-1 match by its score (VPR-Bench's protocol)."""
    lines = []
    for r in results:
        p, rec = retrieval_pr(r.ranked, r.scores, positives)
        label = f"{r.path} (AUC {r.pr.auc:.3f})" if r.pr is not None else r.path
        lines.append((np.r_[0.0, rec], np.r_[p[:1], p] if len(p) else [1.0], label, None))
    return _save_lines(path, lines, title, "recall", "precision", legend_size=7, xlim=(0, 1.0))


def match_sheet(result: PathResult, queries: Sequence[Path], database: Sequence[Path],
                positives: Sequence[np.ndarray], path: Path, rows: int = 6, top: int = 3) -> Path:
    """The way VPR papers show results: per row a query, its top candidates framed green (a true place) or red,
    and a true database image; rows spread over the queries, wrong top-1s first when there are some."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vpr_core.images import load_image

    answerable = [i for i in range(len(queries)) if len(positives[i])]
    wrong = [i for i in answerable if result.ranked[i, 0] not in positives[i]]
    right = [i for i in answerable if i not in set(wrong)]
    half = min(len(wrong), rows // 2)
    pick = lambda idx, n: [idx[j] for j in np.linspace(0, len(idx) - 1, n).round().astype(int)] if n else []  # noqa: E731
    chosen = pick(wrong, half) + pick(right, min(len(right), rows - half))
    fig, axes = plt.subplots(max(1, len(chosen)), top + 2, figsize=(2.0 * (top + 2), 1.7 * max(1, len(chosen))),
                             squeeze=False)
    for row, q in zip(axes, chosen):
        cells = [("query", queries[q], None)]
        cells += [(f"#{k + 1} {result.scores[q, k]:.2f}", database[int(d)], int(d) in positives[q])
                  for k, d in enumerate(result.ranked[q, :top]) if d >= 0]
        cells += [("ground truth", database[int(positives[q][0])], None)]
        for ax, (label, img, ok) in zip(row, cells):
            ax.imshow(load_image(img))
            ax.set_title(label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if ok is not None:
                for side in ax.spines.values():
                    side.set(color="tab:green" if ok else "tab:red", linewidth=3)
        for ax in row[len(cells):]:
            ax.axis("off")
    fig.suptitle(f"{result.path}: green = a true place, red = wrong", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
