"""The node's interface for manipulation planners: depth input, `markers`, and the `find_objects` service.

Kept out of ros/node.py so the node only wires these in:
- DepthInput: subscriptions `depth/image` (16UC1 or 32FC1, aligned to the colour image) and
  `depth/camera_info`; each depth image (metres, header frame_id and stamp) and each CameraInfo (K,
  size, stamp) is handed to the pipeline, which pairs both with the colour frame of their stamp
  (engine/depth.py, as the replay does) and computes the geometry (engine/geometry.py, engine/grasp.py).
- MarkerPublisher: `markers` (visualization_msgs/MarkerArray), only while someone subscribes: per
  object with geometry a CUBE at position with orientation and oriented_size, a TEXT_VIEW_FACING label
  (id + category) and an ARROW from 0.1 m before the grasp point along the approach to the grasp
  point (where the gripper comes from), in geometry_frame_id, namespace = the object id; all DELETEd
  when the object is removed or lost (a frame without depth leaves them where they were).
- answer_find_objects: a FindObjects request -> the pipeline's ranking (on the semantics worker),
  waited for at most request_timeout_s.
"""
from __future__ import annotations

import concurrent.futures

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from pam_ros.engine.geometry import CameraIntrinsics, DepthImage
from pam_ros.engine.types import FrameResult, TrackingState
from pam_ros.errors import PamError
from pam_ros.msg import ObjectMatch
from pam_ros.ros import convert
from pam_ros.srv import FindObjects
from pam_ros.viz.colours import object_colour_unit

DEPTH_TOPIC = "depth/image"
DEPTH_INFO_TOPIC = "depth/camera_info"
MARKERS_TOPIC = "markers"
LABEL_HEIGHT_M = 0.04  # TEXT_VIEW_FACING scale.z: the height of a capital letter
LABEL_GAP_M = 0.03  # the label floats this far above the box (optical frame: y points down)
APPROACH_ARROW_M = 0.1  # the approach ARROW starts this far before the grasp point
ARROW_SHAFT_M = 0.005  # ARROW with points: scale.x shaft diameter, y head diameter, z head length


class DepthInput:
    """Depth image + CameraInfo subscriptions that feed the pipeline's add_depth / add_camera_info."""

    def __init__(self, node, qos, callback_group, pipeline, depth_scale: float, log_bad_input,
                 prefix: str = "") -> None:
        self._pipeline = pipeline
        self._depth_scale = depth_scale
        self._log_bad_input = log_bad_input
        self.depth_received = 0
        self.depth_unusable = 0
        self._intrinsics: CameraIntrinsics | None = None
        self._node = node
        self._subscriptions = [
            node.create_subscription(Image, prefix + DEPTH_TOPIC, self._on_depth, qos, callback_group=callback_group),
            node.create_subscription(CameraInfo, prefix + DEPTH_INFO_TOPIC, self._on_camera_info, qos,
                                     callback_group=callback_group),
        ]

    @property
    def topic_names(self) -> list[str]:
        return [subscription.topic_name for subscription in self._subscriptions]

    @property
    def intrinsics(self) -> CameraIntrinsics | None:
        """The latest usable CameraInfo's intrinsics; None before one arrived."""
        return self._intrinsics

    def destroy(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def _on_camera_info(self, msg: CameraInfo) -> None:
        # K is checked against each depth image it pairs with (its size): the frame says why it is refused
        intrinsics = CameraIntrinsics.from_camera_info(msg.k, msg.width, msg.height, check=False)
        if not intrinsics.k_problem():  # clicks in the camera frame are projected with the latest usable one
            self._intrinsics = intrinsics
        self._pipeline.add_camera_info(convert.stamp_to_ns(msg.header.stamp), intrinsics)

    def _on_depth(self, msg: Image) -> None:
        self.depth_received += 1
        try:
            metres = convert.depth_msg_to_metres(msg, self._depth_scale)
        except PamError as error:
            self.depth_unusable += 1
            self._log_bad_input(f"depth image ignored: {error}")
            return
        self._pipeline.add_depth(DepthImage(metres, None, msg.header.frame_id, convert.stamp_to_ns(msg.header.stamp)))


class MarkerPublisher:
    """Boxes and labels of the objects with geometry; DELETE for those that lose it or are removed."""

    def __init__(self, node, qos, prefix: str = "") -> None:
        self._publisher = node.create_publisher(MarkerArray, prefix + MARKERS_TOPIC, qos)
        self._shown: dict[str, str] = {}  # object id -> frame id of its markers

    def publish(self, result: FrameResult, header: Header) -> None:
        if self._publisher.get_subscription_count() == 0:
            self._shown.clear()  # a later subscriber starts from a clean slate
            return
        markers = frame_markers(result, header, self._shown)
        if markers.markers:
            self._publisher.publish(markers)

    def destroy(self, node) -> None:
        node.destroy_publisher(self._publisher)


def frame_markers(result: FrameResult, header: Header, shown: dict[str, str]) -> MarkerArray:
    """Markers for one frame, updating `shown` (object id -> frame id of its markers): ADD (or move) for
    every object with geometry that is not lost; DELETE for shown objects that are gone (removed) or
    lost. An object tracked on a frame without depth keeps its last markers."""
    markers = []
    present = {obj.object_id for obj in result.objects}
    for obj in result.objects:
        geometry = obj.geometry
        if obj.tracking_state == TrackingState.LOST:
            continue
        if geometry is None:
            continue
        shown[obj.object_id] = geometry.frame_id
        marker_header = Header(stamp=header.stamp, frame_id=geometry.frame_id)
        x, y, z = geometry.position
        qx, qy, qz, qw = geometry.orientation
        box = Marker(header=marker_header, ns=obj.object_id, id=0, type=Marker.CUBE, action=Marker.ADD,
                     pose=Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw)),
                     scale=Vector3(x=max(geometry.oriented_size[0], 1e-3), y=max(geometry.oriented_size[1], 1e-3),
                                   z=max(geometry.oriented_size[2], 1e-3)),
                     color=_colour(obj.object_id, 0.4))
        label_text = obj.object_id + (f": {obj.semantics.category}" if obj.semantics.category else "")
        label = Marker(header=marker_header, ns=obj.object_id, id=1, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, text=label_text,
                       pose=Pose(position=Point(x=x, y=y - geometry.size[1] / 2 - LABEL_GAP_M, z=z),
                                 orientation=Quaternion(w=1.0)),
                       scale=Vector3(z=LABEL_HEIGHT_M), color=_colour(obj.object_id, 1.0))
        grasp = np.asarray(geometry.grasp_point)
        tail = grasp - APPROACH_ARROW_M * np.asarray(geometry.approach)
        arrow = Marker(header=marker_header, ns=obj.object_id, id=2, type=Marker.ARROW, action=Marker.ADD,
                       points=[Point(x=float(tail[0]), y=float(tail[1]), z=float(tail[2])),
                               Point(x=float(grasp[0]), y=float(grasp[1]), z=float(grasp[2]))],
                       pose=Pose(orientation=Quaternion(w=1.0)),
                       scale=Vector3(x=ARROW_SHAFT_M, y=2 * ARROW_SHAFT_M, z=3 * ARROW_SHAFT_M),
                       color=_colour(obj.object_id, 1.0))
        markers += [box, label, arrow]
    lost = {obj.object_id for obj in result.objects if obj.tracking_state == TrackingState.LOST}
    for object_id in [oid for oid in shown if oid not in present or oid in lost]:
        marker_header = Header(stamp=header.stamp, frame_id=shown.pop(object_id))
        markers += [Marker(header=marker_header, ns=object_id, id=i, action=Marker.DELETE) for i in (0, 1, 2)]
    return MarkerArray(markers=markers)


def _colour(object_id: str, alpha: float) -> ColorRGBA:
    """The object's colour in the overlay (viz.colours), so markers and overlay agree."""
    r, g, b = object_colour_unit(object_id)
    return ColorRGBA(r=r, g=g, b=b, a=float(alpha))


def answer_find_objects(pipeline, request: FindObjects.Request, response: FindObjects.Response, *,
                        timeout_s: float, frame_id, mask_encoding: str) -> FindObjects.Response:
    """Fill `response` from the ranking of a PerceptionPipeline or a PerceptionHost (whose matches name their
    camera: ObjectMatch.camera); frame_id(camera) is the frame of that camera's images. PamError (bad query,
    unknown id or camera) is the caller's to answer."""
    future = pipeline.find_objects(request.query, list(request.object_ids), max_results=int(request.max_results),
                                   min_score=float(request.min_score))
    try:
        ranked = future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        future.cancel()  # not started yet: it never runs; running: its answer is dropped
        response.success = False
        response.message = (f"find_objects timed out after {timeout_s:g} s (request_timeout_s): the semantics "
                            "worker is busy; try again or raise request_timeout_s")
        return response
    matches = []
    for match in ranked:
        header = Header(stamp=convert.ns_to_stamp(match.stamp_ns), frame_id=frame_id(match.camera))
        matches.append(ObjectMatch(object_id=match.object_id, camera=match.camera, score=float(match.score),
                                   log_odds=float(match.log_odds), stamp=convert.ns_to_stamp(match.stamp_ns),
                                   object=convert.object_result_to_msg(match.object, header, mask_encoding)))
    response.matches = matches
    response.success = True
    best = ""
    if matches:
        where = f"{matches[0].camera}/" if matches[0].camera else ""
        best = f"; best: {where}{matches[0].object_id} ({matches[0].score:.2f})"
    response.message = f"{len(matches)} object(s) ranked for {request.query.strip()!r}{best}"
    return response
