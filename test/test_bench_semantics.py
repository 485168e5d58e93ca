"""`pam-ros bench semantics`: the same jobs serial and batched, on a random-weight tiny PAM built from
the shapes kept in pam_ros/bench/shapes.py (numbers are printed, never asserted: only their form and
the work done are checked here)."""
from __future__ import annotations

import re

import pytest

from pam_ros.bench.semantics import random_objects, run_semantics_bench
from pam_ros.bench.shapes import QWEN_SHAPES, random_pam
from pam_ros.errors import PamError


@pytest.fixture(scope="module")
def tiny():
    return random_pam("tiny")


def test_serial_and_batched_do_the_same_work_and_the_last_line_is_the_summary(tiny):
    lines: list[str] = []
    result = run_semantics_bench(tiny, objects=2, tasks=("recognize", "caption"), max_new_tokens=3,
                                 prefill_repeats=1, printer=lines.append)
    # random weights: every sequence runs to max_new_tokens in both runs, and the output says so
    assert result.serial.tokens == result.batched.tokens == 2 * 2 * 3
    assert any("runs to max_new_tokens" in line for line in lines)
    assert any(line.startswith("prefill: 3 tasks on one object") for line in lines)
    match = re.fullmatch(r"semantics: serial (\S+) s, batched (\S+) s, ratio Y/X = (\d+\.\d{3})", lines[-1])
    assert match, lines[-1]
    assert float(match.group(3)) == pytest.approx(result.batched.seconds / result.serial.seconds, abs=1e-3)
    # the last object's first answer cannot come after all answers
    assert 0 < result.batched.last_object_first_answer_s <= result.batched.seconds
    assert 0 < result.serial.last_object_first_answer_s <= result.serial.seconds


def test_the_batched_run_keeps_to_max_batch_objects(tiny):
    lines: list[str] = []
    result = run_semantics_bench(tiny, objects=3, tasks=("caption",), max_new_tokens=2, max_batch=2,
                                 prefill_repeats=1, printer=lines.append)
    assert result.batched.tokens == result.serial.tokens == 3 * 2
    assert any("batched run: 2 batches of up to 2 objects" in line for line in lines)
    scene = next(line for line in lines if line.startswith("scene: 3 objects batched"))
    assert "vs one object alone" in scene


def test_the_cli_appends_its_results_for_the_gpu_check_table(tmp_path, capsys):
    from pam_ros.cli import main

    summary = tmp_path / "summary.tsv"
    assert main(["bench", "semantics", "--objects", "2", "--tasks", "caption", "--max-new-tokens", "2",
                 "--summary", str(summary)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = [line.split("\t") for line in summary.read_text().splitlines()]
    assert [r[2] for r in rows] == ["serial s", "batched s", "batched / serial", "batched / one object alone",
                                    "shared prefix prefill / 3 separate"]
    assert all(r[:2] == ["semantics", "tiny float32, 2 objects x caption x 2 tokens"] for r in rows)
    assert last.endswith(f"ratio Y/X = {rows[2][3]}")


@pytest.mark.parametrize("command", [["bench", "semantics"], ["replay", "missing.bag"]])
def test_max_batch_zero_is_refused_by_the_cli(command, capsys):
    from pam_ros.cli import main

    with pytest.raises(SystemExit) as stop:
        main([*command, "--max-batch", "0"])
    assert stop.value.code == 2
    assert "argument --max-batch: must be >= 1" in capsys.readouterr().err


def test_random_models_have_the_official_shapes(tiny):
    assert QWEN_SHAPES["1.5B"]["hidden_size"] == 1536 and QWEN_SHAPES["1.5B"]["num_hidden_layers"] == 28
    assert QWEN_SHAPES["3B"]["hidden_size"] == 2048 and QWEN_SHAPES["3B"]["num_hidden_layers"] == 36
    config = tiny.language.llm.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, 643)
    # the prompt tokenizer splits PAM's prompts around <image> like the real one
    prepared = tiny.prompt_for(random_objects(1, tiny.device)[0], "explain")
    assert prepared.input_ids.count(-200) == 1 and len(prepared.input_ids) < 60


def test_bad_bench_input_is_refused(tiny):
    with pytest.raises(PamError):
        run_semantics_bench(tiny, objects=0, printer=lambda line: None)
    with pytest.raises(PamError):
        run_semantics_bench(tiny, tasks=(), printer=lambda line: None)
    with pytest.raises(PamError):
        run_semantics_bench(tiny, tasks=("video_caption",), printer=lambda line: None)
    with pytest.raises(PamError, match="--max-batch"):
        run_semantics_bench(tiny, max_batch=0, printer=lambda line: None)
    with pytest.raises(PamError):
        random_pam("7B")
