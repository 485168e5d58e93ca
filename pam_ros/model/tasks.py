"""PAM's prompts and facts, in one place: task prompts and kinds, the chat template, special ids, the
16 video frames and their selection, the caption priority, compute dtypes; prompt tokenisation and the
parsing of answers.

The prompt strings are the official ones, character for character, from the PAM notebooks
(Perceive-Anything/PAM: notebooks/image_infer_example.ipynb, video_infer_example.ipynb and
video_stream_infer_example.ipynb). The names in the notebooks (`recognize_en`, `brief_cap_ch`, ...) are
accepted as aliases of ours.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pam_ros.errors import ConfigError, TaskError

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200  # the `<image>` placeholder id in PAM's input_ids (LLaVA's convention)
HISTORY_FIELD = "{history}"
VIDEO_FRAMES = 16  # PAM's video mode always looks at 16 frames of the track
# Compute dtypes by the names that CLI options and node parameters use (torch dtypes: torch_dtype()).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
ENCODER_KINDS = ("torch", "onnxruntime")  # SAM 2's image encoder: model/image_encoder.py

TASK_PROMPTS: dict[str, str] = {
    "recognize": "<image>\nClassify this subject and provide its label.",
    "recognize_zh": "<image>\n对该目标对象进行分类并提供标签",
    "explain": "<image>\nClassify this subject and provide the label and its definition.",
    "explain_zh": "<image>\n对该目标对象进行分类并提供标签和名词功能解释",
    "caption": "<image>\nProvide a concise caption for this subject.",
    "caption_zh": "<image>\n对该目标对象提供一个概括的描述",
    "detailed_caption": "<image>\nProvide a comprehensive and detailed description for this subject.",
    "detailed_caption_zh": "<image>\n对该目标对象提供一个全面且详细的描述",
    "video_caption": "<image>\nProvide a caption for this subject in this video.\nPrevious caption: None",
    "video_caption_zh": "<image>\n对该视频中的目标对象提供一个描述。\n历史描述：无",
    # streaming: the previous window's caption goes in place of {history}
    "video_stream_caption": "<image>\nProvide a caption for this subject in this video.\nPrevious caption: {history}",
    "video_stream_caption_zh": "<image>\n对该视频中的目标对象提供一个描述。\n历史描述：{history}",
}
OFFICIAL_ALIASES: dict[str, str] = {
    "recognize_en": "recognize", "recognize_ch": "recognize_zh",
    "explain_en": "explain", "explain_ch": "explain_zh",
    "brief_cap_en": "caption", "brief_cap_ch": "caption_zh",
    "detail_cap_en": "detailed_caption", "detail_cap_ch": "detailed_caption_zh",
    "video_cap_en": "video_caption", "video_cap_ch": "video_caption_zh",
}
VIDEO_TASKS = frozenset(n for n in TASK_PROMPTS if n.startswith("video_"))
# tasks whose prompt carries the previous window's caption: they run on every window of a stream
STREAMING_TASKS = frozenset(n for n in TASK_PROMPTS if HISTORY_FIELD in TASK_PROMPTS[n])
# which task's text becomes an object's `caption` when several ran (first present wins)
CAPTION_PRIORITY = ("caption", "caption_zh", "detailed_caption", "detailed_caption_zh", "video_caption",
                    "video_caption_zh", "video_stream_caption", "video_stream_caption_zh")
# the official streaming notebook fills {history} with "None" for the first window, in both languages
NO_HISTORY = "None"

# conv_templates["qwen_2"] (CHATML): system turn, user turn, open assistant turn
SYSTEM_PROMPT = "You are a helpful assistant."
_CHAT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n"
    "<|im_start|>user\n{user}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


# The affordance question (not one of PAM's trained tasks): asked per object, answered by the first
# token alone, so the planner gets P(yes) instead of text to parse. {query} is the need in words.
AFFORDANCE_QUESTION = "<image>\nCan this object be used for the following: {query}? Answer yes or no."
QUERY_FIELD = "{query}"
# The words whose first token ids are read from the first generated position.
YES_WORD, NO_WORD = "Yes", "No"


def task_names() -> list[str]:
    return list(TASK_PROMPTS)


def canonical_task(name: str) -> str:
    """Our task name for `name` (an official notebook key is accepted too); TaskError if unknown."""
    if name in TASK_PROMPTS:
        return name
    if name in OFFICIAL_ALIASES:
        return OFFICIAL_ALIASES[name]
    raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(TASK_PROMPTS)}")


def is_video_task(name: str) -> bool:
    return canonical_task(name) in VIDEO_TASKS


def is_streaming_task(name: str) -> bool:
    """A streaming video caption: runs on every window, with the previous window's caption as history."""
    return canonical_task(name) in STREAMING_TASKS


def select_video_frames(num_frames: int) -> list[int]:
    """PAM's frame selection: the first frame plus 15 spread over the rest (fixture quirk 5)."""
    import numpy as np

    if num_frames < VIDEO_FRAMES:
        raise TaskError(f"PAM's video mode needs at least {VIDEO_FRAMES} frames, got {num_frames}")
    rest = np.linspace(1, num_frames - 1, VIDEO_FRAMES - 1, dtype=int)
    return [0] + [int(i) for i in rest]


def torch_dtype(dtype):
    """torch dtype for a name in DTYPE_NAMES (or a torch dtype among them); ConfigError otherwise."""
    import torch

    table = {name: getattr(torch, name) for name in DTYPE_NAMES}
    if isinstance(dtype, torch.dtype):
        if dtype not in table.values():
            raise ConfigError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPE_NAMES)}")
        return dtype
    if dtype not in table:
        raise ConfigError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    return table[dtype]


def task_prompt(name: str, *, history: str | None = None) -> str:
    """The user turn of a task, `<image>` included. `history` only for video_stream_caption(_zh)."""
    task = canonical_task(name)
    prompt = TASK_PROMPTS[task]
    if HISTORY_FIELD in prompt:
        return prompt.replace(HISTORY_FIELD, NO_HISTORY if history is None else history)
    if history is not None:
        raise TaskError(f"task {task!r} takes no history; use video_stream_caption")
    return prompt


def free_prompt(text: str) -> str:
    """A user's own question about the region, as a user turn with the `<image>` placeholder first
    (the position every official task prompt uses)."""
    if not isinstance(text, str) or not text.strip():
        raise TaskError("the free prompt is empty")
    if text.count(IMAGE_PLACEHOLDER) > 1:
        raise TaskError("a free prompt may hold at most one <image> placeholder")
    if IMAGE_PLACEHOLDER in text:
        return text
    return f"{IMAGE_PLACEHOLDER}\n{text.strip()}"


def affordance_question(query: str, template: str = AFFORDANCE_QUESTION) -> str:
    """The user turn asking whether the region serves `query` (surrounding whitespace dropped).

    The template must hold {query} and one <image>; the query is put in as it is (no formatting, so
    braces in it are harmless). An empty or whitespace-only query raises TaskError.
    """
    if not isinstance(query, str) or not query.strip():
        raise TaskError("the query is empty: say what the object should be used for, e.g. 'cutting paper'")
    check_affordance_template(template)
    return template.replace(QUERY_FIELD, query.strip())


def check_affordance_template(template: str) -> str:
    """TaskError unless the template holds {query} and exactly one <image>."""
    if QUERY_FIELD not in template or template.count(IMAGE_PLACEHOLDER) != 1:
        raise TaskError(f"the affordance question template must contain {QUERY_FIELD} and exactly one "
                        f"{IMAGE_PLACEHOLDER}, got {template!r}")
    return template


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """(first token id of "Yes", first token id of "No") in the tokenizer's encoding."""
    yes = tokenizer(YES_WORD, add_special_tokens=False).input_ids
    no = tokenizer(NO_WORD, add_special_tokens=False).input_ids
    if not yes or not no or yes[0] == no[0]:
        raise TaskError(f"the tokenizer cannot tell {YES_WORD!r} from {NO_WORD!r} by their first token")
    return int(yes[0]), int(no[0])


def chat_prompt(user_turn: str, system: str = SYSTEM_PROMPT) -> str:
    """PAM's qwen_2 conversation with one user turn and an empty assistant turn."""
    return _CHAT_TEMPLATE.format(system=system, user=user_turn)


def tokenize_prompt(prompt_text: str, tokenizer) -> list[int]:
    """PAM's tokenizer_image_token: each chunk around `<image>` tokenised on its own, joined by -200.

    A BOS token (if the tokenizer adds one) is kept once at the start; Qwen2 adds none.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt_text.split(IMAGE_PLACEHOLDER)]
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        offset = 1
        ids.append(bos)
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


@dataclass(frozen=True)
class PreparedPrompt:
    task: str  # task name, or "prompt" for a free prompt
    user_turn: str
    text: str  # the full chat prompt
    input_ids: tuple[int, ...]  # with IMAGE_TOKEN_INDEX at the region position


def prepare_prompt(tokenizer, task: str | None = None, *, prompt: str | None = None,
                   history: str | None = None) -> PreparedPrompt:
    """Task name (or free prompt text) -> chat prompt and input ids."""
    if (task is None) == (prompt is None):
        raise TaskError("give exactly one of a task name or a free prompt")
    if prompt is not None:
        name, user = "prompt", free_prompt(prompt)
    else:
        name = canonical_task(task)
        user = task_prompt(name, history=history)
    text = chat_prompt(user)
    return PreparedPrompt(name, user, text, tuple(tokenize_prompt(text, tokenizer)))


@dataclass(frozen=True)
class Explanation:
    """`explain` output split into category (the label) and definition; raw text kept as generated."""

    category: str
    definition: str
    raw: str


_LABELLED = re.compile(
    r"^\s*(?:label|category|class)\s*[:：]\s*(?P<cat>.+?)\s*(?:[\n;,.。；，]\s*)?"
    r"(?:(?:definition|function|explanation)\s*[:：]\s*)(?P<def>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_SEPARATORS = re.compile(r"\s*(?:\n|[:：]|\.(?:\s|$)|。|；|;|\s[-–—]\s)\s*")


def parse_explanation(text: str) -> Explanation:
    """Split an `explain` answer into category + definition.

    PAM answers with the label first, then its definition (e.g. "Chair. A chair is a seat ..." or
    "chair: a seat ..."). Explicit "Label: ... Definition: ..." markers are honoured; otherwise the
    label is everything before the first sentence/colon/line break. Without any separator the whole
    text is the category and the definition is empty.
    """
    raw = text
    body = text.strip()
    m = _LABELLED.match(body)
    if m:
        return Explanation(_clean_label(m.group("cat")), m.group("def").strip(), raw)
    m = _SEPARATORS.search(body)
    if not m:
        return Explanation(_clean_label(body), "", raw)
    return Explanation(_clean_label(body[: m.start()]), body[m.end():].strip(), raw)


def _clean_label(label: str) -> str:
    label = re.sub(r"^(?:label|category|class)\s*[:：]\s*", "", label.strip(), flags=re.IGNORECASE)
    return label.strip(" \t\"'`*.,;:。，；：")
