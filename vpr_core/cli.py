"""`vpr-core`: model and map tools without ROS.

    vpr-core model [--config F]            build the configured model, print its descriptor size
    vpr-core extract IMAGES... --out F.npy  descriptors of image files (batched, with progress)
    vpr-core map-info MAP                  check a map file and print what it holds (sessions, robots)
    vpr-core map-merge A B --out C         one map of two (same model): B's ids and sessions follow A's
    vpr-core cluster --config F --images DIR_OR_DATASET... --out F.pth
                                           k-means centres for a NetVLAD/ClusVPR aggregator, saved
                                           as a native (vpr_ros) checkpoint
    vpr-core export --config F --format onnx|openvino --out F.onnx|F.xml
                                           the configured model's global forward as an ONNX file
                                           (input "images" (B,3,H,W) preprocessed, output "global_desc")
    vpr-core train --config config/train/F.yaml [key=value ...] [--resume auto|PATH]
                                           train with one of the seeds' schemes; writes checkpoints,
                                           log.csv and model.yaml (load it with --config) under runs/
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from vpr_core.config import ConfigError, load_config
from vpr_core.images import iter_image_batches
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.models.weights import CheckpointError


def _model(args: argparse.Namespace) -> int:
    from vpr_core.models import DescriptorExtractor

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    ex = DescriptorExtractor(cfg.model)
    n_params = sum(p.numel() for p in ex.model.parameters())
    print(f"{cfg.model.name}: backbone {cfg.model.backbone['name']}, aggregator {cfg.model.aggregator['name']}, "
          f"{ex.dim}-D descriptor, {n_params / 1e6:.1f} M parameters, device {ex.device}, "
          f"built in {time.perf_counter() - t0:.1f} s")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from vpr_core.models import DescriptorExtractor

    cfg = load_config(args.config)
    ex = DescriptorExtractor(cfg.model)
    paths = [Path(p) for p in args.images]
    out, bad = [], 0
    bs = cfg.model.batch_size
    for images, errors in tqdm(iter_image_batches(paths, bs), total=-(-len(paths) // bs), desc="extract",
                               unit="batch"):
        for exc in errors:
            bad += 1
            print(f"skipped: {exc}", file=sys.stderr)
        if images:
            out.append(ex(images))
    descs = np.concatenate(out) if out else np.zeros((0, ex.dim), np.float32)
    np.save(args.out, descs)
    print(f"wrote {descs.shape[0]} x {descs.shape[1]} descriptors to {args.out} ({bad} unreadable images skipped)")
    return 0 if not bad else 3


def _export(args: argparse.Namespace) -> int:
    from vpr_core.models import build_model
    from vpr_core.models.runtimes import export_onnx, export_openvino

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    model = build_model(cfg.model)
    if args.format == "openvino":
        path = export_openvino(model, cfg.model, args.out)
    else:
        path = export_onnx(model, cfg.model, args.out, who="vpr-core export")
    h, w = cfg.model.preprocess.image_size
    mb = sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*")) / 1e6
    local = ("; with its local head also 'local_desc' (B,N,C), 'local_xy' (B,N,2) input pixels, 'local_weight' "
             "(B,N) when the head weighs its cells" if model.local_head is not None else "")
    print(f"wrote {path} ({mb:.1f} MB): input 'images' (B,3,{h},{w}) float32 after vpr_core preprocessing, "
          f"output 'global_desc' (B,D) unit norm{local}; {time.perf_counter() - t0:.1f} s")
    return 0


def _map_info(args: argparse.Namespace) -> int:
    db = MapDatabase.load(args.map, use_gpu="false")
    stamps = [kf.stamp_ns for kf in db.keyframes.values()]
    span = (max(stamps) - min(stamps)) / 1e9 if stamps else 0.0
    print(f"{args.map}: {len(db)} keyframes, {db.dim}-D, index {db.index_type}, spanning {span:.1f} s, "
          f"frames {sorted({kf.frame_id for kf in db.keyframes.values()})}, model {db.model or 'not recorded'}")
    for session, (n, robots) in db.sessions().items():
        print(f"  session {session}: {n} keyframes, robot {', '.join(r or '(unnamed)' for r in robots)}")
    return 0


def _map_merge(args: argparse.Namespace) -> int:
    from vpr_core.map_merge import merge_maps
    first, second = (MapDatabase.load(p, use_gpu="false") for p in args.maps)
    merged = merge_maps(first, second, assume_same_model=args.assume_same_model)
    path = merged.save(args.out)
    print(f"wrote {path}: {len(merged)} keyframes ({len(first)} from {args.maps[0]}, {len(second)} from "
          f"{args.maps[1]} with ids moved up by {first.next_id} and sessions by {first.next_session}), "
          f"{len(merged.sessions())} sessions")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from vpr_core.clustering import cluster_model
    from vpr_core.models.weights import save_checkpoint

    cfg = load_config(args.config)
    res = cluster_model(cfg.model, args.images, clusters=args.clusters, per_image=args.per_image,
                        max_images=args.max_images, niter=args.niter, seed=args.seed,
                        backbone_checkpoint=args.backbone_checkpoint, backbone_format=args.backbone_format)
    meta = {"clusters": int(res.centroids.shape[0]), "images": res.images_used, "descriptors": res.descriptors,
            "alpha": float(res.alpha), "backbone_checkpoint": str(res.backbone_checkpoint),
            "aggregator": {k: v for k, v in res.model_cfg.aggregator.items() if isinstance(v, (str, int, float, bool))}}
    save_checkpoint(res.model.cpu(), args.out, extra={"vpr_ros_clustering": meta})
    k = res.centroids.shape[0]
    print(f"wrote {args.out}: {k} centres from {res.descriptors} local features of {res.images_used} images "
          f"({res.images_skipped} unreadable images skipped). Use it with:\n"
          f"  model.checkpoint: {args.out}\n  model.checkpoint_format: vpr_ros"
          + (f"\n  model.aggregator.clusters: {k}" if args.clusters is not None else ""))
    return 0 if not res.images_skipped else 3


def _train(args: argparse.Namespace) -> int:
    from vpr_core.training import load_train_config, parse_overrides, train

    cfg = load_train_config(args.config, parse_overrides(args.overrides))
    if args.epochs is not None:
        cfg.epochs = args.epochs
    res = train(cfg, resume=args.resume)
    if not res.is_main:  # another rank of a torchrun job: rank 0 reports
        return 130 if res.interrupted else 0
    best = ", ".join(f"{k} {v:.3f}" for k, v in res.best.items() if isinstance(v, float))
    state = "interrupted; continue with --resume auto" if res.interrupted else "done"
    print(f"{cfg.name}: {state}. Best epoch {res.best_epoch}: {best or 'no validation'}.\n"
          f"  log: {res.run_dir / 'log.csv'}\n  model config: {res.model_config} "
          f"(vpr-closures/benchmark/node: --config {res.model_config})")
    return 130 if res.interrupted else 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr-core", description="VPR model and map tools (no ROS)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("model", help="build the configured model and print its summary")
    p.add_argument("--config")
    p.set_defaults(fn=_model)
    p = sub.add_parser("extract", help="compute global descriptors of image files")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config")
    p.set_defaults(fn=_extract)
    p = sub.add_parser("export", help="export the configured model (global descriptor, and local outputs with a local head) for other runtimes")
    p.add_argument("--config")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx (F.onnx) or openvino (IR: F.xml + F.bin)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(fn=_export)
    p = sub.add_parser("map-info", help="validate a map file and summarise it")
    p.add_argument("map", type=Path)
    p.set_defaults(fn=_map_info)
    p = sub.add_parser("map-merge", help="merge two maps of one model into one (separate sessions, no id reused)")
    p.add_argument("maps", nargs=2, type=Path, help="the two map files; the first keeps its ids")
    p.add_argument("--out", required=True, type=Path, help="map file to write (atomically)")
    p.add_argument("--assume-same-model", action="store_true",
                   help="merge maps that do not record their model (format < 3), trusting they share one")
    p.set_defaults(fn=_map_merge)
    p = sub.add_parser("cluster", help="initialise a NetVLAD/ClusVPR aggregator by k-means on backbone features")
    p.add_argument("--config", help="model config whose aggregator has clusters (e.g. netvlad)")
    p.add_argument("--images", nargs="+", required=True,
                   help="image files, image folders, or dataset folders (their database images are used)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (native vpr_ros format)")
    p.add_argument("--clusters", type=int, help="override model.aggregator.clusters (then set it in the config too)")
    p.add_argument("--per-image", type=int, default=100, help="local features sampled per image")
    p.add_argument("--max-images", type=int, default=500, help="images used at most, spread evenly over the list")
    p.add_argument("--niter", type=int, default=25, help="k-means iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the feature sampling and k-means")
    p.add_argument("--backbone-checkpoint", help="backbone weights file (default: model.checkpoint); only its "
                                                 "backbone tensors are used")
    p.add_argument("--backbone-format", help="that file's checkpoint format (default: model.checkpoint_format)")
    p.set_defaults(fn=_cluster)
    p = sub.add_parser("train", help="train a model with one of the seeds' schemes (config/train/*.yaml)")
    p.add_argument("--config", required=True, help="training config (config/train/<name>.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 optim.lr=1e-4 scheme.loss=triplet")
    p.add_argument("--resume", help="'auto' (<run dir>/last.pt) or a training checkpoint to continue from")
    p.add_argument("--epochs", type=int, help="shorthand for epochs=N")
    p.set_defaults(fn=_train)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError, MapError, ValueError, KeyError) as exc:
        print(f"vpr-core: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
