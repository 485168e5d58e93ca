"""Task names -> official PAM prompts, chat template, free prompts, and parsing of `explain` answers."""
from __future__ import annotations

import pytest
from pam_tiny_fixture import PAM_DIR, TASK_OF_KEY, all_cases

from pam_ros.errors import TaskError
from pam_ros.model.tasks import (
    IMAGE_TOKEN_INDEX,
    canonical_task,
    chat_prompt,
    is_video_task,
    parse_explanation,
    prepare_prompt,
    task_names,
    task_prompt,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(PAM_DIR), local_files_only=True)


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c["case"])
def test_task_prompts_are_the_official_strings(case):
    name = TASK_OF_KEY[case["task_key"]]
    assert task_prompt(name) == case["task_prompt"]
    assert canonical_task(case["task_key"]) == name  # the notebooks' own keys work too
    assert chat_prompt(task_prompt(name)) == case["prompt_text"]


def test_every_task_has_english_and_chinese_variants():
    names = set(task_names())
    for base in ("recognize", "explain", "caption", "detailed_caption", "video_caption", "video_stream_caption"):
        assert base in names and f"{base}_zh" in names
        assert task_prompt(base).startswith("<image>\n")
        assert task_prompt(f"{base}_zh").startswith("<image>\n对")
    assert task_prompt("recognize_zh") == "<image>\n对该目标对象进行分类并提供标签"
    assert task_prompt("video_caption_zh") == "<image>\n对该视频中的目标对象提供一个描述。\n历史描述：无"
    assert is_video_task("video_stream_caption_zh") and not is_video_task("explain")


def test_stream_caption_history():
    assert task_prompt("video_stream_caption", history="A man waves.") == (
        "<image>\nProvide a caption for this subject in this video.\nPrevious caption: A man waves.")
    # the first window: the official streaming notebook writes "None"
    assert task_prompt("video_stream_caption") == task_prompt("video_caption")
    assert task_prompt("video_stream_caption_zh", history="他挥手。").endswith("历史描述：他挥手。")
    with pytest.raises(TaskError, match="no history"):
        task_prompt("caption", history="x")


def test_unknown_task_is_refused():
    with pytest.raises(TaskError, match="unknown task 'describe_everything'.*recognize"):
        prepare_prompt(None, "describe_everything")


def test_free_prompt_puts_the_region_first(tokenizer):
    prepared = prepare_prompt(tokenizer, prompt="What is this used for?")
    assert prepared.user_turn == "<image>\nWhat is this used for?"
    assert prepared.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    with pytest.raises(TaskError, match="empty"):
        prepare_prompt(tokenizer, prompt="   ")
    with pytest.raises(TaskError, match="exactly one"):
        prepare_prompt(tokenizer, "caption", prompt="hi")


@pytest.mark.parametrize("text, category, definition", [
    ("Chair. A chair is a piece of furniture for sitting.", "Chair", "A chair is a piece of furniture for sitting."),
    ("coffee mug: a cylindrical cup used for hot drinks", "coffee mug", "a cylindrical cup used for hot drinks"),
    ("Label: bicycle\nDefinition: a two-wheeled vehicle.", "bicycle", "a two-wheeled vehicle."),
    ("traffic cone", "traffic cone", ""),
    ("椅子。一种供人坐的家具。", "椅子", "一种供人坐的家具。"),
])
def test_explanation_is_split_into_category_and_definition(text, category, definition):
    parsed = parse_explanation(text)
    assert (parsed.category, parsed.definition, parsed.raw) == (category, definition, text)
