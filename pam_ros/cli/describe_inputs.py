"""`pam-ros describe` input checks: the image, the visual prompts, the tasks, the decoding options and
the model selection. Everything here runs before a model is loaded, so bad input costs nothing."""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from pam_ros.cli.options import model_spec_from_args
from pam_ros.errors import InputError, PamError

log = logging.getLogger("pam_ros.describe")

DEFAULT_TASKS = ("explain",)


def load_rgb_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.exists():
        raise InputError(f"image not found: {file}")
    if not file.is_file():
        raise InputError(f"{file} is not a file")
    try:
        with Image.open(file) as img:
            img.load()
            mode = img.mode
            if mode != "RGB":
                raise InputError(f"{file} is a {mode} image; describe needs an 8-bit RGB image")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{file} is not a readable image ({exc})") from None


def parse_points(raw: list[list[str]]) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not raw:
        return None, None
    points, labels = [], []
    for values in raw:
        if len(values) not in (2, 3):
            raise InputError(f"--point takes X Y [LABEL], got {' '.join(values)}")
        try:
            x, y = float(values[0]), float(values[1])
        except ValueError:
            raise InputError(f"--point coordinates must be numbers, got {' '.join(values[:2])}") from None
        label_text = values[2] if len(values) == 3 else "1"
        try:
            label = float(label_text)
        except ValueError:
            raise InputError(f"--point LABEL must be 0 or 1, got {label_text!r}") from None
        if label not in (0.0, 1.0):
            raise InputError(f"--point LABEL must be 0 (negative) or 1 (positive), got {label_text}")
        points.append((x, y))
        labels.append(int(label))
    return np.array(points, dtype=np.float64), np.array(labels, dtype=np.int64)


def build_prompt(args, image_wh: tuple[int, int]):
    """The one visual prompt of --box (at most one) and --point, checked against the image size."""
    from pam_ros.model.visual_prompt import VisualPrompt

    points, labels = parse_points(args.point)
    box = None if not args.box else np.array(args.box[0], dtype=np.float64)
    if points is None and box is None:
        raise InputError("no visual prompt: give --box X1 Y1 X2 Y2 and/or --point X Y [LABEL]")
    return VisualPrompt(points=points, labels=labels, box=box).validate(image_wh)


def check_boxes(args, image_wh: tuple[int, int]) -> list:
    """One validated VisualPrompt per --box (InputError for the first bad one, or with --point)."""
    from pam_ros.model.visual_prompt import VisualPrompt

    if args.point:
        raise InputError("--point cannot be combined with several --box: points describe one object; "
                         "give one box with points, or boxes alone")
    prompts = []
    for number, box in enumerate(args.box, start=1):
        try:
            prompts.append(VisualPrompt(box=np.array(box, dtype=np.float64)).validate(image_wh))
        except PamError as exc:
            raise InputError(f"--box number {number} ({' '.join(f'{v:g}' for v in box)}): {exc}") from None
    return prompts


def check_tasks(args) -> list[str]:
    """The image tasks asked for (default: explain, unless --prompt or --ask stands alone)."""
    from pam_ros.model.tasks import canonical_task, is_video_task

    tasks = []
    for name in args.task or ([] if args.prompt or args.ask is not None else list(DEFAULT_TASKS)):
        task = canonical_task(name)
        if is_video_task(task):
            raise InputError(f"task {name!r} needs a video: give a directory of frames or a video file "
                             "instead of one image")
        tasks.append(task)
    if args.history is not None:
        raise InputError("--history is for video_stream_caption on a clip, not for one image")
    return tasks


def generation_options(args) -> dict:
    if args.top_p is not None and args.temperature is None:
        raise InputError("--top-p needs --temperature (sampling)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    options = {"max_new_tokens": args.max_new_tokens}
    if args.temperature is not None:
        if not (math.isfinite(args.temperature) and args.temperature > 0):
            raise InputError(f"--temperature must be > 0, got {args.temperature}")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return options


def default_model() -> str:
    """The model of a describe without --model: PAM-1.5B once downloaded; else one sentence naming both ways on."""
    from pam_ros.model.registry import resolve_model
    from pam_ros.model.selection import DEFAULT_MODEL

    try:
        resolve_model(DEFAULT_MODEL)
    except PamError:
        raise InputError(f"no --model given and {DEFAULT_MODEL} is not downloaded: run `pam-ros download "
                         f"{DEFAULT_MODEL}`, or try the built-in random-weight test model with `--model tiny`") from None
    return DEFAULT_MODEL


def checked_options_and_model(args):
    """The last input checks (decoding options, model selection, --prompt, --ask), then the model load."""
    options = generation_options(args)
    spec = model_spec_from_args(args)
    if not spec.name and not spec.uses_paths:
        spec = replace(spec, name=default_model())
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt is empty")
    if args.ask is not None and not args.ask.strip():
        raise InputError("--ask is empty: say what the object should be used for, e.g. --ask \"cutting paper\"")
    spec = spec.validate()
    log.info("loading model %s on %s, %s", spec.label(), spec.device, spec.dtype)
    return options, spec.load()
