"""Replay with aligned depth (--depth-topic): geometry in frames.jsonl and /objects, whatever the storage order.

Synthetic RGB-D bags: the colour scene of test_replay.py, a 16UC1 depth image per frame (the square at
0.6 m before a wall at 1.5 m) and its CameraInfo. Geometry is checked against the definition
(engine/geometry.py) applied to the mask the replay wrote for that frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from test_replay import (
    PERIOD,
    STAMP0,
    H,
    W,
    cube_prompt_file,
    image_fields,
    jsonl,
    scene,
)

from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, DepthSettings, object_geometry
from pam_ros.errors import TopicNotFoundError
from pam_ros.messages.fields import header_fields
from pam_ros.model.masks import rle_to_mask
from pam_ros.replay.bag import BagInput
from pam_ros.replay.bag_writer import BagWriter


@pytest.fixture(scope="module")
def pipelines():
    """Fresh pipelines (new tracking state each) sharing one tiny model at a 256-pixel SAM 2 input."""
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
    from pam_ros.model.selection import ModelSpec

    config = PipelineConfig(new_object_tasks=(), max_new_tokens=2, semantics_mode="sync")
    made = [PerceptionPipeline.load(ModelSpec(name="tiny", image_size=256), config)]

    def make():
        made.append(PerceptionPipeline(made[0].model, PipelineConfig(**vars(config))))
        return made[-1]

    yield make
    for pipeline in reversed(made):
        pipeline.close()


def replay(pipelines, bag: Path, out: Path, **kwargs):
    from pam_ros.replay.runner import run_replay

    return run_replay(bag, out, pipelines(), progress=False, **kwargs)


K = [60.0, 0.0, 31.5, 0.0, 60.0, 23.5, 0.0, 0.0, 1.0]
DEPTH_FRAME = "cam_depth"
FRAMES = 5


def depth_metres(t: int, size=(W, H)) -> np.ndarray:
    metres = np.full((size[1], size[0]), 1.5, np.float32)
    red = (scene(t)[..., 0] > 200)
    if size == (W, H):
        metres[red] = 0.6
    return metres


def depth_fields(t: int, size=(W, H)) -> dict:
    millimetres = np.round(depth_metres(t, size) * 1000).astype("<u2")
    return {"header": header_fields(STAMP0 + t * PERIOD, DEPTH_FRAME), "height": size[1], "width": size[0],
            "encoding": "16UC1", "is_bigendian": 0, "step": size[0] * 2, "data": millimetres.tobytes()}


def write_rgbd_bag(path: Path, *, depth_after: tuple[int, ...] = (), missing: tuple[int, ...] = (),
                   wrong_size: tuple[int, ...] = (), info_topics: tuple[str, ...] = ("/cam/info",)) -> Path:
    """Frame t: CameraInfo, then depth before the image (log time stamp - 1) or after it (stamp + 1)."""
    with BagWriter(path, "mcap") as bag:
        bag.add_topic("/cam", "sensor_msgs/msg/Image")
        bag.add_topic("/depth", "sensor_msgs/msg/Image")
        for topic in info_topics:
            bag.add_topic(topic, "sensor_msgs/msg/CameraInfo")
        for t in range(FRAMES):
            stamp = STAMP0 + t * PERIOD
            for topic in info_topics:
                bag.write_fields(topic, stamp - 2, {"header": header_fields(stamp, DEPTH_FRAME), "width": W,
                                                    "height": H, "k": K})
            if t not in missing:
                size = (W // 2, H // 2) if t in wrong_size else (W, H)
                bag.write_fields("/depth", stamp + 1 if t in depth_after else stamp - 1, depth_fields(t, size))
            bag.write_fields("/cam", stamp, image_fields(t))
    return path


def expected_geometry(t: int, mask: np.ndarray):
    depth = DepthImage(depth_metres(t), CameraIntrinsics.from_camera_info(K), DEPTH_FRAME, 0)
    return object_geometry(depth, mask, DepthSettings())


def test_geometry_for_depth_stored_before_or_after_its_image_and_none_without(pipelines, tmp_path):
    bag = write_rgbd_bag(tmp_path / "in", depth_after=(2,), missing=(3,))
    out = tmp_path / "out"
    report = replay(pipelines, bag, out, prompt_file=cube_prompt_file(tmp_path), depth_topic="/depth")
    assert report.complete and report.frames_processed == FRAMES
    assert report.camera_info_topic == "/cam/info"  # the only CameraInfo topic
    assert (report.frames_with_depth, report.frames_without_depth) == (FRAMES - 1, 1)
    lines = jsonl(out)
    assert [line["frame"] for line in lines] == list(range(FRAMES)), "frames.jsonl stays in bag order"
    assert lines[0]["objects"] == []
    for t in (1, 2, 4):
        (cube,) = lines[t]["objects"]
        expected = expected_geometry(t, rle_to_mask(cube["mask_rle"]))
        assert expected is not None and cube["geometry"]["frame_id"] == DEPTH_FRAME
        assert cube["geometry"]["position"] == pytest.approx(list(expected.position))
        assert cube["geometry"]["grasp_pixel"] == list(expected.grasp_pixel)
        assert cube["geometry"]["points"] == expected.points
    assert lines[3]["objects"][0]["geometry"] is None
    summary = (out / "summary.txt").read_text()
    assert "/depth + /cam/info: 4 frames with geometry, 1 without depth" in summary

    # the output bag's /objects carry the same values
    with AnyReader([out / "bag"], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        objects = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/objects"]
    cube_msg = objects[4].objects[0]
    geometry = lines[4]["objects"][0]["geometry"]
    assert cube_msg.has_geometry and cube_msg.geometry_frame_id == DEPTH_FRAME
    assert [cube_msg.position.x, cube_msg.position.y, cube_msg.position.z] == pytest.approx(geometry["position"])
    assert [cube_msg.size.x, cube_msg.size.y, cube_msg.size.z] == pytest.approx(geometry["size"])
    assert [cube_msg.grasp_pixel.x, cube_msg.grasp_pixel.y] == geometry["grasp_pixel"]
    assert not objects[3].objects[0].has_geometry


def test_wrong_size_depth_is_refused_naming_both_sizes(pipelines, tmp_path):
    bag = write_rgbd_bag(tmp_path / "in", wrong_size=(2,))
    out = tmp_path / "out"
    report = replay(pipelines, bag, out, prompt_file=cube_prompt_file(tmp_path), depth_topic="/depth")
    assert report.complete and (report.frames_with_depth, report.frames_without_depth) == (FRAMES - 1, 1)
    (problem,) = report.depth_problems
    assert "32x24" in problem and "64x48" in problem
    assert jsonl(out)[2]["objects"][0]["geometry"] is None


def test_camera_info_topic_must_be_chosen_when_there_are_several(tmp_path):
    bag = write_rgbd_bag(tmp_path / "in", info_topics=("/a/info", "/b/info"))
    with pytest.raises(TopicNotFoundError, match="2 CameraInfo topics.*--camera-info-topic") as raised:
        BagInput(bag, "/cam", depth_topic="/depth")
    assert "/a/info" in str(raised.value) and "/b/info" in str(raised.value)
    with BagInput(bag, "/cam", depth_topic="/depth", camera_info_topic="/b/info") as chosen:
        assert chosen.camera_info_topic == "/b/info"
    none = write_rgbd_bag(tmp_path / "none", info_topics=())
    with pytest.raises(TopicNotFoundError, match="no CameraInfo topic"):
        BagInput(none, "/cam", depth_topic="/depth")
    with pytest.raises(TopicNotFoundError, match="depth topic '/nope' is not in the bag"):
        BagInput(bag, "/cam", depth_topic="/nope", camera_info_topic="/a/info")


def test_cli_replay_with_depth_topic(tmp_path, capsys):
    from pam_ros.cli import main

    bag = write_rgbd_bag(tmp_path / "in", missing=(0,))
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--out", str(out), "--image-topic", "/cam", "--depth-topic", "/depth",
                 "--prompts", str(cube_prompt_file(tmp_path)), "--tasks", "caption", "--max-new-tokens", "2",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "/depth + /cam/info: 4 frames with geometry, 1 without depth" in capsys.readouterr().out
    assert jsonl(out)[1]["objects"][0]["geometry"]["frame_id"] == DEPTH_FRAME
    bad = main(["replay", str(bag), "--out", str(tmp_path / "o2"), "--image-topic", "/cam",
                "--depth-topic", "/cam/info"])
    assert bad == 2 and "must be a sensor_msgs/msg/Image" in capsys.readouterr().err

