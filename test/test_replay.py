"""Bag replay: reading bags (MCAP, sqlite3, damaged), prompts, outputs; the end-to-end runs with the
tiny fixture model are at the bottom."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapRawWriter
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from pam_ros.engine.types import (
    FrameResult,
    ObjectResult,
    ObjectSemantics,
    PromptAction,
    PromptRequest,
    SemanticsState,
    TrackingState,
)
from pam_ros.errors import BagOpenError, BagReadError, PromptFileError, TopicNotFoundError
from pam_ros.messages.fields import header_fields, perceived_object_array_fields
from pam_ros.model.selection import ModelSpec
from pam_ros.replay.bag import BagInput
from pam_ros.replay.bag_writer import BagWriter
from pam_ros.replay.interfaces import build_message, find_msg_dir, pam_ros_typestore
from pam_ros.replay.prompts import FramePromptSchedule, ScheduledPrompt, load_prompt_file

W, H = 64, 48
STAMP0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000


# ----- helpers: small synthetic bags ----------------------------------------------------------------
def scene(t: int, width: int = W, height: int = H) -> np.ndarray:
    """A grey frame with a bright square moving right by 2 px per frame."""
    frame = np.full((height, width, 3), 60, np.uint8)
    x = 8 + 2 * t
    frame[16:32, x:x + 14] = (230, 60, 40)
    return frame


def image_fields(t: int, rgb: np.ndarray | None = None) -> dict:
    rgb = scene(t) if rgb is None else rgb
    height, width = rgb.shape[:2]
    return {"header": header_fields(STAMP0 + t * PERIOD, "cam"), "height": height, "width": width,
            "encoding": "rgb8", "is_bigendian": 0, "step": width * 3, "data": rgb.tobytes()}


def prompt_fields(stamp_ns: int, object_id: str, box=None, points=(), labels=(), tasks=(), action=0) -> dict:
    return {"header": header_fields(stamp_ns, "cam"), "action": action, "object_id": object_id,
            "points": [{"x": x, "y": y, "z": 0.0} for x, y in points], "point_labels": list(labels),
            "box": list(box) if box else [0.0] * 4, "has_box": box is not None, "tasks": list(tasks)}


def write_bag(path: Path, storage: str = "mcap", frames: int = 4, *, topic: str = "/cam",
              prompts: list[tuple[int, dict]] = (), extra_image_topic: str | None = None,
              garbage_frames: tuple[int, ...] = ()) -> Path:
    """Images on `topic` (log time = header stamp); prompts as (log_time_ns, fields); a /rosout-like
    string topic; `garbage_frames` get bytes that are not a valid Image message."""
    with BagWriter(path, storage) as bag:
        bag.add_topic(topic, "sensor_msgs/msg/Image")
        bag.add_topic("/chatter", "std_msgs/msg/String")
        if prompts:
            bag.add_topic("/prompts", "pam_ros/msg/Prompt")
        if extra_image_topic:
            bag.add_topic(extra_image_topic, "sensor_msgs/msg/Image")
        for log_time, fields in prompts:
            bag.write_fields("/prompts", log_time, fields)
        for t in range(frames):
            stamp = STAMP0 + t * PERIOD
            if t in garbage_frames:
                bag.write_raw(topic, stamp, b"\x00\x01\x00\x00garbage")
            else:
                bag.write_fields(topic, stamp, image_fields(t))
            if extra_image_topic:
                bag.write_fields(extra_image_topic, stamp, image_fields(t))
        bag.write_fields("/chatter", STAMP0, {"data": "hello"})
    return path


def write_chunked_mcap(path: Path, frames: int, chunk_size: int = 4096, finish: bool = True) -> Path:
    """A bare .mcap written by the `mcap` library (one frame per chunk), as another
    recorder would; images serialized with the same CDR as ROS. finish=False: stop after the last
    chunk, without the summary and footer (a recorder killed between two chunks)."""
    store = pam_ros_typestore()
    msgdef, _ = store.generate_msgdef("sensor_msgs/msg/Image", ros_version=2)
    with path.open("wb") as stream:
        writer = McapRawWriter(stream, chunk_size=chunk_size, compression=CompressionType.NONE)
        writer.start(profile="ros2", library="test")
        schema = writer.register_schema("sensor_msgs/msg/Image", "ros2msg", msgdef.encode())
        channel = writer.register_channel("/cam", "cdr", schema)
        for t in range(frames):
            message = build_message(store, "sensor_msgs/msg/Image", image_fields(t))
            data = store.serialize_cdr(message, "sensor_msgs/msg/Image")
            stamp = STAMP0 + t * PERIOD
            writer.add_message(channel, log_time=stamp, data=bytes(data), publish_time=stamp)
        if finish:
            writer.finish()
    return path


def read_all(bag: BagInput) -> list:
    return [(r.image_index, bag.decode_image(r)) for r in bag.records() if r.kind == "image"]


# ----- reading ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_reads_every_frame_in_order_from_mcap_and_sqlite3(tmp_path, storage):
    path = write_bag(tmp_path / "in", storage, frames=5)
    with BagInput(path) as bag:
        assert bag.image_topic == "/cam" and bag.image_count == 5 and bag.prompt_topics == []
        frames = read_all(bag)
    assert [index for index, _ in frames] == [0, 1, 2, 3, 4]
    for t, (_, image) in enumerate(frames):
        assert image.stamp_ns == STAMP0 + t * PERIOD and image.frame_id == "cam"
        assert np.array_equal(image.rgb, scene(t))


def test_reads_a_bare_storage_file_and_a_directory_without_metadata(tmp_path):
    path = write_bag(tmp_path / "in", "mcap", frames=3)
    with BagInput(path / "in.mcap") as bag:
        assert len(read_all(bag)) == 3
    (path / "metadata.yaml").unlink()  # a recorder killed before it wrote metadata.yaml
    with BagInput(path) as bag:
        assert len(read_all(bag)) == 3


def test_unusable_metadata_falls_back_to_the_storage_file(tmp_path):
    path = write_bag(tmp_path / "in", "mcap", frames=3)
    (path / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: [")
    with BagInput(path) as bag:
        assert "metadata.yaml is unusable" in bag.warning
        assert len(read_all(bag)) == 3


def test_missing_topic_error_lists_the_topics_that_exist(tmp_path):
    path = write_bag(tmp_path / "in", "mcap", frames=2)
    with pytest.raises(TopicNotFoundError) as err:
        BagInput(path, image_topic="/camera/image_raw")
    text = str(err.value)
    assert "'/camera/image_raw' is not in bag" in text
    assert "/cam  [sensor_msgs/msg/Image]  2 messages" in text and "/chatter  [std_msgs/msg/String]" in text


def test_several_image_topics_need_a_choice(tmp_path):
    path = write_bag(tmp_path / "in", "sqlite3", frames=2, extra_image_topic="/cam2")
    with pytest.raises(TopicNotFoundError, match="2 image topics; choose one with --image-topic") as err:
        BagInput(path)
    assert "/cam2" in str(err.value)
    with BagInput(path, image_topic="/cam2") as bag:
        assert bag.image_topic == "/cam2" and len(read_all(bag)) == 2


def test_a_non_image_topic_is_refused(tmp_path):
    path = write_bag(tmp_path / "in", "mcap", frames=1)
    with pytest.raises(TopicNotFoundError, match="has type std_msgs/msg/String, not an image type"):
        BagInput(path, image_topic="/chatter")


def test_unreadable_bags_are_clear_errors(tmp_path):
    with pytest.raises(BagOpenError, match="bag not found"):
        BagInput(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagOpenError, match="not a rosbag2 bag"):
        BagInput(tmp_path / "empty")
    path = write_bag(tmp_path / "in", "sqlite3", frames=3)
    db = path / "in.db3"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(BagOpenError, match="cannot open bag .*malformed"):
        BagInput(path)


def test_truncated_mcap_is_read_up_to_the_damage(tmp_path):
    path = write_chunked_mcap(tmp_path / "rec.mcap", frames=10)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with BagInput(path) as bag:
        assert "truncated" in bag.warning
        frames = []
        with pytest.raises(BagReadError, match="truncated or corrupted"):
            for record in bag.records():
                frames.append(bag.decode_image(record))
    assert 2 <= len(frames) < 10
    for t, image in enumerate(frames):
        assert np.array_equal(image.rgb, scene(t))


def test_corrupted_chunk_in_an_indexed_mcap_stops_reading_there(tmp_path):
    path = write_chunked_mcap(tmp_path / "rec.mcap", frames=10)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = b"\xff" * 200  # footer and index intact, one chunk's bytes damaged
    path.write_bytes(bytes(data))
    with BagInput(path) as bag:
        assert bag.warning == "" and bag.image_count == 10
        frames = []
        with pytest.raises(BagReadError, match="is damaged: Chunk checksum mismatch"):
            for record in bag.records():
                frames.append(bag.decode_image(record))
    assert 2 <= len(frames) < 10
    assert all(np.array_equal(image.rgb, scene(t)) for t, image in enumerate(frames))


def test_sqlite3_bag_damaged_after_it_opened_stops_reading_there(tmp_path):
    path = write_bag(tmp_path / "in", "sqlite3", frames=12)
    db = path / "in.db3"
    with BagInput(path) as bag:
        assert bag.warning == "" and bag.image_count == 12
        with db.open("r+b") as storage:  # e.g. a disk error, or another program rewriting it
            storage.truncate(db.stat().st_size // 2)
        frames = []
        with pytest.raises(BagReadError, match=r"bag .*in is damaged: database disk image is malformed"):
            for record in bag.records():
                frames.append(bag.decode_image(record))
    assert len(frames) < 12
    assert all(np.array_equal(image.rgb, scene(t)) for t, image in enumerate(frames))


def test_mcap_that_ends_cleanly_without_its_footer_is_read_to_the_end(tmp_path):
    """A recorder killed between two chunks: every record is whole, the summary and footer are missing."""
    path = write_chunked_mcap(tmp_path / "rec.mcap", frames=6, finish=False)
    with BagInput(path) as bag:
        assert "has no valid index/footer" in bag.warning and bag.image_count is None
        frames = []
        with pytest.raises(BagReadError, match="is incomplete: rec.mcap ends after a complete record but without its index/footer"):
            for record in bag.records():
                frames.append(bag.decode_image(record))
    assert len(frames) == 6, "every message before the end is read"
    assert all(np.array_equal(image.rgb, scene(t)) for t, image in enumerate(frames))


def test_undecodable_image_message_is_reported_per_frame(tmp_path):
    from pam_ros.messages.images import ImageDecodeError

    path = write_bag(tmp_path / "in", "mcap", frames=3, garbage_frames=(1,))
    with BagInput(path) as bag:
        records = [r for r in bag.records() if r.kind == "image"]
        assert [r.image_index for r in records] == [0, 1, 2]
        bag.decode_image(records[0])
        with pytest.raises(ImageDecodeError, match="not a valid sensor_msgs/msg/Image"):
            bag.decode_image(records[1])
        bag.decode_image(records[2])


def test_prompts_topic_is_read_in_bag_order(tmp_path):
    prompts = [(STAMP0 + PERIOD // 2, prompt_fields(STAMP0, "cube", box=(8, 16, 22, 32), tasks=["caption"])),
               (STAMP0 + 2 * PERIOD + 1, prompt_fields(0, "cube", points=[(20.0, 24.0)], labels=[1], action=1))]
    path = write_bag(tmp_path / "in", "sqlite3", frames=3, prompts=prompts)
    with BagInput(path) as bag:
        assert bag.prompt_topics == ["/prompts"]
        kinds = [(r.kind, r.image_index) for r in bag.records()]
        requests = [bag.decode_prompt(r) for r in bag.records() if r.kind == "prompt"]
    assert kinds == [("image", 0), ("prompt", -1), ("image", 1), ("image", 2), ("prompt", -1)]
    assert requests[0] == PromptRequest(action=PromptAction.ADD, object_id="cube", box=(8.0, 16.0, 22.0, 32.0),
                                        tasks=("caption",), stamp_ns=STAMP0)
    assert requests[1].action == PromptAction.REFINE and requests[1].points == ((20.0, 24.0),)
    assert requests[1].labels == (1,) and requests[1].box is None and requests[1].stamp_ns == 0


@pytest.mark.parametrize("fields, message", [
    (prompt_fields(0, "a", box=(5, 5, 1, 9)), "x1 < x2"),
    (prompt_fields(0, "a", points=[(1.0, 2.0)], labels=[1, 0]), "1 points but 2 point_labels"),
    (prompt_fields(0, "a", points=[(float("nan"), 2.0)], labels=[1]), "finite"),
    (prompt_fields(0, "a", points=[(1.0, 2.0)], labels=[3]), "must be 1 .object. or 0"),
    (prompt_fields(0, "", points=[(1.0, 2.0)], labels=[1], action=1), "REFINE needs the object_id"),
    (prompt_fields(0, "a"), "ADD needs points or a box"),
    (prompt_fields(0, "a", box=(1, 1, 5, 5), action=9), "unknown prompt action 9"),
])
def test_malformed_prompt_messages_are_clear_errors(tmp_path, fields, message):
    from pam_ros.messages.fields import PromptMessageError

    path = write_bag(tmp_path / "in", "mcap", frames=1, prompts=[(STAMP0 + 1, fields)])
    with BagInput(path) as bag:
        (record,) = [r for r in bag.records() if r.kind == "prompt"]
        with pytest.raises(PromptMessageError, match=message):
            bag.decode_prompt(record)


def test_reset_and_remove_prompts_read_only_their_fields(tmp_path):
    prompts = [(STAMP0 + 1, prompt_fields(0, "ignored", points=[(1.0, 2.0)], labels=[], action=3)),
               (STAMP0 + 2, prompt_fields(5, " cube ", points=[(1.0, 2.0)], labels=[], action=2))]
    path = write_bag(tmp_path / "in", "sqlite3", frames=1, prompts=prompts)
    with BagInput(path) as bag:
        reset, remove = [bag.decode_prompt(r) for r in bag.records() if r.kind == "prompt"]
    assert reset == PromptRequest(action=PromptAction.RESET_ALL, stamp_ns=0)
    assert remove == PromptRequest(action=PromptAction.REMOVE, object_id="cube", stamp_ns=5)


def test_msg_definitions_are_found_in_the_checkout_and_in_the_install_prefix(tmp_path):
    here = find_msg_dir()
    assert (here / "Prompt.msg").is_file()
    assert find_msg_dir([tmp_path, here]) == here
    from pam_ros.errors import InterfaceNotFoundError
    with pytest.raises(InterfaceNotFoundError, match="cannot find the pam_ros message definitions"):
        find_msg_dir([tmp_path])


# ----- prompts file and scheduling -------------------------------------------------------------------
def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    return path


def test_prompts_file_format(tmp_path):
    path = write_yaml(tmp_path, """
prompts:
  - frame: 0
    object_id: cube
    box: [8, 16, 22, 32]
    tasks: [explain, caption]
  - stamp_ns: 1700000000200000000
    object_id: cube
    action: refine
    points: [[20, 24], [2, 2]]
    labels: [1, 0]
  - frame: 3
    points: [[40, 10]]
  - frame: 4
    object_id: cube
    action: remove
""")
    prompts = load_prompt_file(path)
    assert [p.frame for p in prompts] == [0, None, 3, 4]
    assert prompts[0].request == PromptRequest(object_id="cube", box=(8.0, 16.0, 22.0, 32.0),
                                               tasks=("explain", "caption"))
    assert prompts[1].stamp_ns == 1_700_000_000_200_000_000
    assert prompts[1].request.action == PromptAction.REFINE and prompts[1].request.labels == (1, 0)
    assert prompts[2].request.labels == (1,) and prompts[2].request.object_id == ""
    assert prompts[3].request.action == PromptAction.REMOVE


@pytest.mark.parametrize("entry, message", [
    ("{frame: 0, stamp_ns: 5, box: [1, 1, 5, 5]}", "exactly one of 'frame'"),
    ("{box: [1, 1, 5, 5]}", "exactly one of 'frame'"),
    ("{frame: -1, box: [1, 1, 5, 5]}", "frame must be a non-negative integer"),
    ("{frame: 0, box: [1, 1, 5]}", "box must be"),
    ("{frame: 0, points: [[1, 2]], labels: [1, 0]}", "2 labels for 1 points"),
    ("{frame: 0, points: [[1, 2]], labels: [2]}", "labels must be a list of 1"),
    ("{frame: 0, action: refine, points: [[1, 2]]}", "refine needs an object_id"),
    ("{frame: 0, action: jump, box: [1, 1, 5, 5]}", "action 'jump' is not one of"),
    ("{frame: 0}", "add needs a box and/or points"),
    ("{frame: 0, box: [1, 1, 5, 5], colour: red}", r"unknown field\(s\) \['colour'\]"),
    ("{frame: 0, box: [1, .nan, 5, 5]}", "finite"),
])
def test_bad_prompt_entries_name_entry_and_field(tmp_path, entry, message):
    path = write_yaml(tmp_path, f"prompts:\n  - {{frame: 0, box: [0, 0, 4, 4]}}\n  - {entry}\n")
    with pytest.raises(PromptFileError, match=message) as err:
        load_prompt_file(path)
    assert "prompts[1]" in str(err.value)


def test_unreadable_prompts_files(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read prompts file"):
        load_prompt_file(tmp_path / "missing.yaml")
    with pytest.raises(PromptFileError, match="not valid YAML"):
        load_prompt_file(write_yaml(tmp_path, "prompts: [unclosed"))
    with pytest.raises(PromptFileError, match="'prompts:' list"):
        load_prompt_file(write_yaml(tmp_path, "objects: []"))


def test_frame_schedule_releases_file_prompts_at_their_image_in_file_order():
    first = ScheduledPrompt(PromptRequest(object_id="a", box=(0, 0, 4, 4)), "file 0", frame=2)
    second = ScheduledPrompt(PromptRequest(object_id="b", box=(0, 0, 4, 4)), "file 1", frame=1)
    schedule = FramePromptSchedule()
    schedule.add(first)
    schedule.add(second)
    assert schedule.due(0) == []
    assert [p.request.object_id for p in schedule.due(1)] == ["b"]
    late = ScheduledPrompt(PromptRequest(object_id="d", box=(0, 0, 4, 4)), "file 2", frame=99)
    schedule.add(late)
    assert [p.request.object_id for p in schedule.due(3)] == ["a"], "an index skipped over is due on the next image"
    assert schedule.due(4) == [] and schedule.remaining() == [late]


# ----- the objects message ----------------------------------------------------------------------------
def hand_built_result() -> FrameResult:
    mask = np.zeros((H, W), bool)
    mask[10:14, 20:25] = True
    mask[11, 20] = False
    semantics = ObjectSemantics(state=SemanticsState.READY, stamp_ns=STAMP0, frame_index=0,
                                texts={"explain": "a cube. It holds things.", "caption": "a red cube"},
                                category="cube", definition="a solid", explanation="It holds things.",
                                caption="a red cube")
    cube = ObjectResult(object_id="cube", score=0.75, object_score_logit=1.0986, tracking_state=TrackingState.TRACKED,
                        frames_lost=0, mask=mask, roi=(20, 10, 5, 4), mask_area=19, centroid=(22.0, 11.5),
                        semantics=semantics)
    lost = ObjectResult(object_id="gone", score=0.1, object_score_logit=-2.2, tracking_state=TrackingState.LOST,
                        frames_lost=2, mask=np.zeros((H, W), bool), roi=(0, 0, 0, 0), mask_area=0,
                        centroid=(0.0, 0.0))
    return FrameResult(frame_index=3, stamp_ns=STAMP0 + 3 * PERIOD, width=W, height=H, objects=[cube, lost],
                       tracking_seconds=0.25)


def test_objects_message_is_decodable_by_rosbags_and_mcap_ros2(tmp_path):
    result = hand_built_result()
    fields = perceived_object_array_fields(result, "cam", frames_received=4, frames_dropped=0)
    with BagWriter(tmp_path / "out", "mcap") as bag:
        bag.add_topic("/objects", "pam_ros/msg/PerceivedObjectArray")
        bag.write_fields("/objects", STAMP0, fields)

    # rosbags, with nothing but the definitions embedded in the bag
    with AnyReader([tmp_path / "out"], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        (conn, _, raw), = list(reader.messages())
        msg = reader.deserialize(raw, conn.msgtype)
    assert msg.header.stamp.sec == (STAMP0 + 3 * PERIOD) // 10**9 and msg.header.frame_id == "cam"
    assert msg.frame_index == 3 and msg.frames_received == 4 and msg.image_width == W
    cube, lost = msg.objects
    assert cube.object_id == "cube" and abs(cube.score - 0.75) < 1e-6 and cube.tracking_state == 2
    assert (cube.roi.x_offset, cube.roi.y_offset, cube.roi.width, cube.roi.height) == (20, 10, 5, 4)
    mask = np.asarray(cube.mask.data).reshape(cube.mask.height, cube.mask.width)
    assert np.array_equal(mask == 255, result.objects[0].mask[10:14, 20:25])
    assert cube.mask.encoding == "mono8" and not cube.mask_full_frame
    assert list(cube.task_names) == ["explain", "caption"] and cube.category == "cube"
    assert lost.tracking_state == 3 and lost.frames_lost == 2 and lost.mask.width == 0

    # mcap-ros2-support, a different decoder, on the same file
    with (tmp_path / "out" / "out.mcap").open("rb") as stream:
        decoded = [m for _, _, _, m in make_reader(stream, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]
    other = decoded[0]
    assert other.objects[0].object_id == "cube" and other.objects[0].caption == "a red cube"
    assert bytes(other.objects[0].mask.data) == bytes(np.asarray(cube.mask.data))
    assert other.objects[1].semantics_state == 0


def test_mask_encodings_full_and_none():
    result = hand_built_result()
    full = perceived_object_array_fields(result, "cam", frames_received=1, frames_dropped=0, mask_encoding="full")
    image = full["objects"][0]["mask"]
    assert full["objects"][0]["mask_full_frame"] and (image["width"], image["height"]) == (W, H)
    pixels = np.frombuffer(image["data"], np.uint8).reshape(H, W)
    assert np.array_equal(pixels == 255, result.objects[0].mask)
    none = perceived_object_array_fields(result, "cam", frames_received=1, frames_dropped=0, mask_encoding="none")
    assert none["objects"][0]["mask"]["width"] == 0 and none["objects"][0]["mask"]["data"] == b""
    with pytest.raises(ValueError, match="mask_encoding"):
        perceived_object_array_fields(result, "cam", frames_received=1, frames_dropped=0, mask_encoding="png")


def test_frames_line_format():
    from pam_ros.model.masks import rle_to_mask
    from pam_ros.replay.outputs import frame_line

    result = hand_built_result()
    line = json.loads(frame_line(3, result.stamp_ns, result))
    assert list(line)[:3] == ["frame", "stamp_ns", "objects"]
    cube = line["objects"][0]
    assert cube["object_id"] == "cube" and cube["score"] == 0.75 and cube["roi"] == [20, 10, 5, 4]
    assert cube["semantics"] == {"explain": "a cube. It holds things.", "caption": "a red cube"}
    assert np.array_equal(rle_to_mask(cube["mask_rle"]), result.objects[0].mask)
    skipped = json.loads(frame_line(4, 0, None, skipped="undecodable: bad"))
    assert skipped == {"frame": 4, "stamp_ns": 0, "objects": [], "skipped": "undecodable: bad"}


def fill_rclpy(message, fields: dict):
    """Set an rclpy message's fields from a message_fields dict (nested dicts -> nested messages)."""
    import importlib

    types = message.get_fields_and_field_types()
    for name, value in fields.items():
        if isinstance(value, dict):
            fill_rclpy(getattr(message, name), value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            element = types[name][types[name].index("<") + 1:types[name].rindex(">")]
            package, type_name = element.split("/")
            cls = getattr(importlib.import_module(f"{package}.msg"), type_name)
            setattr(message, name, [fill_rclpy(cls(), item) for item in value])
        else:
            setattr(message, name, value)
    return message


def test_field_dicts_give_rclpy_and_rosbags_messages_with_equal_values():
    """The dict layout is the generated interface's: an rclpy message filled from it serializes
    (rclpy/Fast CDR) to a message that rosbags decodes and re-serializes to the replay's exact bytes."""
    from rclpy.serialization import serialize_message

    from pam_ros.msg import PerceivedObjectArray

    fields = perceived_object_array_fields(hand_built_result(), "cam", frames_received=4, frames_dropped=0)
    from_rclpy = serialize_message(fill_rclpy(PerceivedObjectArray(), fields))
    store = pam_ros_typestore()
    msgtype = "pam_ros/msg/PerceivedObjectArray"
    from_replay = bytes(store.serialize_cdr(build_message(store, msgtype, fields), msgtype))
    # Fast CDR leaves alignment padding uninitialised, so compare after a decode/encode round trip.
    assert bytes(store.serialize_cdr(store.deserialize_cdr(from_rclpy, msgtype), msgtype)) == from_replay


# ----- command line, before any model is loaded -------------------------------------------------------
def test_cli_missing_topic_fails_fast_and_lists_topics(tmp_path, capsys):
    from pam_ros.cli import main

    path = write_bag(tmp_path / "in", "mcap", frames=1)
    code = main(["replay", str(path), "--out", str(tmp_path / "out"), "--image-topic", "/camera/image_raw"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'/camera/image_raw' is not in bag" in err and "/cam  [sensor_msgs/msg/Image]" in err
    assert not (tmp_path / "out").exists(), "nothing is written when the inputs are wrong"


def test_cli_refuses_to_overwrite_earlier_outputs(tmp_path, capsys):
    from pam_ros.cli import main

    path = write_bag(tmp_path / "in", "mcap", frames=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "frames.jsonl").write_text("{}\n")
    assert main(["replay", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "already holds replay outputs (frames.jsonl); pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "frames.jsonl").read_text() == "{}\n"


def test_cli_bad_prompts_file_fails_fast(tmp_path, capsys):
    from pam_ros.cli import main

    path = write_bag(tmp_path / "in", "mcap", frames=1)
    prompts = write_yaml(tmp_path, "prompts:\n  - {frame: 0}\n")
    assert main(["replay", str(path), "--out", str(tmp_path / "out"), "--prompts", str(prompts)]) == 2
    assert "prompts[0]: action add needs a box and/or points" in capsys.readouterr().err


# ----- end to end with the tiny fixture model -----------------------------------------------------------
CUBE_BOX = (6.0, 14.0, 24.0, 34.0)  # around the square of scene(0)


@pytest.fixture(scope="module")
def tiny_pipelines():
    """A factory of fresh pipelines (new tracking state each) sharing one loaded tiny model."""
    from pam_ros.engine import pipeline as engine

    config = engine.PipelineConfig(new_object_tasks=("caption",), max_new_tokens=6, semantics_mode="sync")
    # A 256-pixel SAM 2 input keeps CPU time low (same code path as the official 1024).
    loaded = engine.PerceptionPipeline.load(ModelSpec(name="tiny", image_size=256), config)
    made = [loaded]

    def make():
        made.append(engine.PerceptionPipeline(loaded.model, config))
        return made[-1]

    yield make
    for pipeline in reversed(made):
        pipeline.close()


def replay(tiny_pipelines, bag: Path, out: Path, **kwargs):
    from pam_ros.replay.runner import run_replay

    return run_replay(bag, out, tiny_pipelines(), progress=False, **kwargs)


def jsonl(out: Path) -> list[dict]:
    """OUT/frames.jsonl's lines without the per-frame processing times (wall-clock: they differ run to run)."""
    from pam_ros.replay.outputs import without_timing

    return [json.loads(line) for line in without_timing((out / "frames.jsonl").read_bytes()).splitlines()]


def cube_prompt_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path, f"prompts:\n  - frame: 1\n    object_id: cube\n    box: {list(CUBE_BOX)}\n")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_writes_every_frame_and_a_decodable_bag(tiny_pipelines, tmp_path, storage):
    from pam_ros.model.masks import rle_to_mask

    bag = write_bag(tmp_path / "in", storage, frames=4)
    out = tmp_path / "out"
    report = replay(tiny_pipelines, bag, out, prompt_file=cube_prompt_file(tmp_path))
    assert report.complete and report.frames_read == report.frames_processed == 4 and report.frames_skipped == 0
    assert report.prompts_accepted == 1 and not report.prompts_refused

    lines = jsonl(out)
    assert [line["frame"] for line in lines] == [0, 1, 2, 3]
    assert [line["stamp_ns"] for line in lines] == [STAMP0 + t * PERIOD for t in range(4)]
    assert lines[0]["objects"] == [], "the prompt names frame 1"
    # Each line holds what the engine itself computes for that frame (same prompt on a fresh pipeline).
    direct = tiny_pipelines()
    direct.submit_prompt(PromptRequest(object_id="cube", box=CUBE_BOX, stamp_ns=STAMP0 + PERIOD))
    expected = [direct.process(scene(t), STAMP0 + t * PERIOD) for t in range(4)]
    assert expected[0].objects == []
    for line, frame in zip(lines[1:], expected[1:]):
        (cube,), (want,) = line["objects"], frame.objects
        assert cube["object_id"] == want.object_id == "cube"
        assert cube["score"] == pytest.approx(want.score, abs=1e-6)
        assert np.array_equal(rle_to_mask(cube["mask_rle"]), want.mask) and want.mask.any()
        assert cube["roi"] == list(want.roi) and cube["tracking_state"] == want.tracking_state.name.lower()
    masks = [rle_to_mask(line["objects"][0]["mask_rle"]) for line in lines[1:]]
    assert not np.array_equal(masks[0], masks[-1]), "the square moves 4 px: the masks of frames 1 and 3 differ"
    assert lines[1]["prompt_outcomes"][0]["accepted"] is True

    # rosbags, with only the definitions the output bag embeds
    with AnyReader([out / "bag"], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        counts = {topic: info.msgcount for topic, info in reader.topics.items()}
        assert counts == {"/cam": 4, "/objects": 4, "/overlay": 4}
        objects = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                   if c.topic == "/objects"]
        images = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/cam"]
    assert [o.header.stamp.nanosec for o in objects] == [i.header.stamp.nanosec for i in images]
    assert [len(o.objects) for o in objects] == [0, 1, 1, 1]
    roi = objects[2].objects[0].roi
    assert [roi.x_offset, roi.y_offset, roi.width, roi.height] == lines[2]["objects"][0]["roi"]
    assert np.array_equal(np.asarray(images[3].data).reshape(H, W, 3), scene(3)), "input images kept"

    # mcap-ros2-support
    with (out / "bag" / "bag.mcap").open("rb") as stream:
        decoded = [(channel.topic, message) for _, channel, _, message in
                   make_reader(stream, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]
    assert [m.objects[0].object_id for t, m in decoded if t == "/objects" and m.objects] == ["cube"] * 3
    overlay = next(m for t, m in decoded if t == "/overlay")
    assert (overlay.width, overlay.height, overlay.encoding) == (W, H, "rgb8")


def test_replay_is_deterministic(tiny_pipelines, tmp_path):
    bag = write_bag(tmp_path / "in", "mcap", frames=3)
    prompts = cube_prompt_file(tmp_path)
    replay(tiny_pipelines, bag, tmp_path / "a", prompt_file=prompts)
    replay(tiny_pipelines, bag, tmp_path / "b", prompt_file=prompts)
    from pam_ros.replay.outputs import TIMING_KEY, without_timing

    first = (tmp_path / "a" / "frames.jsonl").read_bytes()
    assert without_timing(first) == without_timing((tmp_path / "b" / "frames.jsonl").read_bytes())
    assert first.count(b"\n") == 3
    assert all(json.loads(line)[TIMING_KEY] > 0 for line in first.splitlines()), "each frame's processing time"


def test_prompts_from_the_bag_topic_act_like_the_same_prompts_from_a_file(tiny_pipelines, tmp_path):
    stamp1 = STAMP0 + PERIOD
    prompts = [(stamp1 - 10, prompt_fields(stamp1, "cube", box=CUBE_BOX, tasks=["caption"]))]
    with_topic = write_bag(tmp_path / "topic", "mcap", frames=3, prompts=prompts)
    report = replay(tiny_pipelines, with_topic, tmp_path / "from_topic")
    assert report.prompt_topics == ["/prompts"] and report.prompts_accepted == 1
    plain = write_bag(tmp_path / "plain", "mcap", frames=3)
    replay(tiny_pipelines, plain, tmp_path / "from_file", prompt_file=cube_prompt_file(tmp_path))
    from_topic, from_file = jsonl(tmp_path / "from_topic"), jsonl(tmp_path / "from_file")
    assert from_topic[1]["objects"] and from_topic == from_file


def test_no_frame_is_lost_undecodable_ones_are_counted(tiny_pipelines, tmp_path):
    bag = write_bag(tmp_path / "in", "sqlite3", frames=4, garbage_frames=(2,))
    report = replay(tiny_pipelines, bag, tmp_path / "out", prompt_file=cube_prompt_file(tmp_path))
    assert report.frames_read == 4 and report.frames_processed == 3 and report.skipped == {"undecodable": 1}
    lines = jsonl(tmp_path / "out")
    assert [line["frame"] for line in lines] == [0, 1, 2, 3]
    assert lines[2]["objects"] == [] and lines[2]["skipped"].startswith("undecodable: not a valid")
    assert lines[3]["objects"][0]["object_id"] == "cube"
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "frames skipped    1 (undecodable: 1)" in summary and "frame 2: undecodable" in summary


def test_truncated_bag_keeps_and_reports_partial_results(tiny_pipelines, tmp_path):
    path = write_chunked_mcap(tmp_path / "rec.mcap", frames=6)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.5)])
    out = tmp_path / "out"
    with pytest.raises(BagReadError, match="truncated or corrupted") as err:
        replay(tiny_pipelines, path, out, prompt_file=cube_prompt_file(tmp_path))
    report = err.value.report
    assert not report.complete and "truncated" in report.error
    assert 2 <= report.frames_read < 6 and report.frames_processed == report.frames_read
    assert len(jsonl(out)) == report.frames_read
    with AnyReader([out / "bag"]) as reader:  # closed properly: index and metadata.yaml are there
        assert reader.topics["/objects"].msgcount == report.frames_read
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["frames_read"] == report.frames_read
    assert "INCOMPLETE" in (out / "summary.txt").read_text()


def test_sqlite3_bag_damaged_during_the_replay_keeps_and_reports_partial_results(tiny_pipelines, tmp_path):
    from pam_ros.replay.runner import run_replay

    bag = write_bag(tmp_path / "in", "sqlite3", frames=8)
    pipeline = tiny_pipelines()
    process = pipeline.process

    def process_then_damage(image, stamp_ns, **options):  # the bag file breaks while the replay runs
        result = process(image, stamp_ns, **options)
        if pipeline.frames_processed == 1:
            with (bag / "in.db3").open("r+b") as storage:
                storage.truncate((bag / "in.db3").stat().st_size // 2)
        return result

    pipeline.process = process_then_damage
    out = tmp_path / "out"
    with pytest.raises(BagReadError, match="is damaged: database disk image is malformed") as err:
        run_replay(bag, out, pipeline, progress=False, prompt_file=cube_prompt_file(tmp_path))
    report = err.value.report
    assert not report.complete and "database disk image is malformed" in report.error
    assert 1 <= report.frames_read < 8 and report.frames_processed == report.frames_read
    assert [line["frame"] for line in jsonl(out)] == list(range(report.frames_read))
    with AnyReader([out / "bag"]) as reader:
        assert reader.topics["/objects"].msgcount == report.frames_read
    assert json.loads((out / "summary.json").read_text())["complete"] is False


# ----- the demo -------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def test_shipped_demo_bag_matches_its_generator_and_prompts(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_bag", REPO / "scripts" / "make_demo_bag.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.write_demo_bag(tmp_path / "fresh", frames=24)

    def contents(path):
        with BagInput(path) as bag:
            records = list(bag.records())
            return ([bag.decode_image(r).rgb for r in records if r.kind == "image"],
                    [bag.decode_prompt(r) for r in records if r.kind == "prompt"])

    shipped_images, shipped_prompts = contents(REPO / "demo" / "demo_bag")
    fresh_images, fresh_prompts = contents(tmp_path / "fresh")
    assert len(shipped_images) == 24 and shipped_images[0].shape == (240, 320, 3)
    assert all(np.array_equal(a, b) for a, b in zip(shipped_images, fresh_images))
    assert shipped_prompts == fresh_prompts and shipped_prompts[0].object_id == "ring"
    assert sum(p.stat().st_size for p in (REPO / "demo" / "demo_bag").iterdir()) < 3_000_000

    file_prompts = load_prompt_file(REPO / "demo" / "prompts.yaml")
    for prompt in file_prompts:  # every click lands on the object it names
        frame = shipped_images[prompt.frame]
        for x, y in prompt.request.points[:1]:
            assert tuple(frame[int(y), int(x)]) != tuple(shipped_images[0][5, 5]), prompt.source


def test_demo_command_writes_overlays_gif_and_says_the_words_are_meaningless(tmp_path, capsys):
    from PIL import Image

    from pam_ros.cli import main

    bag = write_bag(tmp_path / "in", "mcap", frames=2)
    out = tmp_path / "demo_out"
    code = main(["demo", "--out", str(out), "--bag", str(bag), "--prompts", str(cube_prompt_file(tmp_path)),
                 "--tasks", "caption", "--max-new-tokens", "4", "--image-size", "256", "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["frame_00000.png", "frame_00001.png"]
    with Image.open(out / "demo.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (W, H)
    assert (out / "bag" / "metadata.yaml").exists() and len(jsonl(out)) == 2
    for text in (stdout, (out / "summary.txt").read_text()):
        assert "RANDOM weights" in text and "meaningless" in text
        assert "pam-ros download PAM-1.5B" in text and "pam-ros download sam2.1-hiera-large" in text
        assert "pam-ros demo --model PAM-1.5B" in text


def test_outputs_of_an_earlier_run_are_replaced_only_when_asked(tmp_path):
    from pam_ros.errors import OutputExistsError
    from pam_ros.replay.outputs import ReplayOutputs

    bag_path = write_bag(tmp_path / "in", "mcap", frames=1)
    out = tmp_path / "out"
    for attempt in range(2):  # the second run replaces the first one's outputs
        outputs = ReplayOutputs(out, overwrite=True)
        with BagInput(bag_path) as bag:
            outputs.open(bag)
            for record in bag.records():
                outputs.copy_input(record)
                outputs.write_skipped(record, 0, f"run {attempt}")
        outputs.close()
    assert jsonl(out) == [{"frame": 0, "stamp_ns": 0, "objects": [], "skipped": "run 1"}]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        ReplayOutputs(out)
    ReplayOutputs(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine", "only replay outputs are removed"
