"""LoopClosure messages carry the whole verification: method, counts, and the fundamental matrix or
homography DEGENSAC estimated (each with its validity flag)."""
from __future__ import annotations

import numpy as np

from vpr_core.detector import LoopClosure, Verification
from vpr_core.map_database import Candidate, Keyframe
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
