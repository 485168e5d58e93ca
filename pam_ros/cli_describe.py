"""`pam-ros describe`: segment one object in an image or a clip and say what it is (PAM tasks).

    pam-ros describe IMAGE [--box X1 Y1 X2 Y2]... [--point X Y [LABEL]]... --task NAME [--task NAME]...
        [--prompt TEXT] [--ask QUERY] [--history TEXT] [--model NAME | --sam2-config CFG --sam2-checkpoint PT --pam DIR]
        [--device D] [--dtype T] [--max-new-tokens N] [--greedy | --temperature T --top-p P]
        [--json] [--save-overlay PNG]
    pam-ros describe IMAGE --everything [...]   every region of the image (pam_ros.cli_everything)

IMAGE may also be a clip: a directory of frames (sorted by file name), an animated GIF, or a video
file when PyAV is installed. The prompt applies to the first frame and the object is tracked through
every frame (pam_ros.engine.clip); video tasks (video_caption, video_stream_caption with --history,
and their _zh variants; the default on a clip) run PAM's video mode on 16 frames of the track, image
tasks describe the first frame, and --prompt asks about the whole track. The JSON adds
"frames": [{"index", "score", "mask_rle"}] for every frame; the top-level mask and score are the
first frame's. --ask "QUERY" (one image) adds "ask": {"query", "score", "log_odds"}: PAM's P(yes)
that the object can be used for QUERY (model/tasks.py AFFORDANCE_QUESTION); tasks are optional then.

Several --box on one image describe one object each, in one batch (pam_ros.cli_describe_objects);
the JSON is then {"image", "size", "objects": [...]}.

Bad input (missing file, non-RGB image, NaN, labels other than 0/1, zero-area box, no prompt, unknown
task) ends with one clear line on stderr and exit status 2, before any model is loaded. A box partly
outside the image is clipped to it; a box or point entirely outside is refused. Logs go to stderr;
stdout carries only the result (one JSON object with --json).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from pam_ros import cli_depth, cli_everything
from pam_ros.cli_options import add_model_arguments, model_spec_from_args
from pam_ros.errors import InputError

log = logging.getLogger("pam_ros.describe")

EXIT_BAD_INPUT = 2
EXIT_MODEL_ERROR = 1
DEFAULT_TASKS = ("explain",)
DEFAULT_CLIP_TASKS = ("video_caption",)



def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "describe",
        help="segment an object in an image (or track it through a clip) and describe it with PAM",
        description="Segment one object (box and/or points) in an image, or track it from the first frame "
                    "through a clip, and run PAM tasks on it.",
    )
    p.add_argument("image", help="image file (8-bit RGB), or a clip: a directory of frames, an animated GIF, "
                                 "or a video file (needs PyAV)")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X1", "Y1", "X2", "Y2"),
                   help="box in pixels of the image (clipped to the image if partly outside); repeat it to "
                        "describe several objects at once (one per box, images only, no --point)")
    p.add_argument("--point", nargs="+", action="append", default=[], metavar="X Y [LABEL]",
                   help="point in pixels; LABEL 1 = positive (default), 0 = negative; repeatable, "
                        "given to SAM 2 in command-line order")
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="task to run (repeatable): recognize, explain, caption, detailed_caption and "
                        "their _zh variants (default: explain); on a clip also video_caption and "
                        "video_stream_caption (+ _zh; default: video_caption)")
    p.add_argument("--prompt", help="free question about the object (runs as task 'prompt'; on a clip it "
                                    "asks about the whole track)")
    p.add_argument("--ask", metavar="QUERY",
                   help="ask whether the object serves a need, e.g. \"cutting paper\": adds \"ask\": {query, "
                        "score, log_odds} (PAM's P(yes) from its first answer token; no text generated); "
                        "tasks are optional with --ask")
    p.add_argument("--history", metavar="TEXT",
                   help="previous caption for video_stream_caption(_zh) (PAM's streaming template; "
                        "default None)")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="most tokens to generate per task (default 512)")
    decoding = p.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    decoding.add_argument("--temperature", type=float, help="sample with this temperature")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold (with --temperature)")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--save-overlay", "--overlay", dest="save_overlay", metavar="PNG",
                   help="write the image with the mask (with --everything: every region) drawn on it")
    cli_everything.add_arguments(p)
    cli_depth.add_arguments(p)
    p.set_defaults(run=run)
    return p


# ------------------------------------------------------------------ input checks
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
    from pam_ros.model.sam2_backbone import VisualPrompt

    points, labels = parse_points(args.point)
    box = None if not args.box else np.array(args.box[0], dtype=np.float64)
    if points is None and box is None:
        raise InputError("no visual prompt: give --box X1 Y1 X2 Y2 and/or --point X Y [LABEL]")
    return VisualPrompt(points=points, labels=labels, box=box).validate(image_wh)


def check_tasks(args) -> list[str]:
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


# ------------------------------------------------------------------ running


def describe(args) -> dict:
    """Everything the command prints, as the --json object."""
    from pam_ros.engine.clip import is_clip_path
    from pam_ros.engine.describe import segment_object
    from pam_ros.masks import mask_bbox_xywh, mask_to_rle

    cli_everything.check_arguments(args)
    if cli_depth.wants_depth(args) and (args.everything or (args.box and len(args.box) > 1)
                                        or is_clip_path(args.image)):
        raise InputError("--depth / --camera-info give geometry for one object on one image")
    if args.everything:
        return cli_everything.describe_everything(args)
    if args.box and len(args.box) > 1:
        from pam_ros.cli_describe_objects import describe_objects

        return describe_objects(args)
    if is_clip_path(args.image):
        return describe_clip_command(args)
    image = load_rgb_image(args.image)
    height, width = image.shape[:2]
    prompt = build_prompt(args, (width, height))
    tasks = check_tasks(args)
    depth = cli_depth.load_still_depth(args, (width, height))  # checked before the model loads
    options, model = checked_options_and_model(args)
    segmented = segment_object(model, image, prompt, frame_index=0)
    features, mask = segmented.features, segmented.mask

    generations = []
    runs = [(t, None) for t in tasks] + ([("prompt", args.prompt)] if args.prompt is not None else [])
    for task, free in runs:
        log.info("running task %s", task)
        generations.append(model.describe(features, None if free is not None else task, prompt=free, **options))
    results, explanation = task_results(generations)
    result = {
        "image": args.image,
        "size": [width, height],
        "object_score_logit": segmented.object_score_logit,
        "score": segmented.score,
        "roi": list(mask_bbox_xywh(mask)),
        "mask_rle": mask_to_rle(mask),
        "tasks": results,
        "category": explanation.category if explanation else None,
        "definition": explanation.definition if explanation else None,
    }
    if args.ask is not None:
        log.info("asking whether the object serves %r", args.ask.strip())
        result["ask"] = model.ask(features, args.ask)[0].to_json()
    geometry = None
    if depth is not None:
        result["geometry"], geometry = cli_depth.geometry_json(depth, mask)
    if args.save_overlay:
        save_overlay(image, mask, prompt, args.save_overlay, geometry=geometry)
    return result


def checked_options_and_model(args):
    """The last input checks (decoding options, model selection, --prompt), then the model load."""
    options = generation_options(args)
    spec = model_spec_from_args(args)
    if not spec.name and not spec.uses_paths:
        raise InputError("no model: give --model NAME, or all of --pam DIR --sam2-config CFG --sam2-checkpoint PT")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt is empty")
    if args.ask is not None and not args.ask.strip():
        raise InputError("--ask is empty: say what the object should be used for, e.g. --ask \"cutting paper\"")
    spec = spec.validate()
    log.info("loading model %s on %s, %s", spec.label(), spec.device, spec.dtype)
    return options, spec.load()


def describe_clip_command(args) -> dict:
    """The --json object for a clip: the first frame's fields, the tasks, and every frame's mask."""
    from pam_ros.engine.clip import check_clip_tasks, describe_clip, open_clip, track_clip

    if args.ask is not None:
        raise InputError("--ask works on one image (the object on one frame), not on a clip")
    clip = open_clip(args.image)
    width, height = clip.size_wh
    prompt = build_prompt(args, (width, height))
    tasks = check_clip_tasks(args.task or ([] if args.prompt else list(DEFAULT_CLIP_TASKS)), len(clip),
                             history=args.history, free_prompt=args.prompt is not None)
    options, model = checked_options_and_model(args)
    log.info("tracking the object through %d frames of %s", len(clip), args.image)
    tracked = track_clip(model.backbone, clip, prompt, num_frames=len(clip),
                         on_frame=lambda f: log.debug("frame %d: score %.3f", f.index, f.score))
    log.info("running %s", ", ".join(tasks + (["prompt"] if args.prompt is not None else [])))
    generations = describe_clip(model, tracked, tasks, prompt=args.prompt, history=args.history, **options)
    results, explanation = task_results(generations)
    first = tracked.frames[0]
    result = {
        "image": args.image,
        "size": [width, height],
        "object_score_logit": first.object_score_logit,
        "score": first.score,
        "roi": list(first.roi),
        "mask_rle": first.mask_rle,
        "tasks": results,
        "category": explanation.category if explanation else None,
        "definition": explanation.definition if explanation else None,
        "frames": [{"index": f.index, "score": f.score, "mask_rle": f.mask_rle} for f in tracked.frames],
    }
    if args.save_overlay:
        save_overlay(clip.first_frame(), first.mask(), prompt, args.save_overlay)
    return result


def task_results(generations) -> tuple[dict, object]:
    """The "tasks" object of the JSON and the first explain answer's parse (or None)."""
    results, explanation = {}, None
    for out in generations:
        results[out.task] = {"prompt": out.prompt, "text": out.text, "token_ids": out.token_ids}
        if out.explanation is not None and explanation is None:
            explanation = out.explanation
    return results, explanation


def save_overlay(image: np.ndarray, mask: np.ndarray, prompt, path: str, geometry=None) -> None:
    """The image with the mask tinted and the visual prompt drawn (and the grasp, with --depth)."""
    from PIL import Image, ImageDraw

    tinted = image.astype(np.float32)
    tinted[mask] = 0.5 * tinted[mask] + 0.5 * np.array([30, 144, 255], dtype=np.float32)
    canvas = Image.fromarray(tinted.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for one in prompt if isinstance(prompt, (list, tuple)) else [prompt]:  # several boxes: each drawn
        if one.box is not None:
            draw.rectangle([float(v) for v in one.box], outline=(0, 255, 0), width=2)
        if one.points is not None:
            for (x, y), label in zip(one.points, one.labels):
                color = (0, 255, 0) if label == 1 else (255, 0, 0)
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color, outline=(255, 255, 255))
    if geometry is not None:
        from pam_ros.render import draw_grasp

        draw_grasp(draw, geometry, (30, 144, 255))
    try:
        canvas.save(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the overlay to {path}: {exc}") from None
    log.info("overlay written to %s", path)


def print_text(result: dict) -> None:
    print(f"{result['image']} {result['size'][0]}x{result['size'][1]}: object score "
          f"{result['score']:.3f}, roi {result['roi']}")
    if "frames" in result:
        present = sum(frame["score"] > 0.5 for frame in result["frames"])
        print(f"tracked through {len(result['frames'])} frames, present in {present}")
    for task, out in result["tasks"].items():
        print(f"[{task}] {out['text']}")
    if "ask" in result:
        ask = result["ask"]
        print(f"[ask] {ask['query']}: score {ask['score']:.3f} (log odds {ask['log_odds']:+.3f})")
    if result["category"] is not None:
        print(f"category: {result['category']}")
        print(f"definition: {result['definition']}")
    if "geometry" in result:
        cli_depth.print_geometry(result["geometry"])


def run(args) -> int:
    from pam_ros.errors import CheckpointError, PamError

    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = describe(args)
    except (InputError, PamError) as exc:
        # bad input and bad files are the user's to fix: one line, no traceback
        code = EXIT_MODEL_ERROR if isinstance(exc, CheckpointError) else EXIT_BAD_INPUT
        print(f"pam-ros describe: error: {exc}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif args.everything:
        cli_everything.print_everything(result)
    elif "objects" in result:
        from pam_ros.cli_describe_objects import print_objects_text

        print_objects_text(result)
    else:
        print_text(result)
    return 0
