"""`vpr-closures DATASET`: loop closures as a SLAM back end receives them, stage by stage.

The dataset is driven as one camera stream (database traversal, then query traversal, 10 Hz stamps,
mapping on throughout, as `make demo` does) through the same `PlaceRecognizer` the node runs. Each
stage switches one more part of the decision on: threshold only, + temporal consistency, + the
appearance-change exclusion window, + re-ranking verification, + sequence matching. For each
stage it reports the published closures at the configured thresholds (precision, recall) and the
precision-recall curve of the swept score (recall at 100 % precision, AUC), and saves the curves as a PNG.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from offline_eval.benchmark import parse_overrides
from offline_eval.protocol import DatasetFeatures, contrast_of, extract_dataset, stream_stamps
from offline_eval.feature_cache import default_cache
from vpr_core.config import Config, ConfigError, config_from_dict, load_config
from vpr_core.consistency import Consistency
from vpr_core.datasets import DatasetError, PlaceDataset, load_dataset
from vpr_core.metrics import ClosureStats, pr_curve
from vpr_core.models import DescriptorExtractor
from vpr_core.pipeline import PlaceRecognizer


@dataclass
class Stage:
    """One configuration of the decision: config overrides and the score its PR curve sweeps."""
    name: str
    overrides: Dict[str, object]
    sweep: str  # "score" (loop_threshold's score) or "margin" (min_margin's)


def stages(cfg: Config, sequence_length: int) -> List[Stage]:
    """Each stage adds one part of the decision to the previous one: the single-frame threshold with
    the time/count exclusion (the original rule), temporal consistency, the appearance-change window,
    re-ranking verification (when the model has local features), sequence matching."""
    rr = cfg.rerank.method != "none"
    change = cfg.detector.exclude_recent_change or 5.0
    single = {"rerank.method": "none", "detector.sequence_length": 1, "detector.min_margin": 0.0,
              "detector.exclude_recent_change": 0.0}
    out = [Stage("threshold", {**single, "detector.temporal_consistency": 1}, "score"),
           Stage("+consistency", dict(single), "score"),
           Stage("+window", {**single, "detector.exclude_recent_change": change}, "score")]
    last = {**out[-1].overrides}
    if rr:
        last.pop("rerank.method")
        out.append(Stage("+rerank", dict(last), "score"))
    last.update({"detector.sequence_length": sequence_length})
    out.append(Stage("+sequence", last, "score"))
    return out


@dataclass
class StageResult(ClosureStats):
    """The closures one stage publishes at the configured thresholds, and its swept PR curve."""
    stage: str = ""
    recall_at_100: float = 0.0
    auc: float = 0.0
    curve: Dict[str, list] = field(default_factory=dict)  # precision, recall, thresholds, sweep
    rejections: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Stream:
    """A dataset as one stream: frame i's features, and the judge of a closure frame -> map frame."""
    features: List[tuple]  # (global descriptor, local features or None, image contrast) per frame, in driving order
    is_true: Callable[[int, int], bool]
    revisits: int


def as_stream(ds: PlaceDataset, feats: DatasetFeatures) -> Stream:
    n = len(ds.database)
    pos = [set(p.tolist()) for p in ds.positives]
    loc = lambda ex, i: ex.local[i] if ex.local else None  # noqa: E731
    frames = [(feats.database.global_desc[i], loc(feats.database, i), contrast_of(feats.database, i)) for i in range(n)]
    frames += [(feats.queries.global_desc[i], loc(feats.queries, i), contrast_of(feats.queries, i))
               for i in range(len(ds.queries))]
    return Stream(frames, lambda q, m: q >= n and 0 <= m < n and m in pos[q - n], len(ds.queries))


Record = tuple  # (frame, candidate id or None, score, margin, other gates passed, open-run rejection,
#                 passed by the sequence-support route regardless of the score threshold)


def published(records: Sequence[Record], tc: int, window: int, key: int = 1,
              threshold: float = -np.inf, velocities: Sequence[float] = (1.0,)) -> List[tuple]:
    """(frame, candidate) of every closure published over `records` when record field `key` (2 = score,
    3 = margin) must reach `threshold`; temporal consistency applied exactly as the detector does (ids are
    frame numbers: the stream is gap-free)."""
    out, consistency = [], Consistency(window, velocities, tc - 1)
    for rec in records:
        frame, cand, ok = rec[0], rec[1], rec[4]
        passed = cand is not None and ok and rec[key] >= threshold
        if consistency.update(cand if passed else None, frame) >= tc:
            out.append((frame, cand))
    return out


def sweep(records: Sequence[Record], stream: "Stream", key: int, tc: int, window: int,
          velocities: Sequence[float] = (1.0,)) -> tuple:
    """(thresholds, precision, recall): the decision replayed at every distinct value of field `key`."""
    values = np.array([r[key] for r in records if r[1] is not None and r[4] and np.isfinite(r[key])])
    thresholds = np.unique(values)[::-1]
    prec, rec = [], []
    for th in thresholds:
        pub = published(records, tc, window, key, th, velocities)
        tp = sum(stream.is_true(f, c) for f, c in pub)
        prec.append(tp / len(pub) if pub else 1.0)
        rec.append(tp / stream.revisits if stream.revisits else 0.0)
    return thresholds, np.asarray(prec), np.asarray(rec)


def run_stage(base: Config, stage: Stage, stream: Stream, extractor: DescriptorExtractor,
              progress: bool = True) -> StageResult:
    """Drive the stream once with the score gates open (recording every frame's decision), count the
    closures the configured thresholds publish, and replay the decision over a threshold sweep.
    The replay keeps the place links of the open run (links only change the margin's "other place")."""
    cfg = config_from_dict(base.to_dict())
    for key, value in stage.overrides.items():
        section, leaf = key.split(".")
        setattr(getattr(cfg, section), leaf, value)
    rec = PlaceRecognizer(cfg, extractor=extractor)
    det = rec.detector
    th_score, th_margin = det.threshold, cfg.detector.min_margin
    # open the score gates to record every frame's scores; with sequences loop_threshold stays: it only
    # decides the support route, which the detector reports per frame (Decision.supported)
    if cfg.detector.sequence_length == 1:
        cfg.detector.loop_threshold = 0.0
    cfg.detector.sequence_threshold, cfg.detector.min_margin = -np.inf, 0.0
    reranking = cfg.rerank.method != "none"
    records: List[Record] = []
    t0 = time.perf_counter()
    frames = list(zip(stream.features, stream_stamps(len(stream.features))))
    for i, ((glob, local, contrast), stamp) in enumerate(tqdm(frames, desc=stage.name, disable=not progress)):
        d = rec.process_descriptor(glob, stamp, "camera", local=local if reranking else None, contrast=contrast).decision
        ok = d.candidate is not None and d.rejected in ("", "inconsistent", "below_threshold", "ambiguous")
        records.append((i, d.candidate.id if d.candidate else None, d.score, d.margin, ok, d.rejected,
                        ok and d.supported))
    seconds = time.perf_counter() - t0
    tc, window = cfg.detector.temporal_consistency, cfg.detector.consistency_window
    vel = cfg.detector.sequence_velocities
    margin_ok = lambda m: th_margin <= 0 or m >= th_margin  # noqa: E731  (the detector's rule: NaN fails a set margin)
    gated = [(f, c, s, m, ok and (s >= th_score or alt) and margin_ok(m)) for f, c, s, m, ok, _, alt in records]
    pub = published(gated, tc, window, velocities=vel)
    key = 2 if stage.sweep == "score" else 3
    # the swept gate is applied by `sweep`; a frame the support route passes stays in at every threshold
    other = [(f, c, np.inf if alt and key == 2 else s, m, ok and (margin_ok(m) if key == 2 else (s >= th_score or alt)))
             for f, c, s, m, ok, _, alt in records]
    thresholds, prec, recall = sweep(other, stream, key, tc, window, vel)
    summary = pr_curve(prec, recall)
    return StageResult(published=len(pub), correct=int(sum(stream.is_true(f, c) for f, c in pub)),
                       revisits=stream.revisits, stage=stage.name, recall_at_100=summary.recall_at_100,
                       auc=summary.auc, curve={"precision": prec.tolist(), "recall": recall.tolist(),
                                               "thresholds": thresholds.tolist(), "sweep": stage.sweep},
                       rejections=rejections(records, pub, th_score, th_margin), seconds=seconds)


def rejections(records: Sequence[Record], pub: Sequence[tuple], th_score: float, th_margin: float) -> Dict[str, int]:
    """Frames not published, by the first gate that stops them at the configured thresholds."""
    out: Dict[str, int] = {}
    done = {f for f, _ in pub}
    for f, c, s, m, ok, why, alt in records:
        if f in done:
            continue
        reason = (why if why not in ("", "inconsistent", "below_threshold", "ambiguous") else
                  "below_threshold" if not (s >= th_score or alt) else
                  "ambiguous" if th_margin > 0 and not m >= th_margin else "inconsistent")
        out[reason] = out.get(reason, 0) + 1
    return out


def table(results: Sequence[StageResult], title: str) -> str:
    head = (f"{'stage':<14}{'published':>10}{'correct':>9}{'precision':>10}{'recall':>8}{'R@100%P':>9}"
            f"{'AUC-PR':>8}{'swept':>8}{'s':>7}")
    lines = [title, head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.stage:<14}{r.published:>10d}{r.correct:>9d}{r.precision:>10.3f}{r.recall:>8.3f}"
                     f"{r.recall_at_100:>9.3f}{r.auc:>8.3f}{r.curve['sweep']:>8}{r.seconds:>7.1f}")
    lines.append("rejections at the configured thresholds: " + "; ".join(
        f"{r.stage}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.rejections.items())) for r in results))
    return "\n".join(lines)


def plot(results: Sequence[StageResult], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in results:
        order = np.argsort(r.curve["recall"], kind="stable")
        ax.plot(np.asarray(r.curve["recall"])[order], np.asarray(r.curve["precision"])[order],
                label=f"{r.stage} (R@100%P {r.recall_at_100:.2f})")
        if r.published:
            ax.scatter([r.recall], [r.precision], marker="x")
    ax.set(xlabel="recall (revisits closed)", ylabel="precision (published closures)", title=title,
           xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr-closures", description=__doc__)
    ap.add_argument("dataset", help="dataset folder (database/ + query/ traversals with ground truth)")
    ap.add_argument("--config", default=None, help="parameters YAML (default: config/default_rerank.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--segment", metavar="START:STOP", help="only this stretch of the route (database positions)")
    ap.add_argument("--sequence-length", type=int, default=None,
                    help="frames per sequence in the +sequence stage (default: detector.sequence_length, else 10)")
    ap.add_argument("--stages", help="comma-separated subset of the stage names to run (default: all)")
    ap.add_argument("--tolerance", type=int, default=2, help="frames of slack for frame-synchronised ground truth")
    ap.add_argument("--out", type=Path, help="folder for closures.json and closures_pr.png (default: runs/<time>)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config or Path(__file__).resolve().parent.parent / "config" / "default_rerank.yaml",
                          parse_overrides(args.set))
        ds = load_dataset(args.dataset, args.tolerance).segment_of(args.segment)
    except (ConfigError, DatasetError, ValueError) as exc:
        print(f"vpr-closures: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / time.strftime("closures-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    extractor = DescriptorExtractor(cfg.model)
    stream = as_stream(ds, extract_dataset(extractor, ds, cache=default_cache()))
    import torch
    torch.set_num_threads(1)  # per-query matching is small work: one thread is several times faster on 2 cores
    length = args.sequence_length or (cfg.detector.sequence_length if cfg.detector.sequence_length > 1 else 10)
    wanted = [n.strip() for n in args.stages.split(",")] if args.stages else None
    chosen = [st for st in stages(cfg, length) if wanted is None or st.name in wanted]
    if not chosen:
        print(f"vpr-closures: --stages names none of {[st.name for st in stages(cfg, length)]}", file=sys.stderr)
        return 2
    results = [run_stage(cfg, st, stream, extractor) for st in chosen]
    title = (f"{ds.name}{' [' + args.segment + ']' if args.segment else ''}: {len(ds.database)} database + "
             f"{len(ds.queries)} query frames as one stream, {cfg.model.name}")
    print(table(results, title))
    (out / "closures.json").write_text(json.dumps({"title": title, "config": cfg.to_dict(), "stages": [
        {**r.__dict__, "precision": r.precision, "recall": r.recall} for r in results]}, indent=1))
    short = f"{ds.name}{' [' + args.segment + ']' if args.segment else ''}: closures by stage"
    print(f"figure: {plot(results, out / 'closures_pr.png', short)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
