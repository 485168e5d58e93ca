"""`pam-ros replay BAG --camera NAME=TOPIC ...`: a bag's cameras over one model, OUT/<camera>/ each, every
camera's outputs those of a single-camera replay of its topic; bad camera input refused before loading."""
from __future__ import annotations

import json
import shutil

import pytest
from test_replay import write_bag

from pam_ros.cli import main
from pam_ros.replay.cameras import camera_prompt_topics, parse_camera
from pam_ros.replay.outputs import without_timing

RUN = ["--tasks", "caption", "--max-new-tokens", "2", "--no-progress"]


@pytest.fixture(scope="module")
def two_camera_bag(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cameras")
    bag = write_bag(folder / "bag", "mcap", frames=3, topic="/head/image", extra_image_topic="/wrist/image")
    shared = folder / "shared.yaml"
    shared.write_text("prompts:\n  - {frame: 0, object_id: square, box: [6, 14, 24, 34]}\n")
    both = folder / "both.yaml"
    both.write_text(shared.read_text() + "  - {frame: 1, object_id: corner, box: [40, 2, 60, 14], camera: wrist}\n")
    return bag, shared, both


def objects_per_frame(frames_jsonl) -> list[list[str]]:
    return [[obj["object_id"] for obj in json.loads(line).get("objects", [])]
            for line in frames_jsonl.read_text().splitlines()]


def test_each_camera_replays_as_a_single_camera_replay_of_its_topic(two_camera_bag, tmp_path, capsys):
    bag, shared, both = two_camera_bag
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--out", str(out), "--camera", "head=/head/image",
                 "--camera", "wrist=/wrist/image", "--prompts", str(both), *RUN])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "once for 2 cameras: head, wrist" in captured.err and "== camera wrist" in captured.out
    assert objects_per_frame(out / "head" / "frames.jsonl") == [["square"]] * 3
    assert objects_per_frame(out / "wrist" / "frames.jsonl") == [["square"], ["square", "corner"],
                                                                 ["square", "corner"]], "its own prompt too"
    single = tmp_path / "single"
    assert main(["replay", str(bag), "--out", str(single), "--image-topic", "/head/image", "--prompts", str(shared),
                 *RUN]) == 0
    assert without_timing((out / "head" / "frames.jsonl").read_bytes()) == \
        without_timing((single / "frames.jsonl").read_bytes()), "the same lines as a single-camera replay"


@pytest.mark.parametrize("cameras, words", [
    (["head=/head/image", "head=/wrist/image"], "head named more than once"),
    (["head"], "NAME=IMAGE_TOPIC"),
    (["head=/nowhere"], "'/nowhere' is not in bag"),
    (["head/left=/head/image"], "not a camera name"),
])
def test_bad_cameras_are_refused_before_the_model_loads(two_camera_bag, tmp_path, capsys, cameras, words):
    bag, _, _ = two_camera_bag
    args = [item for camera in cameras for item in ("--camera", camera)]
    assert main(["replay", str(bag), "--out", str(tmp_path / "out"), *args, *RUN]) == 2
    err = capsys.readouterr().err
    assert words in err and "loading model" not in err
    assert not (tmp_path / "out").exists()


def test_a_prompt_for_an_unknown_camera_is_refused_with_the_cameras(two_camera_bag, tmp_path, capsys):
    bag, _, both = two_camera_bag
    assert main(["replay", str(bag), "--out", str(tmp_path / "out"), "--camera", "head=/head/image",
                 "--prompts", str(both), *RUN]) == 2
    assert "prompts file entry 1 is for camera 'wrist'; cameras: head" in capsys.readouterr().err
    assert main(["replay", str(bag), "--out", str(tmp_path / "single"), "--image-topic", "/head/image",
                 "--prompts", str(both), *RUN]) == 2
    err = capsys.readouterr().err
    assert "cameras: none: name them with --camera" in err and "loading model" not in err


def test_camera_options_and_prompt_topics():
    assert parse_camera("front=/a/image,/a/depth, /a/info") == parse_camera("front=/a/image,/a/depth,/a/info")
    front = parse_camera("front=/a/image,/a/depth")
    assert (front.name, front.image_topic, front.depth_topic, front.camera_info_topic) == \
        ("front", "/a/image", "/a/depth", "")
    topics = ["/robot/front/prompts", "/front/prompts", "/wrist/prompts", "/prompts", "/frontx/prompts"]
    assert camera_prompt_topics(topics, "front") == ["/robot/front/prompts", "/front/prompts"]


def test_a_fleet_replays_every_bags_cameras_into_bag_and_camera_folders(two_camera_bag, tmp_path, capsys):
    bag, _, both = two_camera_bag
    second = tmp_path / "second"
    second.mkdir()
    copy = second / "bag"
    shutil.copytree(bag, copy)
    one = tmp_path / "one"
    assert main(["replay", str(bag), "--out", str(one), "--camera", "head=/head/image",
                 "--camera", "wrist=/wrist/image", "--prompts", str(both), *RUN]) == 0
    out = tmp_path / "fleet"
    code = main(["replay", str(bag), str(copy), "--out", str(out), "--camera", "head=/head/image",
                 "--camera", "wrist=/wrist/image", "--prompts", str(both), *RUN])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    names = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert len(names) == 2, names
    for name in names:
        for camera in ("head", "wrist"):
            assert without_timing((out / name / camera / "frames.jsonl").read_bytes()) == \
                without_timing((one / camera / "frames.jsonl").read_bytes()), (name, camera)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bags_complete"] == 2
    row = summary["bags"][0]
    assert (row["frames_read"], row["objects"]) == (6, 3), "both cameras' frames; square twice, corner once"


def test_a_fleet_refuses_a_bag_without_a_cameras_topic(two_camera_bag, tmp_path, capsys):
    bag, _, _ = two_camera_bag
    other = tmp_path / "other"
    write_bag(other, "mcap", frames=2, topic="/head/image")
    out = tmp_path / "fleet"
    code = main(["replay", str(bag), str(other), "--out", str(out), "--camera", "head=/head/image",
                 "--camera", "wrist=/wrist/image", *RUN])
    captured = capsys.readouterr()
    assert code == 1, captured.err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["status"] for row in summary["bags"]] == ["complete", "failed"]
    assert "/wrist/image" in summary["bags"][1]["reason"]
