"""`pam-ros describe` on the tiny fixture: the --json contract end to end, and clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pam_tiny_fixture import FIXTURE_DIR, PAM_DIR, SAM2_CHECKPOINT, SAM2_CONFIG, golden, image_cases
from PIL import Image

from pam_ros.cli import main
from pam_ros.model.masks import rle_to_mask
from pam_ros.model.tasks import parse_explanation

REPO = Path(__file__).resolve().parents[1]
C0 = image_cases()[0]
IMG0 = str(FIXTURE_DIR / C0["image"])
MODEL_ARGS = ["--pam", str(PAM_DIR), "--sam2-config", str(SAM2_CONFIG), "--sam2-checkpoint", str(SAM2_CHECKPOINT)]


def run_cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pam_ros.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def c0_json():
    box = [str(v) for v in C0["visual_prompt"]]
    proc = run_cli("describe", IMG0, "--box", *box, "--task", "recognize", "--task", "explain",
                   *MODEL_ARGS, "--max-new-tokens", "12", "--greedy", "--json")
    assert proc.returncode == 0, proc.stderr
    return proc


def test_json_contract_on_fixture_case(c0_json):
    result = json.loads(c0_json.stdout)  # stdout is exactly one JSON object
    assert set(result) == {"image", "size", "object_score_logit", "score", "roi", "mask_rle", "tasks",
                           "category", "definition"}
    assert result["image"] == IMG0 and result["size"] == [640, 480]
    assert result["object_score_logit"] == pytest.approx(C0["sam2_object_score_logit"], abs=1e-4)
    assert result["score"] == pytest.approx(1 / (1 + np.exp(-C0["sam2_object_score_logit"])), abs=1e-4)
    recognize = result["tasks"]["recognize"]
    assert recognize["token_ids"] == golden()["c0_box_recognize.generated_ids"].tolist()
    assert recognize["text"] == C0["generated_text"]
    assert recognize["prompt"] == C0["task_prompt"]
    assert set(result["tasks"]) == {"recognize", "explain"}
    # the top-level category and definition are the explain answer's, split the documented way
    explanation = parse_explanation(result["tasks"]["explain"]["text"])
    assert (result["category"], result["definition"]) == (explanation.category, explanation.definition)
    assert result["category"] != ""
    # the mask at the image's own resolution is the official one (a few pixels at logit ~0 may flip)
    mask = rle_to_mask(result["mask_rle"])
    official = golden()["c0_box_recognize.sam2.video_res_mask_logits"][0, 0].numpy() > 0
    assert result["mask_rle"]["size"] == [480, 640]
    assert np.count_nonzero(mask != official) <= 5
    ys, xs = np.nonzero(mask)
    assert result["roi"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    assert "Traceback" not in c0_json.stderr and "INFO" in c0_json.stderr  # logs on stderr


def test_several_boxes_describe_one_object_each_in_order(c0_json):
    """Two boxes in one run: the first object's fields are exactly the single-box run's (c0: official
    ids), the second is its own object; stdout is one JSON object."""
    second = ["400", "40", "620", "260"]
    box = [str(v) for v in C0["visual_prompt"]]
    proc = run_cli("describe", IMG0, "--box", *box, "--box", *second, "--task", "recognize", "--task", "explain",
                   *MODEL_ARGS, "--max-new-tokens", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"image", "size", "objects"} and result["size"] == [640, 480]
    single = json.loads(c0_json.stdout)
    first, other = result["objects"]
    assert set(first) == set(single) - {"image", "size"}
    for key in ("tasks", "category", "definition", "roi"):
        assert first[key] == single[key], key
    assert first["score"] == pytest.approx(single["score"], abs=1e-5)
    # two prompts in one decoder batch: a few pixels whose logit is ~0 may flip
    assert np.count_nonzero(rle_to_mask(first["mask_rle"]) != rle_to_mask(single["mask_rle"])) <= 5
    assert first["tasks"]["recognize"]["token_ids"] == golden()["c0_box_recognize.generated_ids"].tolist()
    assert set(other["tasks"]) == {"recognize", "explain"} and other["mask_rle"] != first["mask_rle"]
    x, y, w, h = other["roi"]
    assert x < 620 and x + w > 400 and y < 260 and y + h > 40  # the second mask is in the second box


def test_missing_image_fails_cleanly_in_a_process():
    proc = run_cli("describe", "no/such/image.png", "--box", "1", "2", "3", "4", *MODEL_ARGS)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "image not found: no/such/image.png" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("L", (64, 48), 128).save(folder / "gray.png")
    Image.new("RGBA", (64, 48), (1, 2, 3, 4)).save(folder / "rgba.png")
    Image.fromarray(np.zeros((48, 64), dtype=np.uint16)).save(folder / "deep.png")
    (folder / "garbage.png").write_bytes(b"not an image at all")
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--box", "100", "100", "100", "200"], "zero area"),
    (["--box", "700", "500", "900", "600"], "entirely outside"),
    (["--box", "nan", "1", "50", "60"], "NaN"),
    (["--point", "nan", "10"], "NaN"),
    (["--point", "10", "10", "2"], "LABEL must be 0"),
    (["--point", "10", "10", "yes"], "LABEL must be 0"),
    (["--point", "10"], "X Y [LABEL]"),
    (["--point", "700", "10"], "outside"),
    ([], "no visual prompt"),
    (["--box", "1", "2", "30", "40", "--task", "dance"], "unknown task 'dance'"),
    (["--box", "1", "2", "30", "40", "--task", "video_caption"], "needs a video"),
    (["--box", "1", "2", "30", "40", "--top-p", "0.5"], "--top-p needs --temperature"),
    (["--box", "1", "2", "30", "40", "--box", "5", "5", "60", "60", "--point", "10", "10"],
     "--point cannot be combined with several --box"),
    (["--box", "1", "2", "30", "40", "--box", "50", "5", "40", "60"], "--box number 2 (50 5 40 60)"),
])
def test_bad_prompts_give_clear_errors(capsys, extra, message):
    code = main(["describe", IMG0, *extra, *MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("pam-ros describe: error:")


@pytest.mark.parametrize("name, message", [
    ("gray.png", "is a L image"), ("rgba.png", "is a RGBA image"), ("deep.png", "image"),
    ("garbage.png", "not a readable image"),
])
def test_images_that_are_not_8bit_rgb_are_refused(capsys, odd_images, name, message):
    code = main(["describe", str(odd_images / name), "--box", "1", "2", "30", "40", *MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "8-bit RGB" in err or "not a readable image" in err


def test_partly_outside_box_is_clipped(capsys):
    import argparse

    from pam_ros.cli.describe import add_parser
    from pam_ros.cli.describe_inputs import build_prompt

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["describe", IMG0, "--box", "-20", "-10", "700", "300"])
    prompt = build_prompt(args, (640, 480))
    assert prompt.box.tolist() == [0.0, 0.0, 640.0, 300.0]


def test_model_errors_are_one_line(capsys, tmp_path):
    code = main(["describe", IMG0, "--box", "1", "2", "30", "40", "--pam", str(tmp_path),
                 "--sam2-config", str(SAM2_CONFIG), "--sam2-checkpoint", str(SAM2_CHECKPOINT)])
    err = capsys.readouterr().err
    assert code != 0 and "not found" in err and len(err.strip().splitlines()) <= 2
    code = main(["describe", IMG0, "--box", "1", "2", "30", "40"])  # no --model and nothing downloaded here
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pam-ros download PAM-1.5B" in err and "--model tiny" in err


def test_ask_score_is_the_softmax_of_the_official_yes_no_logits(capsys, monkeypatch):
    """`describe --ask` with the question swapped for case c0's own task text (so the prompt is the official
    one): its JSON score is the softmax of the official first-step logits of "Yes" and "No"."""

    import pam_ros.model.pam as pam
    from pam_ros.model.tasks import chat_prompt

    assert chat_prompt(C0["task_prompt"]) == C0["prompt_text"]
    monkeypatch.setattr(pam, "affordance_question", lambda query, template=None: C0["task_prompt"])
    box = [str(v) for v in C0["visual_prompt"]]
    code = main(["describe", IMG0, "--box", *box, "--ask", "anything", *MODEL_ARGS, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(PAM_DIR))
    ids = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("Yes", "No")]
    logits = golden()[f"{C0['case']}.llm.first_step_logits"][0, ids]
    assert result["ask"]["score"] == pytest.approx(float(logits.softmax(0)[0]), abs=1e-4)
    assert result["ask"]["log_odds"] == pytest.approx(float(logits[0] - logits[1]), abs=2e-3)
    assert 0.01 < result["ask"]["score"] < 0.99, "a saturated score would hide a wrong softmax"


def test_ask_adds_the_affordance_score_and_makes_tasks_optional(capsys, pam_model, decoded_image_cases):
    box = [str(v) for v in C0["visual_prompt"]]
    code = main(["describe", IMG0, "--box", *box, "--ask", "  cutting paper ", *MODEL_ARGS, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["tasks"] == {} and set(result["ask"]) == {"query", "score", "log_odds"}
    _, dec = decoded_image_cases[C0["case"]]
    (expected,) = pam_model.ask(pam_model.region_features(dec, 0), "cutting paper")
    assert result["ask"]["query"] == "cutting paper"
    assert result["ask"]["log_odds"] == pytest.approx(expected.log_odds, abs=1e-4)
    assert result["ask"]["score"] == pytest.approx(expected.score, abs=1e-5)


def test_ask_with_several_boxes_scores_each_object(capsys, pam_model, decoded_image_cases):
    box = [str(v) for v in C0["visual_prompt"]]
    code = main(["describe", IMG0, "--box", *box, "--box", "10", "10", "60", "50", "--ask", "cutting paper",
                 *MODEL_ARGS, "--json"])
    assert code == 0
    objects = json.loads(capsys.readouterr().out)["objects"]
    assert len(objects) == 2 and all(set(o["ask"]) == {"query", "score", "log_odds"} for o in objects)
    _, dec = decoded_image_cases[C0["case"]]
    (expected,) = pam_model.ask(pam_model.region_features(dec, 0), "cutting paper")
    assert objects[0]["ask"]["log_odds"] == pytest.approx(expected.log_odds, abs=1e-3)
    assert objects[0]["ask"]["log_odds"] != objects[1]["ask"]["log_odds"]


@pytest.mark.parametrize("query", ["", "   "])
def test_an_empty_ask_is_refused_with_status_2(capsys, query):
    code = main(["describe", IMG0, "--box", "1", "2", "30", "40", "--ask", query, *MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and "--ask is empty" in err


def test_ask_on_a_clip_is_refused_before_loading_a_model(capsys):
    clip = FIXTURE_DIR / "inputs" / "video"
    code = main(["describe", str(clip), "--box", "1", "2", "30", "40", "--ask", "cutting paper", *MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and "--ask works on one image" in err


LOADED_AFTER_DESCRIBE = """
import sys
from pam_ros.cli import main
code = main(sys.argv[1:])
heavy = ("ray", "rosbags", "onnxruntime", "rclpy", "matplotlib", "mcap", "pam_ros.replay", "pam_ros.ros")
print("LOADED", code, sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules)))
"""


def test_describe_loads_only_what_it_needs():
    """A one-image describe imports neither Ray, rosbags, ONNX Runtime, rclpy, matplotlib nor the replay
    (start-up time a labelling script pays per image)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    box = [str(v) for v in C0["visual_prompt"]]
    out = subprocess.run([sys.executable, "-c", LOADED_AFTER_DESCRIBE, "describe", IMG0, "--box", *box, *MODEL_ARGS,
                          "--task", "recognize", "--max-new-tokens", "2", "--json"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    line = next(line for line in out.stdout.splitlines() if line.startswith("LOADED"))
    assert line == "LOADED 0 []", out.stderr[-2000:]
