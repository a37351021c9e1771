"""The relative pose of a loop-closure candidate, from the two keyframes' local features: putative
matches (the re-ranker's own mutual-NN rule), sub-cell positions on grid features, then
`estimate_relative_pose` with the noise floor and RANSAC threshold those features allow."""
from __future__ import annotations

from typing import Optional

import numpy as np

from vpr_core.geometry.camera import CameraModel
from vpr_core.geometry.pose import PoseConfig, PoseResult, estimate_relative_pose
from vpr_core.geometry.refine import keypoint_sigma_px, refine_match_positions
from vpr_core.local_features import LocalFeatures
from vpr_core.rerank.matching import mutual_nn

# PoseResult reasons that say the pose could not be *attempted* with these inputs (not that the scene's
# geometry contradicts the match): the closure is published without a pose instead of being rejected.
NOT_ATTEMPTED = ("coarse_keypoints", "no_depth", "uncertain")


def pose_config(features: LocalFeatures, base: PoseConfig, measure_coarse: bool = False) -> PoseConfig:
    """`base` with the keypoint noise floor and RANSAC threshold of these features' grid cells;
    `measure_coarse` lifts pose.max_keypoint_noise_deg so the 5-point pose is measured even where the
    default refuses it (coarse_keypoints)."""
    sigma = keypoint_sigma_px(features)
    over = {"max_keypoint_noise_deg": 90.0} if measure_coarse else {}
    if sigma <= 0:
        return PoseConfig(**{**base.__dict__, **over})
    return PoseConfig(**{**base.__dict__, "keypoint_sigma_px": sigma,
                         "ransac_px": max(base.ransac_px, sigma), **over})


def camera_for(features: LocalFeatures, camera: CameraModel) -> CameraModel:
    """`camera` at the size of the image the features were taken from (their pixel coordinates)."""
    h, w = features.image_hw
    return camera if (camera.width, camera.height) == (w, h) else camera.scaled_to(w, h)


def matched_points(query: LocalFeatures, match: LocalFeatures, min_similarity: float = 0.0, ratio: float = 1.0,
                   subcell: bool = True) -> "tuple[np.ndarray, np.ndarray]":
    """Pixel positions (query, match) of the pair's mutual-nearest-neighbour matches; sub-cell in the
    match image when its features lie on a grid (`subcell`)."""
    ia, ib, _ = mutual_nn(query.desc, match.desc, min_similarity, ratio)
    xm = refine_match_positions(query, match, ia, ib) if subcell else match.xy[ib].astype(np.float64)
    return query.xy[ia].astype(np.float64), xm


def loop_pose(query: LocalFeatures, match: LocalFeatures, cam_query: CameraModel, cam_match: CameraModel,
              cfg: PoseConfig, min_similarity: float = 0.0, ratio: float = 1.0,
              depth_query: Optional[np.ndarray] = None, fundamental: Optional[np.ndarray] = None) -> PoseResult:
    """T_match_query of a candidate pair (see estimate_relative_pose for the convention and reasons)."""
    xq, xm = matched_points(query, match, min_similarity, ratio)
    return estimate_relative_pose(xq, xm, camera_for(query, cam_query), camera_for(match, cam_match),
                                  pose_config(query, cfg), depth_query=depth_query, fundamental=fundamental)
