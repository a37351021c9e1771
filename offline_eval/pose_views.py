"""Image pairs with a known relative pose, for measuring the loop-closure pose on real pixels.

A real image is the query view of a scene made of planes; the match view is rendered through a known
camera motion (R, t) = T_match_query (X_m = R X_q + t). Each plane i covers one vertical strip of the
query image and satisfies n_i . X_q = d_i; its pixels move by the plane-induced homography
H_i = K (R + t n_i^T / d_i) K^-1. One plane is the textbook homography view (a planar scene: its
essential matrix is two-fold ambiguous); several planes at different depths give a 3-D scene with
depth steps (occlusions resolved by depth), for which E is unique. The query depth map comes with
it, in the units of d (metres, say), for the PnP path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from vpr_core.geometry.camera import CameraModel

Plane = Tuple[Sequence[float], float]  # (normal n in the query camera frame, distance d): n . X = d


@dataclass
class KnownView:
    """A query image, a rendered match view, the camera (both views) and T_match_query (R, t)."""
    name: str
    query: np.ndarray  # HxWx3 uint8, the real image
    match: np.ndarray  # HxWx3 uint8, rendered
    cam: CameraModel
    R: np.ndarray
    t: np.ndarray  # in the units of the planes' distances
    depth_query: np.ndarray  # HxW depth of the query view (z, same units), from the planes


def plane_homography(cam: CameraModel, R: np.ndarray, t: np.ndarray, n: Sequence[float], d: float) -> np.ndarray:
    """H mapping query pixels to match pixels for points on the plane n . X_q = d."""
    n = np.asarray(n, np.float64) / np.linalg.norm(n)
    Kinv = np.linalg.inv(cam.K)
    return cam.K @ (R + np.outer(np.asarray(t, np.float64), n) / d) @ Kinv


def render_view(img: np.ndarray, cam: CameraModel, R: np.ndarray, t: np.ndarray,
                planes: Sequence[Plane]) -> Tuple[np.ndarray, np.ndarray]:
    """(match view, query depth) of `img` seen as len(planes) vertical strips, strip i on planes[i].
    Pixels that no plane covers in the match view are black."""
    h, w = img.shape[:2]
    Kinv = np.linalg.inv(cam.K)
    us, vs = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([us, vs, np.ones_like(us)], -1)  # (h, w, 3) homogeneous pixel centres
    edges = np.linspace(0, w, len(planes) + 1)
    rays_q = pix @ Kinv.T
    depth = np.zeros((h, w))
    best_z = np.full((h, w), np.inf)
    map_x, map_y = np.full((h, w), -1.0, np.float32), np.full((h, w), -1.0, np.float32)
    for i, (n, d) in enumerate(planes):
        n = np.asarray(n, np.float64) / np.linalg.norm(n)
        strip = (us >= edges[i]) & (us < edges[i + 1])
        depth[strip] = (d / (rays_q @ n))[strip]
        Hinv = np.linalg.inv(plane_homography(cam, R, t, n, d))
        src = pix @ Hinv.T
        sx, sy = src[..., 0] / src[..., 2], src[..., 1] / src[..., 2]
        inside = (sx >= -0.5) & (sx < w - 0.5) & (sy >= -0.5) & (sy < h - 0.5) & (src[..., 2] > 0)
        inside &= (sx >= edges[i] - 0.5) & (sx < edges[i + 1] - 0.5)
        ray = np.stack([sx, sy, np.ones_like(sx)], -1) @ Kinv.T
        X_q = ray * (d / (ray @ n))[..., None]
        z_m = (X_q @ R.T + t)[..., 2]
        win = inside & (z_m > 0) & (z_m < best_z)
        best_z[win], map_x[win], map_y[win] = z_m[win], sx[win], sy[win]
    match = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return match, depth


def fit_frame(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """`img` resized to cover width x height, centre-cropped (a camera frame of that size)."""
    h, w = img.shape[:2]
    s = max(width / w, height / h)
    r = cv2.resize(img, (int(np.ceil(w * s)), int(np.ceil(h * s))), interpolation=cv2.INTER_AREA)
    y, x = (r.shape[0] - height) // 2, (r.shape[1] - width) // 2
    return np.ascontiguousarray(r[y:y + height, x:x + width])


STEP_PLANES: List[Plane] = [((0.25, 0.0, 1.0), 1.0), ((0.0, 0.1, 1.0), 1.8), ((-0.3, 0.0, 1.0), 1.3)]
"""Three strips at different depths and slants: a 3-D scene with depth steps (E is unique)."""
ONE_PLANE: List[Plane] = [((0.0, 0.26, 1.0), 1.0)]
"""One slanted plane at unit depth: the homography view (E two-fold ambiguous)."""


def known_view(name: str, img: np.ndarray, cam: CameraModel, rot_deg: Sequence[float], t: Sequence[float],
               planes: Sequence[Plane] = STEP_PLANES) -> KnownView:
    """A KnownView of `img` (already cam.width x cam.height) moved by the rotation vector `rot_deg`
    (axis * angle, degrees) and translation `t`."""
    R = cv2.Rodrigues(np.radians(np.asarray(rot_deg, np.float64)))[0]
    t = np.asarray(t, np.float64)
    match, depth = render_view(img, cam, R, t, planes)
    return KnownView(name, img, match, cam, R, t, depth)


# --- the demo's virtual camera (offline_eval.demo_sequence.photo_route) ----------------------------------
DEMO_HFOV_DEG = 60.0  # the virtual camera's horizontal field of view (its focal length: f = 160 / tan 30 deg)


@dataclass
class DemoPair:
    """A second-lap frame (query) and a first-lap frame (match) of one photograph, with cameras and
    T_match_query; depth_query is the query camera's distance to the photograph (constant)."""
    name: str
    query: np.ndarray
    match: np.ndarray
    cam_query: CameraModel
    cam_match: CameraModel
    R: np.ndarray
    t: np.ndarray
    depth_query: np.ndarray


def _pan_windows(img: np.ndarray, n: int, scale: float, dy: float) -> List[Tuple[int, int, int, int]]:
    """(x, y, width, height) of the crop windows of demo_sequence._pan, same formulas."""
    from offline_eval.demo_sequence import FRAME_SIZE
    h, w = img.shape[:2]
    ch = int(h * scale)
    cw = min(w, int(ch * FRAME_SIZE[0] / FRAME_SIZE[1]))
    y = int(np.clip((h - ch) / 2 + dy * h, 0, h - ch))
    return [(int(x), y, cw, ch) for x in np.linspace(0, w - cw, n).astype(int)]


def demo_pairs(frames_per_place: int = 12, neighbours: int = 1) -> List[DemoPair]:
    """Pairs of the demo route with their ground truth, under this pinhole model: the photograph is a
    plane; every frame is taken by an upright camera (R = I) looking straight at it, with a focal
    f from DEMO_HFOV_DEG; a first-lap frame is at unit depth, so one photo pixel is p = s_y1 / f
    world units (s = frame pixels per photo pixel of the crop: s_x = 320 / crop width, s_y = 240 /
    crop height), a second-lap frame at depth D2 = s_y1 / s_y2; each camera sits above its crop's
    centre and has fy = f, fx = f s_x / s_y (crops clipped by the photo's width are not 4:3), principal
    point at the frame centre. Then T_match_query = (I, C_query - C_match). Each second-lap frame is
    paired with the `neighbours` first-lap frames whose crop centres are nearest. The motorcycle is
    left out: its second lap is the right camera of a stereo pair whose extrinsics we do not model.
    Mirrors demo_sequence._pan and checks that the crops reproduce its frames."""
    from offline_eval.demo_sequence import FRAME_SIZE, _pan, _photos
    W, H = FRAME_SIZE
    f = 0.5 * W / np.tan(np.radians(DEMO_HFOV_DEG) / 2)
    laps = ((0.8, 0.0, 1.0), (0.7, 0.08, 0.8))  # (scale, dy, gain) of photo_route's two laps
    pairs: List[DemoPair] = []
    for i in (1, 2, 4, 5):  # photo_route's default revisits, without the motorcycle (3)
        name, img, _ = _photos()[i]
        wins = [_pan_windows(img, frames_per_place, s, dy) for s, dy, _ in laps]
        views = [_pan(img, frames_per_place, s, dy, g) for s, dy, g in laps]
        x, y, cw, ch = wins[0][0]
        check = cv2.resize(img[y:y + ch, x:x + cw], FRAME_SIZE, interpolation=cv2.INTER_AREA)
        if not np.array_equal(check, views[0][0]):
            raise RuntimeError("demo_sequence._pan changed: update offline_eval.pose_views.demo_pairs")
        sy1 = H / wins[0][0][3]
        p = sy1 / f

        def camera(win):
            sx, sy = W / win[2], H / win[3]
            return CameraModel.from_config([f * sx / sy, f, (W - 1) / 2, (H - 1) / 2], W, H), sy

        def centre(win, depth):
            return np.array([(win[0] + win[2] / 2) * p, (win[1] + win[3] / 2) * p, 1.0 - depth])

        for j, wq in enumerate(wins[1]):
            cam_q, sy2 = camera(wq)
            d2 = sy1 / sy2
            c_q = centre(wq, d2)
            order = np.argsort([abs((wm[0] + wm[2] / 2) - (wq[0] + wq[2] / 2)) for wm in wins[0]])
            for k in order[:neighbours]:
                wm = wins[0][k]
                cam_m, _ = camera(wm)
                pairs.append(DemoPair(f"{name} lap2#{j}->lap1#{k}", views[1][j], views[0][k], cam_q, cam_m,
                                      np.eye(3), c_q - centre(wm, 1.0), np.full((H, W), d2)))
    return pairs
