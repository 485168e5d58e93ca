"""Replaying several bags in one command: here one after another, and on a real local Ray instance
with two workers (three small bags, one of them damaged; a worker killed mid-bag).

Every bag's frames.jsonl is compared byte for byte (less the per-frame process_ms), and its output bag
message by message (topic, log time, serialized bytes), with a single replay of that bag by run_replay.
The model is the tiny fixture at a 256-pixel SAM 2 input; Ray gets 2 CPUs and a small object store.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_replay import CUBE_BOX, write_bag, write_chunked_mcap, write_yaml

from pam_ros.errors import BagReadError, OutputExistsError
from pam_ros.replay.fleet_plan import FAILED, plan_fleet, prompt_file_for, unique_names
from pam_ros.replay.outputs import without_timing

TASKS, TOKENS, IMAGE_SIZE = ("caption",), 6, 256
LONG_FRAMES, TAIL_FRAMES = 12, 20  # `tail` outlasts a retried `long` started before it
CLI_MODEL = ["--model", "tiny", "--image-size", str(IMAGE_SIZE), "--tasks", *TASKS,
             "--max-new-tokens", str(TOKENS), "--no-progress"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    """a: MCAP, 4 frames; b: sqlite3, 5 frames; c.mcap: cut in half (damaged); long and tail."""
    root = tmp_path_factory.mktemp("bags")
    damaged = write_chunked_mcap(root / "c.mcap", frames=6)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    return {"a": write_bag(root / "a", "mcap", frames=4), "b": write_bag(root / "b", "sqlite3", frames=5),
            "c": damaged, "long": write_bag(root / "long", "mcap", frames=LONG_FRAMES),
            "tail": write_bag(root / "tail", "mcap", frames=TAIL_FRAMES),
            "prompts": write_yaml(root, f"prompts:\n  - frame: 1\n    object_id: cube\n    box: {list(CUBE_BOX)}\n")}


@pytest.fixture(scope="module")
def single_replay(bags, tmp_path_factory):
    """frames.jsonl bytes and report of a single replay of a bag (what `pam-ros replay BAG` writes),
    each computed once with a fresh pipeline on one loaded tiny model."""
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
    from pam_ros.model.selection import ModelSpec
    from pam_ros.replay.runner import run_replay

    config = PipelineConfig(new_object_tasks=TASKS, max_new_tokens=TOKENS, semantics_mode="sync")
    model = ModelSpec(name="tiny", image_size=IMAGE_SIZE).load()
    root = tmp_path_factory.mktemp("single")
    done: dict = {}

    def replay(name: str, prompts: bool = True):
        key = (name, prompts)
        if key not in done:
            out = root / f"{name}-{prompts}"
            pipeline = PerceptionPipeline(model, config)
            try:
                report = run_replay(bags[name], out, pipeline, prompt_file=bags["prompts"] if prompts else None,
                                    progress=False)
            except BagReadError as err:
                report = err.report
            finally:
                pipeline.close()
            done[key] = (frames_of(out), report, bag_messages(out))
        return done[key]

    return replay


def frames_of(out: Path) -> bytes:
    """OUT/frames.jsonl without the per-frame processing times (wall-clock, the one part that may differ)."""
    return without_timing((out / "frames.jsonl").read_bytes())


def bag_messages(out: Path) -> list[tuple[str, int, object]]:
    """Every message of OUT/bag in order: (topic, log time, the message decoded with the bag's own definitions)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([out / "bag"], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        return [(connection.topic, timestamp, reader.deserialize(raw, connection.msgtype))
                for connection, timestamp, raw in reader.messages()]


def assert_same_message(ours, theirs, where: str) -> None:
    """Field by field: integers, strings and pixel data exactly; floats to 1e-5 relative (a Ray worker runs
    torch on one thread, which changes a score's last bit); tracking_seconds (wall-clock) not at all."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(ours):
        assert type(ours).__name__ == type(theirs).__name__, where
        for field in dataclasses.fields(ours):
            if field.name != "tracking_seconds":
                assert_same_message(getattr(ours, field.name), getattr(theirs, field.name), f"{where}.{field.name}")
    elif isinstance(ours, np.ndarray):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
        if ours.dtype.kind == "f":
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=where)
        else:
            assert np.array_equal(ours, theirs), where
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), where
        for index, (mine, reference) in enumerate(zip(ours, theirs)):
            assert_same_message(mine, reference, f"{where}[{index}]")
    elif isinstance(ours, float):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6), where
    else:
        assert ours == theirs, where


def assert_same_outputs(out: Path, single) -> None:
    """A fleet's outputs of one bag are the single replay's: frames.jsonl, and the bag message by message."""
    assert frames_of(out) == single[0], out.name
    ours, theirs = bag_messages(out), single[2]
    assert [m[:2] for m in ours] == [m[:2] for m in theirs], f"{out.name}: topics or log times differ"
    for index, (mine, reference) in enumerate(zip(ours, theirs)):
        assert_same_message(mine[2], reference[2], f"{out.name} message {index} ({mine[0]})")
    assert {m[0] for m in ours} >= {"/objects"}, "the output bag holds the results"


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def interrupt_when(condition):
    def on_progress(running: dict[str, tuple[int, int]]) -> None:
        if condition(running):
            raise KeyboardInterrupt  # what Ctrl-C raises in the command's main thread
    return on_progress


def assert_interrupted_part_way(out: Path, row, single: bytes, frames: int) -> None:
    assert row.status == "incomplete" and row.reason.startswith("interrupted")
    lines = frames_of(out / row.name).splitlines(keepends=True)
    assert 3 <= row.frames_read == len(lines) < frames
    assert b"".join(lines) == b"".join(single.splitlines(keepends=True)[:row.frames_read])
    assert (out / row.name / "bag" / "metadata.yaml").is_file(), "its output bag was closed properly"


def fleet_settings():
    from pam_ros.engine.pipeline import PipelineConfig
    from pam_ros.model.selection import ModelSpec
    from pam_ros.replay.fleet_plan import FleetSettings

    return FleetSettings(spec=ModelSpec(name="tiny", image_size=IMAGE_SIZE),
                         config=PipelineConfig(new_object_tasks=TASKS, max_new_tokens=TOKENS, semantics_mode="sync"))


# ----- planning (no model) -----------------------------------------------------------------------------
def test_bag_names_are_folder_or_file_names_made_unique(tmp_path):
    (tmp_path / "x" / "run").mkdir(parents=True)
    (tmp_path / "y" / "run").mkdir(parents=True)
    (tmp_path / "run.mcap").write_bytes(b"")
    names = unique_names([tmp_path / "x" / "run", tmp_path / "y" / "run/", tmp_path / "run.mcap"])
    assert names == ["run", "run-2", "run-3"]


def test_plan_reports_unusable_bags_and_refuses_earlier_outputs(bags, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "a.yaml").write_text(bags["prompts"].read_text())
    (prompts / "b.yaml").write_text("prompts:\n  - {frame: 0}\n")  # no box or points
    (prompts / "zzz.yaml").write_text("prompts: []\n")
    out = tmp_path / "out"
    jobs, failed, warnings = plan_fleet([bags["a"], bags["b"], tmp_path / "missing", bags["c"]], out, prompts,
                                        overwrite=False)
    assert [job.name for job in jobs] == ["a", "c"]
    assert jobs[0].prompt_file == str((prompts / "a.yaml").resolve()) and jobs[0].frames_expected == 4
    assert jobs[1].prompt_file is None and jobs[1].out_dir == str((out / "c").resolve())
    assert [(r.name, r.status) for r in failed] == [("b", FAILED), ("missing", FAILED)]
    assert "add needs a box and/or points" in failed[0].reason and "bag not found" in failed[1].reason
    assert any("no c.yaml" in w for w in warnings) and any("zzz.yaml" in w for w in warnings)
    assert prompt_file_for(bags["prompts"], "anything") == bags["prompts"]

    (out / "a").mkdir(parents=True)
    (out / "a" / "frames.jsonl").write_text("{}\n")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        plan_fleet([bags["a"], bags["b"]], out, None, overwrite=False)
    plan_fleet([bags["a"], bags["b"]], out, None, overwrite=True)


# ----- here, one bag after another ---------------------------------------------------------------------
def test_workers_1_replays_bags_here_into_one_folder_each(bags, single_replay, tmp_path, capsys):
    from pam_ros.cli import main

    twin = tmp_path / "elsewhere" / "a"  # another bag with the same folder name
    twin.parent.mkdir()
    twin.symlink_to(bags["b"], target_is_directory=True)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "a.yaml").write_text(bags["prompts"].read_text())
    out = tmp_path / "out"
    code = main(["replay", str(bags["a"]), str(twin), "--out", str(out), "--prompts", str(prompts), *CLI_MODEL])
    assert code == 0
    assert_same_outputs(out / "a", single_replay("a"))
    assert frames_of(out / "a-2") == single_replay("b", prompts=False)[0], \
        "a-2.yaml is not in the folder: only the bag's own prompts"
    assert_same_outputs(out / "a-2", single_replay("b", prompts=False))
    assert (out / "a" / "bag" / "metadata.yaml").is_file() and (out / "a-2" / "summary.txt").is_file()
    data = summary(out)
    assert data["executor"] == "local" and data["workers"] == 1 and data["complete"] is True
    assert [(b["name"], b["status"], b["frames_processed"], b["worker_pid"]) for b in data["bags"]] == [
        ("a", "complete", 4, os.getpid()), ("a-2", "complete", 5, os.getpid())]
    assert data["bags"][0]["prompts"] == {"submitted": 1, "accepted": 1, "refused": 0, "never_applied": 0}
    assert data["bags"][0]["objects"] == 1 and data["bags"][1]["objects"] == 0
    printed = capsys.readouterr()
    assert "no a-2.yaml in" in printed.err
    assert "executor  local" in printed.out and (out / "summary.txt").read_text().strip() in printed.out


# ----- on Ray, two workers -----------------------------------------------------------------------------
def test_ray_two_workers_three_bags_one_damaged(bags, single_replay, tmp_path, capsys):
    from pam_ros.cli import main

    out = tmp_path / "out"
    (tmp_path / "not_a_bag").mkdir()
    code = main(["replay", str(bags["a"]), str(bags["b"]), str(bags["c"]), str(tmp_path / "not_a_bag"),
                 "--out", str(out), "--prompts", str(bags["prompts"]), "--workers", "2", *CLI_MODEL])
    printed = capsys.readouterr().out
    assert code == 1, "one bag is not complete"
    for name in ("a", "b", "c"):
        assert_same_outputs(out / name, single_replay(name))
    data = summary(out)
    assert data["executor"] == "ray" and data["workers"] == 2 and data["complete"] is False
    rows = {b["name"]: b for b in data["bags"]}
    assert [b["status"] for b in data["bags"]] == ["complete", "complete", "incomplete", "failed"]
    assert "not a rosbag2 bag" in rows["not_a_bag"]["reason"] and rows["not_a_bag"]["worker_pid"] is None
    damaged_single = single_replay("c")[1]
    assert rows["c"]["frames_read"] == rows["c"]["frames_processed"] == damaged_single.frames_read >= 2
    assert "truncated or corrupted" in rows["c"]["reason"]
    assert (rows["a"]["frames_processed"], rows["b"]["frames_processed"]) == (4, 5)
    pids = {rows[name]["worker_pid"] for name in ("a", "b", "c")}
    assert os.getpid() not in pids and len(pids) <= 2 and all(pids)
    assert data["bags_per_hour"] > 0 and data["bags_complete"] == 2 and data["bags_incomplete"] == 1
    assert data["bags_failed"] == 1
    assert "c: incomplete: bag" in printed and "bags/hour" in printed
    print(f"\nfleet on Ray, 2 workers, 3 bags: {data['bags_per_hour']} bags/hour, replay "
          f"{data['replay_seconds']:.1f} s, startup {data['startup_seconds']:.1f} s")


def test_ray_worker_killed_mid_bag_is_replaced_then_ctrl_c_keeps_finished_bags(bags, single_replay, tmp_path):
    """One Ray run (a second one would cost a minute more): the worker of `long` is killed part-way,
    `long` is retried first on another worker and completes; then Ctrl-C while `tail` (longer,
    handed out after the retry) is part-way: finished bags are kept, `tail` keeps its frames so far.
    `long-2` (the same bag again) keeps the other worker busy until the death is seen."""
    from pam_ros.replay.fleet import run_fleet

    twin = tmp_path / "twin" / "long"
    twin.parent.mkdir()
    twin.symlink_to(bags["long"], target_is_directory=True)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_then_interrupt(running: dict[str, tuple[int, int]]) -> None:
        if "long" in running and not killed and 1 <= running["long"][1] < LONG_FRAMES:
            pid = running["long"][0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        long_done = (out / "long" / "summary.json").exists() and summary(out / "long")["complete"]
        if killed and long_done and 3 <= running.get("tail", (0, 0))[1]:
            raise KeyboardInterrupt  # what Ctrl-C raises in the command's main thread

    report = run_fleet([bags["long"], twin, bags["tail"]], out, fleet_settings(), prompts=bags["prompts"],
                       workers=2, progress=False, on_progress=kill_then_interrupt)
    assert killed, "the long bag was seen part-way"
    rows = {r.name: r for r in report.bags}
    assert rows["long"].status == "complete" and rows["long"].attempts == 2
    assert rows["long"].worker_pid != killed[0] and report.worker_restarts == 1
    assert rows["long-2"].status == "complete" and rows["long-2"].attempts == 1
    for name in ("long", "long-2"):
        assert_same_outputs(out / name, single_replay("long"))
    assert "complete (try 2)" in (out / "summary.txt").read_text()

    assert report.interrupted and report.executor == "ray" and summary(out)["interrupted"] is True
    assert_interrupted_part_way(out, rows["tail"], single_replay("tail")[0], frames=TAIL_FRAMES)


# ----- Ctrl-C: finished bags kept, the running one closed with its frames so far -----------------------
def test_ctrl_c_here_keeps_finished_bags(bags, single_replay, tmp_path):
    from pam_ros.replay.fleet import run_fleet

    out = tmp_path / "out"
    report = run_fleet([bags["a"], bags["long"], bags["b"]], out, fleet_settings(), prompts=bags["prompts"],
                       progress=False, on_progress=interrupt_when(lambda running: running.get("long", (0, 0))[1] >= 3))
    assert report.interrupted and not report.complete
    rows = {r.name: r for r in report.bags}
    assert rows["a"].status == "complete" and frames_of(out / "a") == single_replay("a")[0]
    assert_interrupted_part_way(out, rows["long"], single_replay("long")[0], frames=LONG_FRAMES)
    assert rows["b"].status == "not started" and not (out / "b").exists()
    assert [b["status"] for b in summary(out)["bags"]] == ["complete", "incomplete", "not started"]


# ----- exit codes through the command ------------------------------------------------------------------
def test_a_failed_bag_alone_makes_the_command_exit_1(bags, single_replay, tmp_path, capsys):
    """Every other bag complete, one bag failed before it started: exit 1 (not 0), the rest kept."""
    from pam_ros.cli import main

    (tmp_path / "not_a_bag").mkdir()
    out = tmp_path / "out"
    code = main(["replay", str(bags["a"]), str(tmp_path / "not_a_bag"), "--out", str(out),
                 "--prompts", str(bags["prompts"]), *CLI_MODEL])
    assert code == 1
    assert_same_outputs(out / "a", single_replay("a"))
    assert [(b["name"], b["status"]) for b in summary(out)["bags"]] == [("a", "complete"), ("not_a_bag", "failed")]
    assert "INCOMPLETE: 1 of 2 bags complete" in capsys.readouterr().out

    only_failed = tmp_path / "only_failed"  # nothing usable at all: still a summary, still exit 1
    code = main(["replay", str(tmp_path / "missing"), str(tmp_path / "not_a_bag"), "--out", str(only_failed),
                 *CLI_MODEL])
    assert code == 1
    assert [b["status"] for b in summary(only_failed)["bags"]] == ["failed", "failed"]


def test_unusable_command_inputs_exit_2_and_write_nothing(bags, tmp_path, capsys):
    from pam_ros.cli import main

    out = tmp_path / "out"
    code = main(["replay", str(bags["a"]), str(bags["b"]), "--out", str(out), "--workers", "0", *CLI_MODEL])
    assert code == 2 and "--workers must be >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()

    (out / "b").mkdir(parents=True)
    (out / "b" / "frames.jsonl").write_text("earlier\n")
    code = main(["replay", str(bags["a"]), str(bags["b"]), "--out", str(out), *CLI_MODEL])
    err = capsys.readouterr().err
    assert code == 2 and "pam-ros replay: error:" in err and "pass --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["b"] and (out / "b" / "frames.jsonl").read_text() == "earlier\n"


def test_ctrl_c_on_the_command_exits_130_and_keeps_what_was_written(bags, single_replay, tmp_path):
    """A real SIGINT to `pam-ros replay BAG BAG` once the first bag has frames: exit status 130, the bag
    closed with its frames so far, the second never started."""
    import subprocess
    import sys

    from ros_helpers.ros_session import wait_until

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "pam_ros.cli", "replay", str(bags["tail"]), str(bags["a"]),
                                "--out", str(out), "--prompts", str(bags["prompts"]), *CLI_MODEL],
                               cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               # as at a terminal: a suite started in the background (`make test &`) runs
                               # with SIGINT ignored, which its children would inherit
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = out / "tail" / "frames.jsonl"
        wait_until(lambda: process.poll() is not None or (lines.exists() and lines.read_bytes().count(b"\n") >= 3),
                   240.0, "three frames of the first bag")
        assert process.poll() is None, process.communicate()[0]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, output
    data = summary(out)
    assert data["interrupted"] is True
    rows = {b["name"]: b for b in data["bags"]}
    assert (rows["tail"]["status"], rows["a"]["status"]) == ("incomplete", "not started")
    kept = frames_of(out / "tail").splitlines(keepends=True)
    # one line per frame read; a frame the signal caught inside the engine is the last line, skipped
    assert 3 <= len(kept) == rows["tail"]["frames_read"] < TAIL_FRAMES
    processed = rows["tail"]["frames_processed"]
    assert len(kept) - processed in (0, 1) and rows["tail"]["frames_skipped"] == len(kept) - processed
    if processed < len(kept):
        assert json.loads(kept[-1])["skipped"].startswith("interrupted"), kept[-1]
    assert b"".join(kept[:processed]) == b"".join(single_replay("tail")[0].splitlines(keepends=True)[:processed])
    assert (out / "tail" / "bag" / "metadata.yaml").is_file(), "its output bag was closed properly"
