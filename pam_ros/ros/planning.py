"""The node's interface for manipulation planners: depth input, `markers`, and the `find_objects` service.

Kept out of ros/node.py so the node only wires these in:
- DepthInput: subscriptions `depth/image` (16UC1 or 32FC1, aligned to the colour image) and
  `depth/camera_info`; each depth image becomes an engine DepthImage (metres, intrinsics of the latest
  CameraInfo, its header frame_id and stamp) handed to the pipeline, which matches it to the colour
  frame with the same stamp (engine/depth_sync.py) and computes the geometry (engine/geometry.py).
- MarkerPublisher: `markers` (visualization_msgs/MarkerArray), only while someone subscribes: per
  object with geometry a CUBE at position/size and a TEXT_VIEW_FACING label (id + category), in
  geometry_frame_id, namespace = the object id; both DELETEd when the object is removed or lost (a
  frame without depth leaves them where they were).
- answer_find_objects: a FindObjects request -> the pipeline's ranking (on the semantics worker),
  waited for at most request_timeout_s.
"""
from __future__ import annotations

import concurrent.futures

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


class DepthInput:
    """Depth image + CameraInfo subscriptions that feed `sink(DepthImage)` (the pipeline's add_depth)."""

    def __init__(self, node, qos, callback_group, sink, depth_scale: float, log_bad_input) -> None:
        self._sink = sink
        self._depth_scale = depth_scale
        self._log_bad_input = log_bad_input
        self._intrinsics: CameraIntrinsics | None = None
        self.depth_received = 0
        self.depth_unusable = 0
        self._node = node
        self._subscriptions = [
            node.create_subscription(Image, DEPTH_TOPIC, self._on_depth, qos, callback_group=callback_group),
            node.create_subscription(CameraInfo, DEPTH_INFO_TOPIC, self._on_camera_info, qos,
                                     callback_group=callback_group),
        ]

    @property
    def topic_names(self) -> list[str]:
        return [subscription.topic_name for subscription in self._subscriptions]

    def destroy(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._intrinsics = CameraIntrinsics.from_camera_info(msg.k, msg.width, msg.height)
        except PamError as error:
            self._log_bad_input(f"{DEPTH_INFO_TOPIC} unusable: {error}")

    def _on_depth(self, msg: Image) -> None:
        self.depth_received += 1
        if self._intrinsics is None:
            self.depth_unusable += 1
            self._log_bad_input(f"depth image ignored: no CameraInfo received on "
                                f"{self._node.resolve_topic_name(DEPTH_INFO_TOPIC)} yet")
            return
        try:
            metres = convert.depth_msg_to_metres(msg, self._depth_scale)
        except PamError as error:
            self.depth_unusable += 1
            self._log_bad_input(f"depth image ignored: {error}")
            return
        self._sink(DepthImage(metres, self._intrinsics, msg.header.frame_id, convert.stamp_to_ns(msg.header.stamp)))


class MarkerPublisher:
    """Boxes and labels of the objects with geometry; DELETE for those that lose it or are removed."""

    def __init__(self, node, qos) -> None:
        self._publisher = node.create_publisher(MarkerArray, MARKERS_TOPIC, qos)
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
        box = Marker(header=marker_header, ns=obj.object_id, id=0, type=Marker.CUBE, action=Marker.ADD,
                     pose=Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(w=1.0)),
                     scale=Vector3(x=max(geometry.size[0], 1e-3), y=max(geometry.size[1], 1e-3),
                                   z=max(geometry.size[2], 1e-3)),
                     color=_colour(obj.object_id, 0.4))
        label_text = obj.object_id + (f": {obj.semantics.category}" if obj.semantics.category else "")
        label = Marker(header=marker_header, ns=obj.object_id, id=1, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, text=label_text,
                       pose=Pose(position=Point(x=x, y=y - geometry.size[1] / 2 - LABEL_GAP_M, z=z),
                                 orientation=Quaternion(w=1.0)),
                       scale=Vector3(z=LABEL_HEIGHT_M), color=_colour(obj.object_id, 1.0))
        markers += [box, label]
    lost = {obj.object_id for obj in result.objects if obj.tracking_state == TrackingState.LOST}
    for object_id in [oid for oid in shown if oid not in present or oid in lost]:
        marker_header = Header(stamp=header.stamp, frame_id=shown.pop(object_id))
        markers += [Marker(header=marker_header, ns=object_id, id=i, action=Marker.DELETE) for i in (0, 1)]
    return MarkerArray(markers=markers)


def _colour(object_id: str, alpha: float) -> ColorRGBA:
    """The object's colour in the overlay (viz.colours), so markers and overlay agree."""
    r, g, b = object_colour_unit(object_id)
    return ColorRGBA(r=r, g=g, b=b, a=float(alpha))


def answer_find_objects(pipeline, request: FindObjects.Request, response: FindObjects.Response, *,
                        timeout_s: float, frame_id: str, mask_encoding: str) -> FindObjects.Response:
    """Fill `response` from the pipeline's ranking; PamError (bad query, unknown id) is the caller's to answer."""
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
        header = Header(stamp=convert.ns_to_stamp(match.stamp_ns), frame_id=frame_id)
        matches.append(ObjectMatch(object_id=match.object_id, score=float(match.score),
                                   log_odds=float(match.log_odds), stamp=convert.ns_to_stamp(match.stamp_ns),
                                   object=convert.object_result_to_msg(match.object, header, mask_encoding)))
    response.matches = matches
    response.success = True
    best = f"; best: {matches[0].object_id} ({matches[0].score:.2f})" if matches else ""
    response.message = f"{len(matches)} object(s) ranked for {request.query.strip()!r}{best}"
    return response
