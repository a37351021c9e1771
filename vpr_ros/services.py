"""Services of issue #10: relocalisation (~/query_place), mapping / localisation (~/set_mode), map reset
(~/reset_map).

Each callback answers, never raises: a bad request or an unexpected error comes back as success=false
with the reason. ~/query_place runs the model, so it has a callback group of its own: under the
node's MultiThreadedExecutor, image, odometry and other callbacks keep running while it works, and the
worker thread keeps processing frames (the recognizer's lock is held only for the map search).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from vpr_core.geometry import CameraModel
from vpr_core.images import ImageError
from vpr_core.pipeline import MODES, PlaceRecognizer
from vpr_msgs.srv import QueryPlace, ResetMap, SetMode
from vpr_ros.conversions import (camera_model, depth_to_array, image_to_rgb, pose_fields, pose_msg, to_time)
from vpr_ros.inputs import SensorInputs

Handler = Callable[[Any, Any], Any]


class RequestError(ValueError):
    """The request itself is wrong; the message says what and how to fix it."""


def guarded(handler: Handler, log: Any) -> Handler:
    """A service callback that always answers: any exception becomes success=false with its reason (an
    exception escaping a callback would end the executor, and the node)."""
    def call(request: Any, response: Any) -> Any:
        try:
            return handler(request, response)
        except Exception as exc:  # noqa: BLE001 -- answer instead of crashing
            fresh = type(response)()  # nothing half-filled reaches the client
            fresh.success = False
            name = getattr(handler, "__name__", handler)
            if isinstance(exc, RequestError):
                fresh.message = str(exc)
                log.warning(f"service {name} refused a request: {fresh.message}")
            else:
                fresh.message = f"failed: {type(exc).__name__}: {exc}"
                log.error(f"service {name} {fresh.message}")
            return fresh
    return call


def no_pose_reason(recognizer: PlaceRecognizer, camera: Optional[CameraModel]) -> str:
    """Why a closure or relocalisation carries no pose when none was attempted."""
    if camera is None and recognizer.camera is None:
        return "no_camera_info"
    return "no_local_features"


class LoopClosureServices:
    """Registers the three services on `node`; `on_reset` lets the node clear what it drew of the map."""

    def __init__(self, node: Node, recognizer: PlaceRecognizer, inputs: SensorInputs,
                 on_reset: Callable[[], None]) -> None:
        self.recognizer, self.inputs, self.on_reset = recognizer, inputs, on_reset
        self.log = log = node.get_logger()
        node.create_service(QueryPlace, "~/query_place", guarded(self.query_place, log),
                            callback_group=MutuallyExclusiveCallbackGroup())
        node.create_service(SetMode, "~/set_mode", guarded(self.set_mode, log))
        node.create_service(ResetMap, "~/reset_map", guarded(self.reset_map, log))

    # ---- ~/query_place -------------------------------------------------------------------------
    def _camera(self, request: QueryPlace.Request) -> Optional[CameraModel]:
        info = request.camera_info
        if info.width == 0:
            return self.inputs.camera_for(request.image.header.frame_id or self.inputs.cfg.default_frame_id)
        try:
            return camera_model(info)
        except ValueError as exc:
            raise RequestError(f"camera_info is not usable: {exc}; leave it empty (width 0) to use the node's "
                               f"CameraInfo or camera.K") from None

    def query_place(self, request: QueryPlace.Request, response: QueryPlace.Response) -> QueryPlace.Response:
        if request.k < 1:
            raise RequestError("k must be >= 1: the number of map places to return")
        try:
            rgb = image_to_rgb(request.image)
        except ImageError as exc:
            raise RequestError(f"image could not be decoded: {exc}") from None
        depth = None
        if request.depth.width or request.depth.height or len(request.depth.data):
            try:
                depth = depth_to_array(request.depth)
            except ImageError as exc:
                raise RequestError(f"depth could not be decoded: {exc}; send no depth (an empty Image) "
                                   f"for a pose without scale") from None
        camera = self._camera(request)
        rec = self.recognizer
        found = rec.relocalise(rgb, int(request.k), camera=camera, depth=depth)
        if not found:
            raise RequestError("the map is empty: nothing to relocalise against (map keyframes first, or "
                               "load a map with ~/load_map)")
        for c in found:
            kf, v = c.keyframe, c.verification
            response.ids.append(kf.id)
            response.scores.append(float(c.score))
            response.stamps.append(to_time(kf.stamp_ns))
            response.frame_ids.append(kf.frame_id)
            response.stored_pose_valid.append(kf.pose is not None)
            response.stored_poses.append(pose_msg(kf.pose if kf.pose is not None else [0, 0, 0, 0, 0, 0, 1]))
            response.num_matches.append(v.num_matches if v is not None else -1)
            response.num_inliers.append(v.num_inliers if v is not None else -1)
        pf = pose_fields(found[0].verification, no_pose_reason(rec, camera))
        response.pose_valid, response.pose_metric, response.pose_status = pf.valid, pf.metric, pf.status
        response.relative_pose = pf.pose
        response.success = True
        response.message = (f"{len(found)} place(s); best keyframe {found[0].id} (score {found[0].score:.3f}), "
                            + ("relative pose " + ("in metres" if pf.metric else "up to scale") if pf.valid
                               else f"no relative pose ({pf.status})"))
        return response

    # ---- ~/set_mode, ~/reset_map ------------------------------------------------------------------
    def set_mode(self, request: SetMode.Request, response: SetMode.Response) -> SetMode.Response:
        mode = request.mode.strip().lower()
        rec = self.recognizer
        if mode not in MODES:
            response.success, response.mode = False, rec.mode
            response.message = f"unknown mode {request.mode!r}: use one of {list(MODES)} (mode unchanged: {rec.mode})"
            return response
        before = rec.mode
        rec.set_mode(mode)
        response.success, response.mode = True, rec.mode
        response.message = f"mode {rec.mode}" + (" (unchanged)" if before == mode else f" (was {before})")
        self.log.info(f"~/set_mode: {response.message}")
        return response

    def reset_map(self, request: ResetMap.Request, response: ResetMap.Response) -> ResetMap.Response:
        rec = self.recognizer
        response.num_keyframes_before = len(rec.db)
        rec.reset_map()
        self.on_reset()
        response.success = True
        response.message = (f"map reset: {response.num_keyframes_before} keyframe(s) forgotten; the map file is "
                            f"untouched, new ids continue after the old ones")
        self.log.info(f"~/reset_map: {response.message}")
        return response
