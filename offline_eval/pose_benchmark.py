"""`python -m offline_eval.pose_benchmark`: accuracy of the loop-closure relative pose on real pixels.

Pairs with a known pose (offline_eval.pose_views): real images (scikit-image photographs, corridor
frames) and a second view rendered through known motions (rotations of 2-15 deg about random axes,
translations of 0.1-0.3 plane distances), as one slanted plane (the homography view: a planar scene)
or as three planes at different depths; and the demo's virtual camera (second lap -> first lap).
Local features from the model config (default: config/default_rerank.yaml), matches by mutual_nn,
pose by vpr_core.geometry. Prints, per scenario: pairs, share accepted, median / p95 rotation error
and translation-direction error (deg) of the accepted poses, metric-scale error (PnP), rejections by
reason, ms per estimate; optionally a PNG of the error histograms.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from offline_eval.pose_views import ONE_PLANE, STEP_PLANES, demo_pairs, fit_frame, known_view
from vpr_core.geometry import CameraModel, PoseConfig, angle_between_deg, estimate_relative_pose, rotation_angle_deg
from vpr_core.geometry.covariance import rotation_sigma_deg
from vpr_core.geometry.loop import matched_points, pose_config
from vpr_core.geometry.refine import keypoint_sigma_px
from vpr_core.local_features import LocalFeatures

CORRIDOR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "corridor"


@dataclass
class PairResult:
    ok: bool
    reason: str
    rot_err: float
    dir_err: float  # translation direction, deg (NaN when the true t is zero)
    scale_err: float  # | |t_est| / |t_true| - 1 |, metric poses only
    ms: float
    rot_sigma: float = float("nan")  # the covariance's rotation sigma (largest axis), deg


@dataclass
class Scenario:
    name: str
    results: List[PairResult] = field(default_factory=list)


def photographs() -> List[tuple]:
    """(name, 320x240 RGB) of scikit-image's packaged photographs (no download)."""
    import cv2
    from skimage import data
    gray = lambda im: cv2.cvtColor(im, cv2.COLOR_GRAY2RGB)  # noqa: E731
    imgs = [("astronaut", data.astronaut()), ("coffee", data.coffee()), ("chelsea", data.chelsea()),
            ("rocket", data.rocket()), ("camera", gray(data.camera())), ("motorcycle", data.stereo_motorcycle()[0])]
    return [(n, fit_frame(im, 320, 240)) for n, im in imgs]


def corridor_images(count: int) -> List[tuple]:
    """(name, 160x120 RGB) corridor frames, alternately from query/ and database/, spread over the route."""
    from vpr_core.images import load_image
    if not CORRIDOR.is_dir():
        return []
    out = []
    for i in range(count):
        sub = ("query", "database")[i % 2]
        files = sorted((CORRIDOR / sub).glob("*.jpg"))
        path = files[(i * 37) % len(files)]
        out.append((f"corridor/{sub}/{path.stem}", load_image(path)))
    return out


def random_motions(count: int, seed: int) -> List[tuple]:
    """(rotation vector deg, translation) pairs: 2-15 deg about random axes, |t| 0.1-0.3 in random directions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        axis, tdir = rng.normal(size=3), rng.normal(size=3)
        out.append((axis / np.linalg.norm(axis) * rng.uniform(2, 15),
                    tdir / np.linalg.norm(tdir) * rng.uniform(0.1, 0.3)))
    return out


def evaluate(xa, xb, cam_q: CameraModel, cam_m: CameraModel, R, t, cfg: PoseConfig,
             depth: Optional[np.ndarray] = None) -> PairResult:
    r = estimate_relative_pose(xa, xb, cam_q, cam_m, cfg, depth_query=depth)
    has_t = np.linalg.norm(t) > 0
    scale = abs(np.linalg.norm(r.t) / np.linalg.norm(t) - 1) if (r.metric and has_t) else float("nan")
    sigma = rotation_sigma_deg(r.covariance) if np.all(np.isfinite(r.covariance)) else float("nan")
    return PairResult(r.ok, r.reason, rotation_angle_deg(r.R, R),
                      angle_between_deg(r.t, t) if has_t else float("nan"), scale, r.time_ms, sigma)


def run(extract: Callable[[Sequence[np.ndarray]], List[LocalFeatures]], images: List[tuple], motions: List[tuple],
        demo: bool, min_similarity: float = 0.6, base: Optional[PoseConfig] = None,
        progress: bool = True) -> List[Scenario]:
    """All scenarios over `images` x `motions` (+ the demo pairs); `extract` maps RGB images to local features."""
    from tqdm import tqdm
    base = base or PoseConfig()
    names = ["1 plane (homography view), E", "3 planes, E, cell centres", "3 planes, E, sub-cell",
             "3 planes, PnP + depth, sub-cell"]
    scen: Dict[str, Scenario] = {n: Scenario(n) for n in names}
    jobs = [(name, img, rv, t) for name, img in images for rv, t in motions]
    for name, img, rv, t in tqdm(jobs, desc="rendered views", disable=not progress):
        cam = CameraModel.from_fov(60.0, img.shape[1], img.shape[0])
        one, steps = known_view(name, img, cam, rv, t, ONE_PLANE), known_view(name, img, cam, rv, t, STEP_PLANES)
        fq, f1, f3 = extract([img, one.match, steps.match])
        cfg = pose_config(fq, base, measure_coarse=True)
        scen[names[0]].results.append(evaluate(*matched_points(fq, f1, min_similarity), cam, cam, one.R, one.t, cfg))
        cells = matched_points(fq, f3, min_similarity, subcell=False)
        scen[names[1]].results.append(evaluate(*cells, cam, cam, steps.R, steps.t, cfg))
        xa, xb = matched_points(fq, f3, min_similarity)
        scen[names[2]].results.append(evaluate(xa, xb, cam, cam, steps.R, steps.t, cfg))
        scen[names[3]].results.append(evaluate(xa, xb, cam, cam, steps.R, steps.t, cfg, steps.depth_query))
    if demo:
        for label, depth in (("demo virtual camera, E, sub-cell", False), ("demo virtual camera, PnP + depth", True)):
            scen[label] = Scenario(label)
        for p in tqdm(demo_pairs(), desc="demo pairs", disable=not progress):
            fq, fm = extract([p.query, p.match])
            cfg = pose_config(fq, base, measure_coarse=True)
            xa, xb = matched_points(fq, fm, min_similarity)
            scen["demo virtual camera, E, sub-cell"].results.append(
                evaluate(xa, xb, p.cam_query, p.cam_match, p.R, p.t, cfg))
            scen["demo virtual camera, PnP + depth"].results.append(
                evaluate(xa, xb, p.cam_query, p.cam_match, p.R, p.t, cfg, p.depth_query))
    return list(scen.values())


def _stat(values: List[float], q: float) -> str:
    v = [x for x in values if np.isfinite(x)]
    return f"{np.percentile(v, q):.2f}" if v else "-"


def table(scenarios: List[Scenario], title: str) -> str:
    head = (f"{'scenario':34s} {'pairs':>5s} {'ok':>5s} {'rot med':>7s} {'rot p95':>7s} {'dir med':>7s} "
            f"{'dir p95':>7s} {'|t| err':>7s} {'err/sd':>6s} {'ms':>5s}  rejections")
    lines = [title, head, "-" * len(head)]
    for s in scenarios:
        ok = [r for r in s.results if r.ok]
        rej = Counter(r.reason for r in s.results if not r.ok)
        lines.append(f"{s.name:34s} {len(s.results):5d} {len(ok) / max(len(s.results), 1):5.0%} "
                     f"{_stat([r.rot_err for r in ok], 50):>7s} {_stat([r.rot_err for r in ok], 95):>7s} "
                     f"{_stat([r.dir_err for r in ok], 50):>7s} {_stat([r.dir_err for r in ok], 95):>7s} "
                     f"{_stat([r.scale_err * 100 for r in ok], 50):>6s}% "
                     f"{_stat([r.rot_err / r.rot_sigma for r in ok], 50):>6s} "
                     f"{np.median([r.ms for r in s.results]) if s.results else 0:5.1f}  "
                     + ", ".join(f"{k} {v}" for k, v in rej.most_common()))
    lines.append("errors in degrees over the accepted poses; |t| err = median metric-scale error (PnP); err/sd = "
                 "median rotation error over the covariance's rotation sigma (1 = calibrated); ms = median")
    return "\n".join(lines)


def plot(scenarios: List[Scenario], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for s in scenarios:
        ok = [r for r in s.results if r.ok]
        for ax, key, top in zip(axes, ("rot_err", "dir_err"), (20.0, 90.0)):
            v = [getattr(r, key) for r in ok if np.isfinite(getattr(r, key))]
            if v:  # errors beyond the range are counted in the last bin
                ax.hist(np.clip(v, 0, top), bins=40, range=(0, top), histtype="step", label=f"{s.name} ({len(v)})")
    axes[0].set_xlabel("rotation error (deg, accepted poses)")
    axes[1].set_xlabel("translation-direction error (deg, accepted poses)")
    axes[0].set_ylabel("pairs")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m offline_eval.pose_benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/default_rerank.yaml", help="model config with a local head")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. model.local_head.stride=8 model.max_local_features=1200")
    ap.add_argument("--photos", type=int, default=6, help="scikit-image photographs used (at most 6)")
    ap.add_argument("--corridor", type=int, default=6, help="corridor frames used")
    ap.add_argument("--motions", type=int, default=8, help="known motions per image")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random motions")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo's virtual-camera pairs")
    ap.add_argument("--plot", default="runs/pose_benchmark.png", help="PNG of the error histograms ('' = none)")
    args = ap.parse_args(argv)

    from offline_eval.benchmark import parse_overrides
    from vpr_core.config import load_config
    from vpr_core.models import DescriptorExtractor
    cfg = load_config(args.config, parse_overrides(args.set))
    ex = DescriptorExtractor(cfg.model)
    extract = lambda imgs: ex.extract(list(imgs), with_local=True).local  # noqa: E731
    images = photographs()[:args.photos] + corridor_images(args.corridor)
    motions = random_motions(args.motions, args.seed)
    t0 = time.perf_counter()
    scen = run(extract, images, motions, not args.no_demo, cfg.rerank.match_threshold)
    head = cfg.model.local_head
    probe = extract([images[0][1]])[0]
    h, w = images[0][1].shape[:2]
    noise = np.degrees(keypoint_sigma_px(probe) / CameraModel.from_fov(60.0, w, h).focal)
    limit = PoseConfig().max_keypoint_noise_deg
    print(f"keypoint noise of these features on a {w}x{h} frame: {noise:.2f} deg; the 5-point (E) rows are measured "
          f"with pose.max_keypoint_noise_deg lifted; by default ({limit} deg) E is "
          + ("REFUSED (coarse_keypoints) for them" if noise > limit else "allowed for them"))
    print(table(scen, f"relative pose, {cfg.model.name} (local head {head.get('name')}, "
                      f"stride {head.get('stride', '-')}), "
                      f"{len(images)} images x {len(motions)} motions, {time.perf_counter() - t0:.0f} s"))
    if args.plot:
        plot(scen, Path(args.plot))
        print(f"histograms: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
