"""One sample of every pam_ros message type with every field set to a non-default value.

Used by both sides of the interface round-trip tests (the test process and the helper server), so
the expected values live in one place.
"""
from __future__ import annotations

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from pam_ros.action import Caption
from pam_ros.msg import ObjectMatch, PerceivedObject, PerceivedObjectArray, Prompt
from pam_ros.srv import Describe, Discover, FindObjects, ManageObjects

# Goals whose task is this make the helper server stream feedback until the goal is cancelled.
ENDLESS_TASK = "endless_caption"


def header(sec: int = 1_700_000_000, nanosec: int = 123_456_789, frame_id: str = "camera_color_optical_frame") -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def padded_rgb_image() -> Image:
    """4x3 rgb8 with 4 padding bytes per row (step 16 > 3 * 4): padding must survive too."""
    width, height, step = 4, 3, 16
    data = bytes((7 * i + 3) % 256 for i in range(step * height))
    return Image(header=header(frame_id="wrist_camera"), height=height, width=width, encoding="rgb8",
                 is_bigendian=1, step=step, data=data)


def mask_image(width: int = 5, height: int = 2) -> Image:
    data = bytes(255 if (u + v) % 3 else 0 for v in range(height) for u in range(width))
    return Image(header=header(), height=height, width=width, encoding="mono8", is_bigendian=1, step=width, data=data)


def prompt(object_id: str = "mug_1") -> Prompt:
    return Prompt(
        header=header(),
        action=Prompt.REFINE,
        object_id=object_id,
        points=[Point(x=12.5, y=40.25, z=1.0), Point(x=-3.0, y=7.75, z=-2.5), Point(x=640.0, y=480.0, z=0.5)],
        point_labels=[1, 0, 1],
        box=[10.0, 20.5, 300.25, 400.0],
        has_box=True,
        tasks=["explain", "caption", "recognize_zh"],
    )


def perceived_object(object_id: str = "mug_1") -> PerceivedObject:
    return PerceivedObject(
        object_id=object_id,
        score=0.875,
        object_score_logit=1.9375,  # float32 fields: exactly representable values
        tracking_state=PerceivedObject.TRACKING_LOST,
        frames_lost=3,
        roi=RegionOfInterest(x_offset=10, y_offset=20, height=2, width=5, do_rectify=True),
        mask_area=7,
        centroid=Point(x=12.25, y=20.5, z=0.125),
        mask=mask_image(),
        mask_full_frame=True,
        semantics_state=PerceivedObject.SEMANTICS_STALE,
        semantics_stamp=Time(sec=1_699_999_999, nanosec=5),
        semantics_error="previous refresh timed out",
        category="mug",
        definition="a cylindrical drinking vessel with a handle",
        explanation="A ceramic mug; it is used for holding hot drinks such as coffee.",
        caption="A white mug with a blue handle on a wooden table.",
        task_names=["explain", "caption"],
        task_texts=["A ceramic mug; it is used for holding hot drinks.", "A white mug — “ünïcode” ☕"],
        has_geometry=True,
        geometry_frame_id="camera_depth_optical_frame",
        position=Point(x=0.125, y=-0.0625, z=0.75),
        size=Vector3(x=0.09375, y=0.125, z=0.03125),
        depth_valid_fraction=0.8125,
        grasp_point=Point(x=0.1171875, y=-0.05, z=0.7421875),
        grasp_pixel=Point(x=13.0, y=21.0, z=0.5),
        orientation=Quaternion(x=0.5, y=-0.5, z=0.5, w=0.5),
        oriented_size=Vector3(x=0.125, y=0.0625, z=0.015625),
        grasp_pose=Pose(position=Point(x=0.1171875, y=-0.05, z=0.7421875),
                        orientation=Quaternion(x=0.125, y=0.25, z=-0.5, w=0.75)),
        grasp_width=0.0625,
    )


def perceived_object_array() -> PerceivedObjectArray:
    return PerceivedObjectArray(
        header=header(),
        frame_index=41,
        frames_received=100,
        frames_dropped=58,
        image_width=640,
        image_height=480,
        tracking_seconds=0.0625,
        objects=[perceived_object("mug_1"), perceived_object("spoon_2")],
    )


def describe_request() -> Describe.Request:
    return Describe.Request(image=padded_rgb_image(), prompt=prompt(), tasks=["recognize", "explain"], max_new_tokens=32)


def describe_response() -> Describe.Response:
    return Describe.Response(success=True, message="described mug_1", object=perceived_object(),
                             texts=["mug", "A ceramic mug; it is used for holding hot drinks."])


def manage_objects_request() -> ManageObjects.Request:
    return ManageObjects.Request(prompts=[prompt("mug_1"), prompt("spoon_2")], wait=True)


def manage_objects_response() -> ManageObjects.Response:
    return ManageObjects.Response(success=True, message="1 applied, 1 queued", object_ids=["mug_1", "spoon_2"],
                                  status=[ManageObjects.Response.APPLIED, ManageObjects.Response.QUEUED],
                                  errors=["", ""])


def object_match(object_id: str = "mug_1") -> ObjectMatch:
    return ObjectMatch(object_id=object_id, camera="wrist", score=0.75, log_odds=1.125, stamp=Time(sec=1_700_000_000, nanosec=9),
                       object=perceived_object(object_id))


def find_objects_request() -> FindObjects.Request:
    return FindObjects.Request(query="holding hot coffee", object_ids=["mug_1", "spoon_2"], max_results=1,
                               min_score=0.25)


def find_objects_response() -> FindObjects.Response:
    return FindObjects.Response(success=True, message="1 of 2 objects ranked", matches=[object_match("mug_1")])


def discover_request() -> Discover.Request:
    return Discover.Request(max_new_objects=3, min_area=400, tasks=["recognize", "caption"])


def discover_response() -> Discover.Response:
    return Discover.Response(success=True, message="2 new object(s) from 9 region(s) on frame 12 (0.31 s)",
                             object_ids=["obj_4", "obj_5"])


def caption_goal(task: str = "detailed_caption") -> Caption.Goal:
    return Caption.Goal(object_id="mug_1", prompt=prompt(), task=task, max_new_tokens=64)


CAPTION_WORDS = ("A", "white", "mug", "with", "a", "blue", "handle.")


def caption_feedback(num_tokens: int = len(CAPTION_WORDS)) -> Caption.Feedback:
    # a sample sets every field: a running goal's position is 0 in practice
    return Caption.Feedback(status="running", queue_position=1, text=" ".join(CAPTION_WORDS[:num_tokens]),
                            num_tokens=num_tokens)


def caption_result() -> Caption.Result:
    return Caption.Result(success=True, message="finished", text=" ".join(CAPTION_WORDS),
                          num_tokens=len(CAPTION_WORDS), seconds=0.5, tokens_per_second=14.0,
                          semantics_stamp=Time(sec=1_700_000_000, nanosec=123_456_789))


# topic name suffix -> (message type, sample builder); the helper echoes echo_in/<name> to echo_out/<name>.
ECHO_TOPICS = {
    "prompt": (Prompt, prompt),
    "perceived_object": (PerceivedObject, perceived_object),
    "perceived_object_array": (PerceivedObjectArray, perceived_object_array),
    "describe_request": (Describe.Request, describe_request),
    "describe_response": (Describe.Response, describe_response),
    "manage_objects_request": (ManageObjects.Request, manage_objects_request),
    "manage_objects_response": (ManageObjects.Response, manage_objects_response),
    "object_match": (ObjectMatch, object_match),
    "find_objects_request": (FindObjects.Request, find_objects_request),
    "find_objects_response": (FindObjects.Response, find_objects_response),
    "discover_request": (Discover.Request, discover_request),
    "discover_response": (Discover.Response, discover_response),
    "caption_goal": (Caption.Goal, caption_goal),
    "caption_result": (Caption.Result, caption_result),
    "caption_feedback": (Caption.Feedback, caption_feedback),
}
