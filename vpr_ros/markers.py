"""The map as RViz sees it: keyframe positions (SPHERE_LIST) and loop edges (LINE_LIST).

Positions are the odometry poses stored with keyframes (body poses in the odometry frame, published
in node.map_frame); an edge joins the query frame's pose and the matched keyframe's pose. A message is
built only when something changed, so a static map costs nothing per period.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Iterable, List, Optional, Sequence, Tuple

from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

KEYFRAMES_NS, EDGES_NS = "vpr_keyframes", "vpr_loop_closures"
KEYFRAME_SIZE_M, EDGE_WIDTH_M = 0.15, 0.05
KEYFRAME_COLOUR = ColorRGBA(r=0.2, g=0.4, b=1.0, a=0.9)
EDGE_COLOUR = ColorRGBA(r=0.1, g=0.9, b=0.2, a=0.9)
MAX_EDGES = 10_000  # loop edges drawn at most (the newest); 48 bytes each


def _point(pose: Sequence[float]) -> Point:
    return Point(x=float(pose[0]), y=float(pose[1]), z=float(pose[2]))


class LoopGraphMarkers:
    """Collects loop edges as closures are published; builds the MarkerArray on demand."""

    def __init__(self, frame_id: str, max_edges: int = MAX_EDGES) -> None:
        self.frame_id = frame_id
        self._edges: Deque[Tuple[Point, Point]] = deque(maxlen=max_edges)
        self._edges_seen = 0  # edges ever added (the deque's length saturates)
        self._published: Optional[Tuple[int, int]] = None  # (keyframes with pose, edges seen) last sent
        self._cleared = False  # a reset happened: RViz must drop what it shows

    def add_closure(self, query_pose: Optional[Sequence[float]], match_pose: Optional[Sequence[float]]) -> None:
        """Draw an edge for a published loop closure when both ends have a pose."""
        if query_pose is not None and match_pose is not None:
            self._edges.append((_point(query_pose), _point(match_pose)))
            self._edges_seen += 1

    def reset(self) -> None:
        """The map was reset or replaced: forget the edges and clear the display."""
        self._edges.clear()
        self._edges_seen = 0
        self._published = None
        self._cleared = True

    def _marker(self, ns: str, mid: int, kind: int, stamp, points: List[Point], colour: ColorRGBA,
                size: float) -> Marker:
        m = Marker(ns=ns, id=mid, type=kind, action=Marker.ADD, points=points, color=colour)
        m.header.frame_id, m.header.stamp = self.frame_id, stamp
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = size
        return m

    def message(self, keyframe_poses: Iterable[Optional[Sequence[float]]], stamp) -> Optional[MarkerArray]:
        """Markers for the keyframes' poses (None entries skipped) and the edges; None when nothing changed
        since the last message or nothing has a pose."""
        points = [_point(p) for p in keyframe_poses if p is not None]
        state = (len(points), self._edges_seen)
        if state == self._published and not self._cleared:
            return None
        out = MarkerArray()
        if self._cleared:
            clear = Marker(action=Marker.DELETEALL)
            clear.header.frame_id, clear.header.stamp = self.frame_id, stamp
            out.markers.append(clear)
        if points:
            out.markers.append(self._marker(KEYFRAMES_NS, 0, Marker.SPHERE_LIST, stamp, points, KEYFRAME_COLOUR,
                                            KEYFRAME_SIZE_M))
        if self._edges:
            edge_points = [p for pair in list(self._edges) for p in pair]
            out.markers.append(self._marker(EDGES_NS, 1, Marker.LINE_LIST, stamp, edge_points, EDGE_COLOUR,
                                            EDGE_WIDTH_M))
        if not out.markers:
            return None
        self._published, self._cleared = state, False
        return out
