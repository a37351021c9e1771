"""`vpr-benchmark DATASET`: Recall@1/5/10 of a model config on a dataset folder, through the direct
path and through the real node (bag replay), beside the raw-pixel baseline of the same run."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import yaml

from offline_eval.baselines import run_raw_pixels
from offline_eval.direct import run_direct
from offline_eval.feature_cache import default_cache
from offline_eval.protocol import PathResult, extract_dataset
from offline_eval.report import agreement, match_sheet, plot_pr, plot_recall, recall_table, save_json
from vpr_core.config import ConfigError, load_config
from vpr_core.datasets import DatasetError, load_dataset
from vpr_core.models import DescriptorExtractor

REPO = Path(__file__).resolve().parent.parent
PATHS = ("direct", "replay", "raw")


def parse_overrides(items: List[str]) -> dict:
    """`--set detector.top_k=20` pairs; values are parsed as YAML (numbers, booleans, lists)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr-benchmark", description=__doc__)
    ap.add_argument("dataset", help="dataset folder (query/ + database/ or ref/ with ground truth), or a pair list "
                                    "file (path1,path2,label lines: ROC AUC and accuracy, DINOVPR's protocol)")
    ap.add_argument("--config", help="model/detector YAML (default: config/default.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--paths", help=f"comma-separated subset of {','.join(PATHS)} (default: all; with --zoo: direct,raw)")
    ap.add_argument("--max-queries", type=int, help="evaluate at most this many queries")
    ap.add_argument("--stride", type=int, default=1, help="use every N-th query")
    ap.add_argument("--head", type=int, metavar="N",
                    help="only the first N database images and the queries that match them (a shorter route)")
    ap.add_argument("--segment", metavar="START:STOP",
                    help="only database images [START, STOP) of a route and the queries that match them "
                         "(Nordland's test stretch: 2700:3576; the split the trained models never saw)")
    ap.add_argument("--tolerance", type=int, default=2, help="frames of slack for frame-synchronised ground truth")
    ap.add_argument("--zoo", nargs="+", type=Path, metavar="CONFIG",
                    help="compare model configs instead (descriptor size, images/s at batch 1 and 16, Recall@1/5, "
                         "and for two-stage configs Recall@1 after re-ranking the top K with its time per query)")
    ap.add_argument("--rerank-k", default="20,100", help="with --zoo: the K values to re-rank (comma-separated)")
    ap.add_argument("--descriptors", nargs=2, type=Path, action="append", metavar=("QUERIES.npy", "DATABASE.npy"),
                    help="also score descriptors computed elsewhere (repeat to compare several side by side in one "
                         "table and one plot): one row per query / database image of the whole "
                         "dataset, in its order (vpr-core extract writes them)")
    ap.add_argument("--efficient-ram", action="store_true",
                    help="for large databases: the map keeps local features beyond 512 MB in a spill file "
                         "(map.max_local_mb, unless set), and descriptors extracted in batches go to memory-mapped "
                         "files under --out instead of memory")
    ap.add_argument("--out", type=Path, help="folder for results.json, recall.png and the bags (default: runs/<time>)")
    args = ap.parse_args(argv)
    if Path(args.dataset).is_file():
        return run_pair_list(ap, args)
    paths = [p.strip() for p in (args.paths or ("direct,raw" if args.zoo else ",".join(PATHS))).split(",") if p.strip()]
    if set(paths) - set(PATHS):
        ap.error(f"--paths accepts {PATHS}")
    if args.descriptors and (args.zoo or args.stride != 1 or args.max_queries or args.head or args.segment):
        ap.error("--descriptors scores whole-dataset files (one row per image): it cannot be combined with --zoo, "
                 "--stride, --max-queries, --head or --segment")
    if args.zoo:  # every option works in zoo mode or is refused with the reason
        if args.config:
            ap.error("--config has no effect with --zoo: list every config to compare after --zoo")
        if "replay" in paths:
            ap.error("--zoo compares configs on the direct path only: --paths direct or direct,raw")
        if args.efficient_ram:
            ap.error("--efficient-ram applies to the paths of one config, not to --zoo")
        missing = [str(p) for p in args.zoo if resolve_config(p) is None]
        if missing:
            print(f"vpr-benchmark: config file(s) not found (looked relative to the current folder and to "
                  f"{REPO}): {', '.join(missing)}", file=sys.stderr)
            return 2
        args.zoo = [resolve_config(p) for p in args.zoo]
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        ds = load_dataset(args.dataset, args.tolerance).segment_of(args.segment)
        ds = (ds.head(args.head) if args.head else ds).subset(args.max_queries, args.stride)
    except (ConfigError, DatasetError, ValueError) as exc:
        print(f"vpr-benchmark: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / time.strftime("benchmark-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.efficient_ram and not cfg.map.max_local_mb:
        cfg.map.max_local_mb = 512
    if args.zoo:
        return run_zoo(args.zoo, ds, [int(k) for k in args.rerank_k.split(",") if k.strip()], out, "raw" in paths,
                       parse_overrides(args.set))
    print(f"{ds.name}: {len(ds.database)} database images, {len(ds.queries)} queries; model {cfg.model.name}")
    results: List[PathResult] = []
    precomputed: List[PathResult] = []
    for queries, database in args.descriptors or []:  # checked before the long paths run: a wrong file fails at once
        from offline_eval.precomputed import run_descriptors
        try:
            precomputed.append(run_descriptors(ds, queries, database))
        except ValueError as exc:
            print(f"vpr-benchmark: {exc}", file=sys.stderr)
            return 2
        names = [r.path for r in precomputed]
        if names.count(names[-1]) > 1:  # two files of one name: tell them apart by their folder
            precomputed[-1].path = f"descriptors {queries.parent.name}/{queries.stem}"
    baseline = run_raw_pixels(ds) if "raw" in paths else None
    if "direct" in paths:
        extractor = DescriptorExtractor(cfg.model)
        feats = None
        if ds.revisited is not None:  # mAP ranks every database image: the model runs over the dataset once, and
            #                            the direct path maps and searches those same features
            feats = extract_dataset(extractor, ds, cache=None if args.efficient_ram else default_cache(),
                                    memmap=out if args.efficient_ram else None)
        results.append(run_direct(cfg, ds, extractor=extractor, features=feats))
        if feats is not None:
            from offline_eval.landmarks import landmark_scores, query_descriptors
            results[-1].landmarks = landmark_scores(query_descriptors(extractor, ds), feats.database.global_desc,
                                                    ds.revisited)
    if "replay" in paths:
        from offline_eval.replay import run_replay  # needs rclpy and vpr_msgs
        results.append(run_replay(cfg, ds, Path(tempfile.mkdtemp(dir=out, prefix="replay-"))))
    results += precomputed
    if baseline is not None:
        results.append(baseline)
    print(recall_table(results, baseline, title=f"{ds.name} ({cfg.model.name})"))
    marked = {r.path: r.landmarks for r in results if r.landmarks}
    if marked:
        from offline_eval.landmarks import landmark_table
        print(landmark_table(marked, f"{ds.name}: mAP / mP@10 (%), revisitop protocol: queries cropped to their box "
                                     f"(descriptor files: as computed), full ranking, junk left out"))
    direct = next((r for r in results if r.path == "direct"), None)
    replayed = next((r for r in results if r.path == "bag replay"), None)
    if direct and replayed:
        print(f"direct vs bag replay: same top-1 on {agreement(direct, replayed):.1%} of queries")
    save_json(results, out / "results.json", ds.positives, dataset=str(ds.root), model=cfg.model.name,
              queries=len(ds.queries))
    figures = [plot_recall(results, ds.positives, out / "recall.png", ds.name),
               plot_pr(results, ds.positives, out / "pr.png", f"{ds.name}: accepting the top-1 by score")]
    if results:  # the first path's matches (direct unless only others ran)
        figures.append(match_sheet(results[0], ds.queries, ds.database, ds.positives, out / "matches.png"))
    print(f"wrote {', '.join(str(f) for f in figures)} and {out / 'results.json'}")
    return 0


def run_pair_list(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """A pair list instead of a dataset folder: options that mean nothing for pairs are refused."""
    from offline_eval.pairs import pair_table, run_pairs
    given = [opt for opt, on in (("--zoo", args.zoo), ("--paths", args.paths), ("--descriptors", args.descriptors),
                                 ("--stride", args.stride != 1), ("--max-queries", args.max_queries),
                                 ("--head", args.head), ("--segment", args.segment)) if on]
    if given:
        ap.error(f"{args.dataset} is a pair list: {', '.join(given)} apply to dataset folders only")
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        res = run_pairs(cfg, Path(args.dataset))
    except (ConfigError, DatasetError, ValueError) as exc:
        print(f"vpr-benchmark: {exc}", file=sys.stderr)
        return 2
    print(pair_table(res, cfg.model.name))
    out = args.out or Path("runs") / time.strftime("benchmark-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.json").write_text(json.dumps({"pair_list": str(args.dataset), "model": cfg.model.name,
                                                **asdict(res.scores), "seconds": res.seconds}, indent=2))
    print(f"wrote {out / 'pairs.json'}")
    return 0


def resolve_config(path: Path) -> Optional[Path]:
    """A config path as given, else relative to the repository (`--zoo config/x.yaml` from any folder)."""
    for candidate in (Path(path), REPO / path):
        if candidate.is_file():
            return candidate
    return None


def run_zoo(configs: List[Path], ds, ks: List[int], out: Path, raw: bool = False,
            overrides: Optional[dict] = None) -> int:
    from offline_eval.report import plot_zoo, zoo_json, zoo_table
    from offline_eval.zoo import zoo_row

    print(f"{ds.name}: {len(ds.database)} database images, {len(ds.queries)} queries; {len(configs)} configs")
    base = run_raw_pixels(ds) if raw else None
    if base is not None:
        print("raw pixels 32x24 baseline: " + ", ".join(f"R@{k} {v:.3f}" for k, v in base.recall.items()))
    rows = []
    for path in configs:
        try:
            rows.append(zoo_row(path, ds, ks, overrides=overrides))
        except (ConfigError, ValueError, RuntimeError) as exc:  # one bad config must not lose the others' rows
            print(f"vpr-benchmark: {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(zoo_table(rows[-1:], f"{path}"))
    print(zoo_table(rows, f"model zoo on {ds.name} ({len(ds.queries)} queries)", base))
    baseline = {"recall": base.recall, "seconds": base.seconds} if base is not None else None
    print(f"wrote {zoo_json(rows, out / 'zoo.json', dataset=str(ds.root), queries=len(ds.queries), raw_pixels=baseline)}"
          + (f" and {plot_zoo(rows, out / 'zoo_recall.png', f'{ds.name}: Recall@N per config')}" if rows else ""))
    return 0 if len(rows) == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
