"""Bag replay as a regression test, end to end with the tiny fixture model: the same bag replayed twice
compares equal (exit 0), a prompt box moved by 30 px or another --image-size is a regression naming the
object and its frames (exit 1, also through `replay --baseline`), the report shows it, and a fleet pair
with one regressed bag names that bag only.

One loaded model (256-pixel SAM 2 input) replays the baselines; the `replay --baseline` runs are the
command itself. A 256 x 192 bag of 4 frames with two objects keeps each replay to seconds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_compare import check_report, last_lines

from pam_ros.cli import main
from pam_ros.messages.fields import header_fields
from pam_ros.replay.bag_writer import BagWriter

W, H, FRAMES = 256, 192, 4
STAMP0, PERIOD = 1_700_000_000_000_000_000, 100_000_000
TASKS, TOKENS = ("caption",), 3
CUBE_BOX = [36, 56, 104, 124]
MOVED_BOX = [66, 56, 134, 124]  # 30 px to the right
MODEL = ["--model", "tiny", "--image-size", "256", "--tasks", *TASKS, "--max-new-tokens", str(TOKENS), "--no-progress"]


def scene(t: int) -> np.ndarray:
    """A red cube moving right 4 px per frame and a green block standing still, on grey."""
    frame = np.full((H, W, 3), 60, np.uint8)
    frame[60:120, 40 + 4 * t:100 + 4 * t] = (230, 60, 40)
    frame[130:170, 180:230] = (40, 200, 90)
    return frame


def write_bag(path: Path) -> Path:
    with BagWriter(path, "mcap") as bag:
        bag.add_topic("/cam", "sensor_msgs/msg/Image")
        for t in range(FRAMES):
            stamp = STAMP0 + t * PERIOD
            bag.write_fields("/cam", stamp, {"header": header_fields(stamp, "cam"), "height": H, "width": W,
                                             "encoding": "rgb8", "is_bigendian": 0, "step": W * 3,
                                             "data": scene(t).tobytes()})
    return path


def prompts_yaml(path: Path, cube_box: list[int]) -> Path:
    path.write_text(f"prompts:\n  - frame: 0\n    object_id: cube\n    box: {cube_box}\n"
                    f"  - frame: 1\n    object_id: block\n    box: [176, 126, 234, 174]\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The bag, its prompt files, and two replays with one loaded model: `base` (the prompts as given)
    and `moved` (the cube's box 30 px to the right)."""
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
    from pam_ros.model.selection import ModelSpec
    from pam_ros.replay.runner import run_replay

    root = tmp_path_factory.mktemp("compare")
    paths = {"bag": write_bag(root / "kitchen"), "prompts": prompts_yaml(root / "prompts.yaml", CUBE_BOX),
             "moved_prompts": prompts_yaml(root / "moved.yaml", MOVED_BOX)}
    config = PipelineConfig(new_object_tasks=TASKS, max_new_tokens=TOKENS, semantics_mode="sync")
    model = ModelSpec(name="tiny", image_size=256).load()
    for name, prompts in (("base", paths["prompts"]), ("moved", paths["moved_prompts"])):
        pipeline = PerceptionPipeline(model, config)
        try:
            run_replay(paths["bag"], root / name, pipeline, prompt_file=prompts, progress=False)
        finally:
            pipeline.close()
        paths[name] = root / name
    return paths


def test_same_bag_replayed_twice_is_no_regression(runs, tmp_path, capsys):
    figures = tmp_path / "figures.json"
    code = main(["replay", str(runs["bag"]), "--out", str(tmp_path / "again"), "--prompts", str(runs["prompts"]),
                 *MODEL, "--baseline", str(runs["base"]), "--json", str(figures)])
    out = capsys.readouterr().out
    assert code == 0
    assert last_lines(out, 1) == [f"no regression (1 bag, 2 objects, {FRAMES} frames compared)"]
    (bag,) = json.loads(figures.read_text())["bags"]
    assert bag["frames"]["matched"] == FRAMES and bag["image_size"] == [W, H]
    assert {obj["object_id"]: (obj["iou"]["min"], obj["iou"]["frames"]) for obj in bag["objects"]} == {
        "cube": (1.0, FRAMES), "block": (1.0, FRAMES - 1)}
    assert bag["semantics"] == {"caption": {"frames_compared": 2 * FRAMES - 1, "frames_differing": 0,
                                            "identical_share": 1.0}}
    assert bag["timing"]["candidate"]["frames"] == FRAMES, "each frame's processing time, from frames.jsonl"


def test_box_moved_by_30px_is_a_regression_the_report_shows(runs, tmp_path, capsys):
    report = tmp_path / "report"
    code = main(["compare", str(runs["base"]), str(runs["moved"]), "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 1
    reasons = [text for text in out.splitlines() if text.startswith("regression: ")]
    assert reasons and reasons == last_lines(out, len(reasons))
    assert all(text.startswith("regression: bag kitchen, object cube: ") for text in reasons), reasons
    assert "below IoU 0.9: frame" in reasons[0], "names the frames"

    page = check_report(report / "index.html")
    text = (report / "index.html").read_text()
    assert "REGRESSION" in text and "bag kitchen, object cube" in text
    worst = [src for src in page.images if "_frame" in src]
    assert worst and worst[0] == "bag0_kitchen_frame0.png", "the frame the moved box was applied on is worst"
    with Image.open(report / worst[0]) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert np.all(pixels == (255, 0, 255), axis=-1).any(), "changed pixels highlighted"
    assert (np.abs(pixels.astype(int) - (60, 60, 60)).sum(axis=-1) == 0).any(), "drawn on the input image"


def test_other_image_size_through_replay_baseline_is_a_regression(runs, tmp_path, capsys):
    out_dir = tmp_path / "size128"
    model = [arg if arg != "256" else "128" for arg in MODEL]
    code = main(["replay", str(runs["bag"]), "--out", str(out_dir), "--prompts", str(runs["prompts"]), *model,
                 "--baseline", str(runs["base"])])
    out = capsys.readouterr().out
    assert code == 1
    reasons = [text for text in out.splitlines() if text.startswith("regression: ")]
    assert reasons == last_lines(out, len(reasons)) and reasons
    assert any(text.startswith("regression: bag kitchen, object cube: ") and " frame" in text for text in reasons)
    assert (out_dir / "frames.jsonl").is_file(), "the replay itself is kept"


def test_fleet_pair_with_one_regressed_bag_names_that_bag_only(runs, tmp_path, capsys):
    bags = tmp_path / "bags"
    for name in ("hall", "kitchen"):  # two recordings (the same scene)
        shutil.copytree(runs["bag"], bags / name)
    baseline = tmp_path / "baseline"
    for name in ("hall", "kitchen"):
        shutil.copytree(runs["base"], baseline / name)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    shutil.copy(runs["prompts"], prompts / "hall.yaml")
    shutil.copy(runs["moved_prompts"], prompts / "kitchen.yaml")
    code = main(["replay", str(bags / "hall"), str(bags / "kitchen"), "--out", str(tmp_path / "candidate"),
                 "--prompts", str(prompts), *MODEL, "--baseline", str(baseline)])
    out = capsys.readouterr().out
    assert code == 1
    assert "bag hall: ok" in out and "bag kitchen: REGRESSION" in out
    reasons = [text for text in out.splitlines() if text.startswith("regression: ")]
    assert reasons and all(text.startswith("regression: bag kitchen, ") for text in reasons), reasons


def test_replay_baseline_that_is_no_replay_output_fails_before_replaying(runs, tmp_path, capsys):
    code = main(["replay", str(runs["bag"]), "--out", str(tmp_path / "out"), *MODEL, "--baseline", str(tmp_path)])
    assert code == 2
    assert f"the baseline {tmp_path} is not a replay output" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing replayed"
