"""Camera sequences for the demo: a route that revisits places, with ground truth.

Default: real photographs carried by scikit-image, each a "place" a virtual camera pans across;
the second lap revisits places from a shifted, zoomed viewpoint under other lighting (the
motorcycle is revisited through the right camera of its stereo pair). Or any dataset folder:
its database traversal followed by its query traversal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import cv2
import numpy as np

from vpr_core.datasets import load_dataset
from vpr_core.images import load_image

FRAME_SIZE = (320, 240)  # width, height of the virtual camera


@dataclass
class DemoSequence:
    """Frames in driving order and a judge: is a closure query frame -> map frame a true revisit?"""
    name: str
    frames: List[Callable[[], np.ndarray]]  # lazily loaded RGB frames
    is_true_revisit: Callable[[int, int], bool]
    revisit_frames: int  # frames for which a true match exists in the map


def _photos() -> List[tuple]:
    from skimage import data  # packaged images only: none of these calls downloads

    gray = lambda im: cv2.cvtColor(im, cv2.COLOR_GRAY2RGB)  # noqa: E731
    left, right, _ = data.stereo_motorcycle()
    return [("astronaut", data.astronaut(), None), ("coffee", data.coffee(), None),
            ("rocket", data.rocket(), None), ("motorcycle", left, right), ("chelsea", data.chelsea(), None),
            ("hubble", data.hubble_deep_field(), None), ("camera", gray(data.camera()), None),
            ("page", gray(data.page()), None)]


def _pan(img: np.ndarray, n: int, scale: float, dy: float, gain: float) -> List[np.ndarray]:
    """n views of a camera sliding left to right over `img`, window = scale * image height."""
    h, w = img.shape[:2]
    ch = int(h * scale)
    cw = min(w, int(ch * FRAME_SIZE[0] / FRAME_SIZE[1]))
    y = int(np.clip((h - ch) / 2 + dy * h, 0, h - ch))
    xs = np.linspace(0, w - cw, n).astype(int)
    views = []
    for x in xs:
        crop = cv2.resize(img[y:y + ch, x:x + cw], FRAME_SIZE, interpolation=cv2.INTER_AREA)
        views.append(np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return views


def photo_route(frames_per_place: int = 12, revisit: tuple = (1, 2, 3, 4, 5)) -> DemoSequence:
    places = _photos()
    frames, labels, lap = [], [], []
    for i, (_, img, _) in enumerate(places):
        for v in _pan(img, frames_per_place, 0.8, 0.0, 1.0):
            frames.append(v), labels.append(i), lap.append(1)
    for i in revisit:
        _, img, other_view = places[i]
        for v in _pan(other_view if other_view is not None else img, frames_per_place, 0.7, 0.08, 0.8):
            frames.append(v), labels.append(i), lap.append(2)
    judge = lambda q, m: lap[q] == 2 and lap[m] == 1 and labels[q] == labels[m]  # noqa: E731
    return DemoSequence("scikit-image photographs, 2 laps", [lambda f=f: f for f in frames], judge,
                        sum(1 for x in lap if x == 2))


def dataset_route(root: Path) -> DemoSequence:
    ds = load_dataset(root)
    n = len(ds.database)
    paths = list(ds.database) + list(ds.queries)
    pos = [set(p.tolist()) for p in ds.positives]
    judge = lambda q, m: q >= n and m < n and m in pos[q - n]  # noqa: E731
    return DemoSequence(f"{ds.name}: database then query traversal", [lambda p=p: load_image(p) for p in paths],
                        judge, len(ds.queries))


def build_sequence(dataset: Optional[Path]) -> DemoSequence:
    return dataset_route(Path(dataset)) if dataset else photo_route()
