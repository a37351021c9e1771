"""Geometry of loop closures: camera models and the relative pose of a verified match (no ROS here)."""
from vpr_core.geometry.camera import CameraModel
from vpr_core.geometry.covariance import essential_covariance, pnp_covariance
from vpr_core.geometry.pose import REASONS, PoseConfig, PoseResult, estimate_relative_pose
from vpr_core.geometry.rotation import angle_between_deg, quaternion_xyzw, rotation_angle_deg

__all__ = ["CameraModel", "PoseConfig", "PoseResult", "REASONS", "estimate_relative_pose", "essential_covariance",
           "pnp_covariance",
           "angle_between_deg", "quaternion_xyzw", "rotation_angle_deg"]
