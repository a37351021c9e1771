"""Pinhole camera model (intrinsics K, image size, optional OpenCV distortion) for loop-closure poses.

Built from the config (`camera.K`: [fx, fy, cx, cy] or the 9 values of K row-major) or from a
sensor_msgs/CameraInfo (`k`, `d`, `distortion_model`, `width`, `height`). Pixel convention of
OpenCV and ROS: the centre of the top-left pixel is (0, 0). Local heads report cell centres in
continuous coordinates (top-left corner = 0), half a pixel off: negligible beside their 8-16 px cells.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

DIST_LENGTHS = (4, 5, 8, 12, 14)  # OpenCV distortion vectors: (k1, k2, p1, p2[, k3[, k4, k5, k6[, s1..s4[, tx, ty]]]])
DIST_MODELS = ("", "none", "plumb_bob", "rational_polynomial")  # CameraInfo models OpenCV's undistortPoints handles


@dataclass(frozen=True, eq=False)
class CameraModel:
    """Intrinsics of one camera at one image size; `dist` empty = no distortion.

    Frozen: a model is shared between keyframes, so derive a changed copy (`scaled_to`) instead."""
    K: np.ndarray  # 3x3 float64: [[fx, s, cx], [0, fy, cy], [0, 0, 1]]
    width: int  # image width in pixels that K refers to
    height: int  # image height in pixels that K refers to
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # OpenCV order, see DIST_LENGTHS

    def __post_init__(self) -> None:
        K = np.asarray(self.K, np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"camera K must be 3x3, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError(f"camera K has NaN or infinite values: {K.tolist()}; check the calibration")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"camera focal lengths must be > 0 pixels, got fx={K[0, 0]}, fy={K[1, 1]}; "
                             f"an all-zero CameraInfo.k means the camera is not calibrated: set camera.K")
        if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
            raise ValueError(f"camera K must be upper triangular with last row [0, 0, 1], got {K.tolist()}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera image size must be > 0, got {self.width}x{self.height}")
        d = np.asarray(self.dist, np.float64).ravel()
        if not np.all(np.isfinite(d)):
            raise ValueError(f"camera distortion has NaN or infinite values: {d.tolist()}")
        if not np.any(d):
            d = np.zeros(0)
        elif len(d) not in DIST_LENGTHS:
            raise ValueError(f"camera distortion must have {DIST_LENGTHS} coefficients (OpenCV order), got {len(d)}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "dist", d)

    @classmethod
    def from_config(cls, values: Sequence[float], width: int, height: int,
                    dist: Sequence[float] = ()) -> "CameraModel":
        """From config `camera.K`: [fx, fy, cx, cy] or the 9 values of K row-major, for width x height images."""
        v = np.asarray(values, np.float64).ravel()
        if len(v) == 4:
            fx, fy, cx, cy = v
            K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
        elif len(v) == 9:
            K = v.reshape(3, 3)
        else:
            raise ValueError(f"camera.K must be [fx, fy, cx, cy] or the 9 values of the 3x3 matrix row-major, "
                             f"got {len(v)} values")
        return cls(K, width, height, np.asarray(dist, np.float64))

    @classmethod
    def from_camera_info(cls, k: Sequence[float], width: int, height: int, d: Sequence[float] = (),
                         distortion_model: str = "") -> "CameraModel":
        """From sensor_msgs/CameraInfo fields (`k` = 9 values row-major); raises for models OpenCV's
        pinhole undistortion cannot handle (e.g. `equidistant`: rectify the images first)."""
        if len(k) != 9:
            raise ValueError(f"CameraInfo.k must have 9 values (3x3 row-major), got {len(k)}")
        model = (distortion_model or "").strip().lower()
        if model not in DIST_MODELS and np.any(np.asarray(d, np.float64)):
            raise ValueError(f"CameraInfo.distortion_model {distortion_model!r} is not supported (supported: "
                             f"{DIST_MODELS[2:]}); publish rectified images or set camera.K for them")
        return cls(np.asarray(k, np.float64).reshape(3, 3), width, height, np.asarray(d, np.float64))

    @classmethod
    def from_fov(cls, hfov_deg: float, width: int, height: int) -> "CameraModel":
        """An ideal pinhole with square pixels, principal point at the image centre, horizontal field of
        view `hfov_deg`: for synthetic views and cameras known only by their field of view."""
        if not 0.0 < hfov_deg < 180.0:
            raise ValueError(f"horizontal field of view must be in (0, 180) degrees, got {hfov_deg}")
        f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
        return cls.from_config([f, f, (width - 1) / 2, (height - 1) / 2], width, height)

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def focal(self) -> float:
        """Mean focal length in pixels: converts angles to pixels for thresholds and covariances."""
        return 0.5 * (self.fx + self.fy)

    def scaled_to(self, width: int, height: int) -> "CameraModel":
        """The same camera for its image resized to width x height (pixel centres kept aligned);
        distortion is in normalised coordinates, so it does not change."""
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"cannot scale the camera to {width}x{height}: the size must be > 0")
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        K[0, 2] = (self.K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (self.K[1, 2] + 0.5) * sy - 0.5
        return CameraModel(K, width, height, self.dist.copy())

    def normalize(self, xy: np.ndarray) -> np.ndarray:
        """(N,2) pixels -> (N,2) undistorted normalised image coordinates (x/z, y/z)."""
        pts = np.ascontiguousarray(np.asarray(xy, np.float64).reshape(-1, 1, 2))
        if len(pts) == 0:
            return np.zeros((0, 2))
        return cv2.undistortPoints(pts, self.K, self.dist if len(self.dist) else None).reshape(-1, 2)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N,3) points in this camera's frame -> (N,2) pixels (with distortion)."""
        pts = np.ascontiguousarray(np.asarray(points, np.float64).reshape(-1, 3))
        if len(pts) == 0:
            return np.zeros((0, 2))
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), self.K, self.dist if len(self.dist) else None)
        return uv.reshape(-1, 2)

    def __repr__(self) -> str:
        return (f"CameraModel(fx={self.fx:.2f}, fy={self.fy:.2f}, cx={self.K[0, 2]:.2f}, cy={self.K[1, 2]:.2f}, "
                f"{self.width}x{self.height}, dist={self.dist.tolist()})")
