"""LoopClosure messages carry the whole verification: method, counts, the fundamental matrix or
homography DEGENSAC estimated (each with its validity flag), and the relative pose with its
covariance, or the reason there is none."""
from __future__ import annotations

import math

import numpy as np

from vpr_core.decision import LoopClosure
from vpr_core.geometry import PoseResult
from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import Verification
from vpr_ros.conversions import loop_closure_msg, to_ns


def _closure(v: Verification) -> LoopClosure:
    return LoopClosure(Keyframe(42, 5_000_000_123, "cam"), Candidate(Keyframe(7, 1_000_000_000, "cam_old"), 0.93), v)


def test_unverified_closure_has_no_geometry():
    msg = loop_closure_msg(_closure(Verification()))
    assert (msg.query_id, msg.match_id, msg.verification_method) == (42, 7, "none")
    assert to_ns(msg.query_stamp) == 5_000_000_123 and to_ns(msg.match_stamp) == 1_000_000_000
    assert (msg.num_matches, msg.num_inliers, msg.verified) == (-1, -1, False)
    assert not msg.fundamental_valid and not msg.homography_valid and not msg.pose_valid


def test_fundamental_matrix_is_exposed_row_major():
    f = np.arange(9, dtype=np.float64).reshape(3, 3)
    msg = loop_closure_msg(_closure(Verification("degensac", True, 80, 55, fundamental=f)))
    assert (msg.verification_method, msg.verified, msg.num_matches, msg.num_inliers) == ("degensac", True, 80, 55)
    assert msg.fundamental_valid and not msg.homography_valid
    np.testing.assert_array_equal(np.asarray(msg.fundamental_matrix).reshape(3, 3), f)


def test_homography_is_exposed_row_major():
    h = np.array([[1.0, 0.1, 5.0], [0.0, 1.2, -3.0], [1e-4, 0.0, 1.0]])
    msg = loop_closure_msg(_closure(Verification("degensac", True, 60, 40, homography=h)))
    assert msg.homography_valid and not msg.fundamental_valid
    np.testing.assert_array_equal(np.asarray(msg.homography).reshape(3, 3), h)


def _posed(ok: bool = True, metric: bool = True, reason: str = "") -> Verification:
    cov = np.diag([0.01, 0.02, 0.03, 1e-4, 2e-4, 3e-4])
    cov[0, 1] = cov[1, 0] = 0.005  # off-diagonal: row-major order is visible
    pose = PoseResult(ok=ok, reason=reason, R=np.eye(3), t=np.array([1.0, -2.0, 0.5]), metric=metric,
                      covariance=cov, num_matches=80, num_inliers=60, inlier_ratio=0.75, reproj_error_px=1.25)
    return Verification("mnn", True, 80, -1, pose=pose, relative_pose=pose.as_pose7() if ok else None)


def test_closure_carries_the_pose_with_its_covariance_row_major():
    lc = _closure(_posed())
    lc.sequence_score, lc.margin = 2.5, 0.125
    msg = loop_closure_msg(lc)
    assert msg.pose_valid and msg.pose_metric and msg.pose_status == ""
    p = msg.relative_pose.pose
    assert (p.position.x, p.position.y, p.position.z) == (1.0, -2.0, 0.5)
    assert (p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w) == (0.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(np.asarray(msg.relative_pose.covariance).reshape(6, 6),
                                  lc.verification.pose.covariance)
    assert (msg.pose_num_inliers, msg.inlier_ratio, msg.reprojection_error_px) == (60, 0.75, 1.25)
    assert (msg.sequence_score, msg.margin) == (2.5, 0.125)


def test_refused_pose_reports_its_reason_and_no_pose():
    msg = loop_closure_msg(_closure(_posed(ok=False, reason="coarse_keypoints")), "no_camera_info")
    assert not msg.pose_valid and msg.pose_status == "coarse_keypoints", "the pose's own reason wins"
    assert not any(msg.relative_pose.covariance) and msg.relative_pose.pose.position.x == 0.0
    assert msg.pose_num_inliers == 60, "the attempt's counts stay visible for diagnosis"


def test_pose_not_attempted_says_which_input_was_missing():
    msg = loop_closure_msg(_closure(Verification()), "no_camera_info")
    assert not msg.pose_valid and msg.pose_status == "no_camera_info" and msg.pose_num_inliers == -1
    assert math.isnan(msg.sequence_score) and math.isnan(msg.margin) and math.isnan(msg.reprojection_error_px)


def test_a_pose_without_a_finite_covariance_is_not_published():
    v = _posed()
    v.pose.covariance[2, 2] = np.nan
    msg = loop_closure_msg(_closure(v))
    assert not msg.pose_valid and msg.pose_status == "no_covariance"


def test_closure_and_place_match_say_which_sessions_and_robots_they_join():
    from vpr_core.decision import PlaceMatch as CorePlaceMatch
    from vpr_ros.conversions import place_match_msg
    query = Keyframe(42, 5_000_000_123, "cam", session=3, robot="robot_b")
    old = Candidate(Keyframe(7, 1_000_000_000, "cam_old", session=1, robot="robot_a"), 0.93)
    msg = loop_closure_msg(LoopClosure(query, old, Verification()))
    assert (msg.query_session, msg.match_session, msg.query_robot, msg.match_robot) == (3, 1, "robot_b", "robot_a")
    pm = place_match_msg(CorePlaceMatch(query, True, [old, Candidate(Keyframe(9, 2, "c", session=3), 0.5)]))
    assert (pm.session, pm.robot) == (3, "robot_b")
    assert list(pm.candidate_sessions) == [1, 3] and list(pm.candidate_robots) == ["robot_a", ""]
