"""pam_ros.ros.convert: ROS messages <-> numpy images, prompts and engine results (no model needed)."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from PIL import Image as PilImage
from rclpy.serialization import deserialize_message, serialize_message
from ros_helpers.messages import mask_from_msg, request_to_prompt_msg
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pam_ros.action import Caption
from pam_ros.engine.geometry import ObjectGeometry
from pam_ros.engine.types import (
    FrameResult,
    GenerationResult,
    ObjectResult,
    ObjectSemantics,
    PromptAction,
    PromptRequest,
    SemanticsState,
    TrackingState,
)
from pam_ros.msg import PerceivedObject, PerceivedObjectArray, Prompt
from pam_ros.ros import convert

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # H=5, W=7


def _raw_image(encoding: str, rgb: np.ndarray, padding: int = 0) -> Image:
    """Encode rgb the way a camera driver would, with `padding` garbage bytes at the end of each row."""
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 200, np.uint8)]),
        "mono8": rgb[:, :, 0],
    }[encoding]
    height, width = rgb.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    return Image(height=height, width=width, encoding=encoding, step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize("padding", [0, 5])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_raw_colour_encodings_give_rgb(encoding, padding):
    out = convert.image_msg_to_rgb(_raw_image(encoding, RGB, padding))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("padding", [0, 3])
def test_mono8_is_replicated_to_three_channels(padding):
    out = convert.image_msg_to_rgb(_raw_image("mono8", RGB, padding))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], RGB[:, :, 0])


def test_conversion_copies_the_message_buffer():
    msg = _raw_image("rgb8", RGB)
    out = convert.image_msg_to_rgb(msg)
    msg.data[0] ^= 0xFF
    np.testing.assert_array_equal(out, RGB)


def test_encoding_name_is_case_insensitive():
    msg = _raw_image("bgr8", RGB)
    msg.encoding = "BGR8"
    np.testing.assert_array_equal(convert.image_msg_to_rgb(msg), RGB)


@pytest.mark.parametrize("mutate,expected", [
    (lambda m: setattr(m, "encoding", "32FC1"), "unsupported image encoding '32FC1'"),
    (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
    (lambda m: setattr(m, "width", 0), "zero size"),
    (lambda m: setattr(m, "height", 0), "zero size"),
    (lambda m: setattr(m, "data", bytes(m.step * m.height - 1)), "truncated"),
    (lambda m: setattr(m, "data", b""), "truncated"),
    (lambda m: setattr(m, "step", 20), "row step 20 is shorter"),
])
def test_malformed_raw_images_are_refused_clearly(mutate, expected):
    msg = _raw_image("rgb8", RGB)
    mutate(msg)
    with pytest.raises(convert.ImageConversionError, match=expected) as info:
        convert.image_msg_to_rgb(msg)
    assert isinstance(info.value, ValueError)


def _compressed(fmt: str, pil_format: str, rgb: np.ndarray = RGB) -> CompressedImage:
    buffer = io.BytesIO()
    PilImage.fromarray(rgb).save(buffer, format=pil_format)
    return CompressedImage(format=fmt, data=buffer.getvalue())


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed rgb8", ""])
def test_png_is_decoded_exactly(fmt):
    np.testing.assert_array_equal(convert.compressed_msg_to_rgb(_compressed(fmt, "PNG")), RGB)


def test_jpeg_is_decoded_to_rgb():
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[:, :, 0] = 220  # a red image: channel order mistakes would show as blue
    smooth[:, :, 2] = 30
    out = convert.compressed_msg_to_rgb(_compressed("bgr8; jpeg compressed bgr8", "JPEG", smooth))
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - smooth).max() <= 4


@pytest.mark.parametrize("msg,expected", [
    (CompressedImage(format="jpeg", data=b""), "no data"),
    (CompressedImage(format="jpeg", data=b"definitely not a jpeg"), "cannot decode"),
    (CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 16), "compressed depth"),
    (CompressedImage(format="theora", data=b"\x00" * 16), "cannot decode 'theora'"),
])
def test_malformed_compressed_images_are_refused_clearly(msg, expected):
    with pytest.raises(convert.ImageConversionError, match=expected):
        convert.compressed_msg_to_rgb(msg)


def test_truncated_png_is_refused():
    msg = _compressed("png", "PNG")
    msg.data = bytes(msg.data)[: len(msg.data) // 2]
    with pytest.raises(convert.ImageConversionError, match="cannot decode"):
        convert.compressed_msg_to_rgb(msg)


def test_rgb_to_image_round_trip_through_serialization():
    header = Header(stamp=Time(sec=3, nanosec=4), frame_id="cam")
    msg = convert.rgb_to_image_msg(RGB, header)
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 7, 5, 21)
    again = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(convert.image_msg_to_rgb(again), RGB)
    assert again.header.frame_id == "cam" and again.header.stamp.nanosec == 4


def test_rgb_to_image_refuses_wrong_shapes_and_types():
    with pytest.raises(convert.ImageConversionError, match="uint8"):
        convert.rgb_to_image_msg(RGB.astype(np.float32))
    with pytest.raises(convert.ImageConversionError, match="shape"):
        convert.rgb_to_image_msg(np.zeros((4, 4, 4), np.uint8))


def test_stamps_convert_both_ways():
    assert convert.stamp_to_ns(Time(sec=12, nanosec=345)) == 12_000_000_345
    stamp = convert.ns_to_stamp(12_000_000_345)
    assert (stamp.sec, stamp.nanosec) == (12, 345)


# --- prompts ------------------------------------------------------------------------------------

def _prompt(**fields) -> Prompt:
    msg = Prompt(action=Prompt.ADD, points=[Point(x=10.0, y=20.0), Point(x=30.5, y=4.0)], point_labels=[1, 0])
    msg.header.stamp = Time(sec=2, nanosec=500)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def test_prompt_becomes_a_request():
    msg = _prompt(object_id=" cup ", box=[1.0, 2.0, 50.0, 60.0], has_box=True, tasks=["explain", " ", "caption"])
    request = convert.prompt_msg_to_request(msg)
    assert request == PromptRequest(action=PromptAction.ADD, object_id="cup", points=((10.0, 20.0), (30.5, 4.0)),
                                    labels=(1, 0), box=(1.0, 2.0, 50.0, 60.0), tasks=("explain", "caption"),
                                    stamp_ns=2_000_000_500)


def test_box_is_ignored_without_has_box():
    request = convert.prompt_msg_to_request(_prompt(box=[math.nan, 0.0, 0.0, 0.0], has_box=False))
    assert request.box is None


def test_request_to_prompt_round_trips():
    request = PromptRequest(action=PromptAction.REFINE, object_id="obj_3", points=((1.5, 2.5),), labels=(0,),
                            box=(0.0, 1.0, 8.0, 9.0), tasks=("recognize",), stamp_ns=7_000_000_001)
    msg = deserialize_message(serialize_message(request_to_prompt_msg(request)), Prompt)
    assert convert.prompt_msg_to_request(msg) == request


@pytest.mark.parametrize("fields,expected", [
    ({"points": [Point(x=math.nan, y=1.0)], "point_labels": [1]}, "finite"),
    ({"points": [Point(x=1.0, y=math.inf)], "point_labels": [1]}, "finite"),
    ({"point_labels": [1]}, "2 points but 1 point_labels"),
    ({"point_labels": [1, 0, 1]}, "2 points but 3 point_labels"),
    ({"point_labels": [1, 2]}, r"labels must be 1 \(object\) or 0 \(background\), got \[2\]"),
    ({"point_labels": [-1, 1]}, r"got \[-1\]"),
    ({"box": [10.0, 10.0, 5.0, 20.0], "has_box": True}, "x1 < x2"),
    ({"box": [10.0, 10.0, 20.0, 10.0], "has_box": True}, "y1 < y2"),
    ({"box": [0.0, math.nan, 20.0, 10.0], "has_box": True}, "finite"),
    ({"points": [], "point_labels": []}, "needs points or a box"),
    ({"action": Prompt.REFINE}, "REFINE needs the object_id"),
    ({"action": Prompt.REMOVE, "object_id": "  "}, "REMOVE needs the object_id"),
    ({"action": 9}, "unknown prompt action 9"),
])
def test_malformed_prompts_are_refused_clearly(fields, expected):
    with pytest.raises(convert.PromptConversionError, match=expected) as info:
        convert.prompt_msg_to_request(_prompt(**fields))
    assert isinstance(info.value, ValueError)


def test_remove_and_reset_ignore_geometry():
    remove = convert.prompt_msg_to_request(_prompt(action=Prompt.REMOVE, object_id="a", point_labels=[7]))
    assert remove == PromptRequest(action=PromptAction.REMOVE, object_id="a", stamp_ns=2_000_000_500)
    reset = convert.prompt_msg_to_request(_prompt(action=Prompt.RESET_ALL, point_labels=[]))
    assert reset.action == PromptAction.RESET_ALL and reset.points == ()


# --- results ------------------------------------------------------------------------------------

def _object(mask: np.ndarray, object_id: str = "obj_1") -> ObjectResult:
    ys, xs = np.nonzero(mask)
    roi = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)) if xs.size else (0, 0, 0, 0)
    semantics = ObjectSemantics(state=SemanticsState.READY, stamp_ns=5_000_000_007, frame_index=3,
                                texts={"explain": "A cup; used for drinking.", "caption": "A red cup."},
                                category="cup", definition="a small open container", explanation="A cup; used for drinking.",
                                caption="A red cup.", error="")
    return ObjectResult(object_id=object_id, score=0.75, object_score_logit=1.0986, tracking_state=TrackingState.TRACKED,
                        frames_lost=0, mask=mask, roi=roi, mask_area=int(mask.sum()),
                        centroid=(float(xs.mean()) if xs.size else 0.0, float(ys.mean()) if xs.size else 0.0),
                        semantics=semantics)


def _mask() -> np.ndarray:
    mask = np.zeros((12, 16), bool)
    mask[3:7, 5:11] = True
    mask[4, 5] = False
    mask[8, 9] = True
    return mask


HEADER = Header(stamp=Time(sec=5, nanosec=7), frame_id="cam")


def test_roi_mask_covers_only_the_roi():
    obj = _object(_mask())
    msg = convert.object_result_to_msg(obj, HEADER, "roi")
    x, y, w, h = obj.roi
    assert (msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height) == (x, y, w, h) == (5, 3, 6, 6)
    assert (msg.mask.width, msg.mask.height, msg.mask.encoding, msg.mask_full_frame) == (6, 6, "mono8", False)
    assert msg.mask.header.frame_id == "cam"
    crop = np.frombuffer(msg.mask.data, np.uint8).reshape(6, 6)
    assert set(np.unique(crop)) == {0, 255}
    # pixel (u, v) of the mask is pixel (x + u, y + v) of the image
    np.testing.assert_array_equal(crop > 0, obj.mask[y:y + h, x:x + w])
    np.testing.assert_array_equal(mask_from_msg(msg, 16, 12), obj.mask)


def test_full_mask_has_the_image_size():
    obj = _object(_mask())
    msg = convert.object_result_to_msg(obj, HEADER, "full")
    assert (msg.mask.width, msg.mask.height, msg.mask_full_frame) == (16, 12, True)
    np.testing.assert_array_equal(mask_from_msg(msg, 16, 12), obj.mask)


@pytest.mark.parametrize("encoding", ["roi", "full", "none"])
def test_empty_or_disabled_masks_are_0x0(encoding):
    empty = convert.object_result_to_msg(_object(np.zeros((12, 16), bool)), HEADER, encoding)
    assert (empty.mask.width, empty.mask.height, len(empty.mask.data), empty.mask_full_frame) == (0, 0, 0, False)
    assert empty.mask_area == 0
    if encoding == "none":
        disabled = convert.object_result_to_msg(_object(_mask()), HEADER, encoding)
        assert (disabled.mask.width, disabled.mask.height, disabled.mask_area) == (0, 0, 24)


def test_unknown_mask_encoding_is_refused():
    with pytest.raises(ValueError, match="mask_encoding must be one of"):
        convert.object_result_to_msg(_object(_mask()), HEADER, "rle")


def test_object_fields_and_semantics_are_carried():
    obj = _object(_mask(), "mug_7")
    msg = convert.object_result_to_msg(obj, HEADER)
    assert msg.object_id == "mug_7" and msg.score == pytest.approx(0.75)
    assert msg.tracking_state == PerceivedObject.TRACKING_TRACKED and msg.frames_lost == 0
    assert msg.mask_area == 24 and msg.centroid.x == pytest.approx(obj.centroid[0]) and msg.centroid.z == 0.0
    assert msg.semantics_state == PerceivedObject.SEMANTICS_READY
    assert (msg.semantics_stamp.sec, msg.semantics_stamp.nanosec) == (5, 7)
    assert (msg.category, msg.definition, msg.caption) == ("cup", "a small open container", "A red cup.")
    assert msg.explanation == "A cup; used for drinking."
    assert list(msg.task_names) == ["explain", "caption"]
    assert list(msg.task_texts) == ["A cup; used for drinking.", "A red cup."]


def test_geometry_is_carried_and_absent_geometry_is_flagged():
    obj = _object(_mask(), "mug_7")
    assert convert.object_result_to_msg(obj, HEADER).has_geometry is False
    obj.geometry = ObjectGeometry(frame_id="depth_optical", position=(0.1, -0.2, 0.75), size=(0.08, 0.1, 0.03),
                                  valid_fraction=0.5, points=12, grasp_pixel=(7, 4), grasp_point=(0.11, -0.19, 0.74),
                                  orientation=(0.5, -0.5, 0.5, 0.5), oriented_size=(0.12, 0.06, 0.01),
                                  grasp_width=0.0625, grasp_orientation=(0.0, 0.0, 0.6, 0.8))
    msg = deserialize_message(serialize_message(convert.object_result_to_msg(obj, HEADER)), PerceivedObject)
    assert msg.has_geometry and msg.geometry_frame_id == "depth_optical"
    assert (msg.position.x, msg.position.y, msg.position.z) == (0.1, -0.2, 0.75)
    assert (msg.size.x, msg.size.y, msg.size.z) == (0.08, 0.1, 0.03)
    assert msg.depth_valid_fraction == 0.5
    assert (msg.grasp_pixel.x, msg.grasp_pixel.y, msg.grasp_pixel.z) == (7.0, 4.0, 0.0)
    assert (msg.grasp_point.x, msg.grasp_point.y, msg.grasp_point.z) == (0.11, -0.19, 0.74)
    assert (msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w) == (0.5, -0.5, 0.5, 0.5)
    assert (msg.oriented_size.x, msg.oriented_size.y, msg.oriented_size.z) == (0.12, 0.06, 0.01)
    pose = msg.grasp_pose
    assert (pose.position.x, pose.position.y, pose.position.z) == (0.11, -0.19, 0.74)
    assert (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w) == (0.0, 0.0, 0.6, 0.8)
    assert msg.grasp_width == 0.0625
    empty = convert.object_result_to_msg(_object(_mask(), "mug_8"), HEADER)
    assert empty.grasp_pose.orientation.w == 1.0 and empty.orientation.w == 1.0  # identity, not a zero quaternion


def test_depth_image_messages_decode_to_metres():
    units = np.array([[0, 500, 1000], [1500, 2000, 65535]], "<u2")
    msg = Image(height=2, width=3, encoding="16UC1", step=8, data=np.pad(units.view(np.uint8), ((0, 0), (0, 2))).tobytes())
    assert np.allclose(convert.depth_msg_to_metres(msg, depth_scale=0.001), units * 0.001)
    floats = np.array([[0.5, np.nan, 2.0]], "<f4")
    metres = convert.depth_msg_to_metres(Image(height=1, width=3, encoding="32FC1", step=12, data=floats.tobytes()))
    assert metres[0, 0] == 0.5 and np.isnan(metres[0, 1])
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'"):
        convert.depth_msg_to_metres(Image(height=1, width=1, encoding="rgb8", step=3, data=b"abc"))


def test_frame_result_becomes_an_array_that_serializes():
    result = FrameResult(frame_index=4, stamp_ns=5_000_000_007, width=16, height=12,
                         objects=[_object(_mask(), "a"), _object(np.zeros((12, 16), bool), "b")], tracking_seconds=0.125)
    msg = convert.frame_result_to_msg(result, HEADER, "roi", frames_received=9, frames_dropped=4)
    again = deserialize_message(serialize_message(msg), PerceivedObjectArray)
    assert again.header.frame_id == "cam" and again.header.stamp.sec == 5
    assert (again.frame_index, again.frames_received, again.frames_dropped) == (4, 9, 4)
    assert (again.image_width, again.image_height, again.tracking_seconds) == (16, 12, 0.125)
    assert [o.object_id for o in again.objects] == ["a", "b"]
    np.testing.assert_array_equal(mask_from_msg(again.objects[0], 16, 12), _mask())


def test_generation_becomes_a_caption_result():
    done = GenerationResult(task="caption", text="A red cup.", token_ids=[5, 6, 7, 8], seconds=0.5, stamp_ns=3_000_000_001)
    result = convert.generation_to_caption_result(done)
    assert isinstance(result, Caption.Result)
    assert (result.success, result.text, result.num_tokens, result.tokens_per_second) == (True, "A red cup.", 4, 8.0)
    assert (result.semantics_stamp.sec, result.semantics_stamp.nanosec) == (3, 1)
    stopped = convert.generation_to_caption_result(GenerationResult("caption", "A", [5], 0.1, stopped=True))
    assert not stopped.success and stopped.message == "cancelled"
