"""`pam-ros replay --discover-every N`: segment everything on frames 0, N, 2N, ... of a bag, deterministically.

The tiny random model at the replay's 256-pixel input for the tiny model; its predicted IoUs sit near 0.5
and its stability scores near 0, so the generator's thresholds are lowered (4 x 4 points).
"""
from __future__ import annotations

import json

from test_replay import write_bag

from pam_ros.cli import main
from pam_ros.replay.outputs import without_timing

DISCOVER = ["--discover-points-per-side", "4", "--discover-pred-iou-thresh", "0.5",
            "--discover-stability-score-thresh", "0", "--discover-box-nms-thresh", "1"]


def replay(bag, out, *extra) -> int:
    return main(["replay", str(bag), "--out", str(out), "--model", "tiny", "--tasks", "recognize",
                 "--max-new-tokens", "2", "--no-progress", *DISCOVER, *extra])


def generator_runs_per_frame(bag, out) -> list[int]:
    """run_replay with the model and pipeline that `replay ... --discover-every 2` builds from its arguments;
    the generator's runs so far after each frame (pipeline.stats()["discover_runs"])."""
    from pam_ros.cli import build_parser
    from pam_ros.cli.replay_settings import model_spec, pipeline_config
    from pam_ros.engine.pipeline import PerceptionPipeline
    from pam_ros.replay.runner import run_replay

    args = build_parser().parse_args(["replay", str(bag), "--out", str(out), "--model", "tiny", "--tasks", "recognize",
                                      "--max-new-tokens", "2", "--no-progress", *DISCOVER, "--discover-every", "2"])
    pipeline = PerceptionPipeline.load(model_spec(args), pipeline_config(args))
    runs: list[int] = []
    try:
        run_replay(bag, out, pipeline, progress=False,
                   on_frame=lambda frames: runs.append(pipeline.stats()["discover_runs"]))
    finally:
        pipeline.close()
    return runs


def test_discover_every_n_frames_adds_objects_and_replays_identically(tmp_path, capsys):
    bag = write_bag(tmp_path / "in", "mcap", frames=5)
    assert replay(bag, tmp_path / "a", "--discover-every", "2") == 0
    assert replay(bag, tmp_path / "b", "--discover-every", "2") == 0
    first = without_timing((tmp_path / "a" / "frames.jsonl").read_bytes())
    assert first == without_timing((tmp_path / "b" / "frames.jsonl").read_bytes())
    lines = [json.loads(line) for line in first.splitlines()]
    added = [[o["object_id"] for o in line.get("prompt_outcomes", []) if o["accepted"]] for line in lines]
    assert added[0] and added[0][0] == "obj_1"  # frame 0 discovers
    assert added[1] == [] and added[3] == []  # only frames 0, 2, 4 run the generator
    tracked = [[o["object_id"] for o in line["objects"]] for line in lines]
    assert tracked[1] == added[0] and set(tracked[4]) == set(sum(added, []))

    # which frames ran the generator: the same replay with the pipeline in hand, its count read after each frame
    runs = generator_runs_per_frame(bag, tmp_path / "counted")
    assert without_timing((tmp_path / "counted" / "frames.jsonl").read_bytes()) == first, "the command's replay"
    assert runs == [1, 1, 2, 2, 3], "the generator runs on frames 0, 2 and 4 only"

    assert replay(bag, tmp_path / "off") == 0  # 0 = off (the default): no objects without prompts
    assert all(not json.loads(line)["objects"] for line in (tmp_path / "off" / "frames.jsonl").read_text().splitlines())


def test_bad_discover_options_fail_fast(tmp_path, capsys):
    bag = write_bag(tmp_path / "in", "mcap", frames=1)
    assert replay(bag, tmp_path / "a", "--discover-every", "-1") == 2
    assert "--discover-every must be >= 0" in capsys.readouterr().err
    assert replay(bag, tmp_path / "b", "--discover-every", "2", "--discover-pred-iou-thresh", "2") == 2
    assert "pred_iou_thresh must be in [0, 1], got 2.0" in capsys.readouterr().err
