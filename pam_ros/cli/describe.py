"""`pam-ros describe`: segment one object in an image or a clip and say what it is (PAM tasks).

    pam-ros describe IMAGE [--box X1 Y1 X2 Y2]... [--point X Y [LABEL]]... --task NAME [--task NAME]...
        [--prompt TEXT] [--ask QUERY] [--history TEXT] [--model NAME | --sam2-config CFG --sam2-checkpoint PT --pam DIR]
        [--device D] [--dtype T] [--max-new-tokens N] [--greedy | --temperature T --top-p P]
        [--json] [--save-overlay PNG]
    pam-ros describe IMAGE --everything [...]   every region of the image (pam_ros.cli.regions)

IMAGE may also be a clip: a directory of frames (sorted by file name), an animated GIF, or a video
file when PyAV is installed. The prompt applies to the first frame and the object is tracked through
every frame (pam_ros.engine.clip); video tasks (video_caption, video_stream_caption with --history,
and their _zh variants; the default on a clip) run PAM's video mode on 16 frames of the track, image
tasks describe the first frame, and --prompt asks about the whole track. The JSON adds
"frames": [{"index", "score", "mask_rle"}] for every frame; the top-level mask and score are the
first frame's. --ask "QUERY" (one image) adds "ask": {"query", "score", "log_odds"}: PAM's P(yes)
that the object can be used for QUERY (model/tasks.py AFFORDANCE_QUESTION); tasks are optional then.

Several --box on one image describe one object each, in one batch (pam_ros.cli.regions);
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
import sys

from pam_ros.cli import depth as still_depth
from pam_ros.cli import regions
from pam_ros.cli.describe_inputs import build_prompt, check_tasks, checked_options_and_model, load_rgb_image
from pam_ros.cli.describe_output import add_ask, print_result, save_overlay, segmented_object_fields, semantics_fields
from pam_ros.cli.options import add_model_arguments
from pam_ros.errors import InputError
from pam_ros.model.selection import DEFAULT_MODEL

log = logging.getLogger("pam_ros.describe")

EXIT_BAD_INPUT = 2
EXIT_MODEL_ERROR = 1
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
    add_model_arguments(p, default_model=f"{DEFAULT_MODEL} once downloaded")
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
    regions.add_arguments(p)
    still_depth.add_arguments(p)
    p.set_defaults(run=run)
    return p


def describe(args) -> dict:
    """Everything the command prints, as the --json object."""
    from pam_ros.engine.clip import is_clip_path
    from pam_ros.engine.describe import describe_regions, segment_object

    regions.check_arguments(args)
    if still_depth.wants_depth(args) and (args.everything or (args.box and len(args.box) > 1)
                                          or is_clip_path(args.image)):
        raise InputError("--depth / --camera-info give geometry for one object on one image")
    if args.everything:
        return regions.describe_everything(args)
    if args.box and len(args.box) > 1:
        return regions.describe_boxes(args)
    if is_clip_path(args.image):
        return describe_clip_command(args)
    image = load_rgb_image(args.image)
    height, width = image.shape[:2]
    prompt = build_prompt(args, (width, height))
    tasks = check_tasks(args)
    depth = still_depth.load_still_depth(args, (width, height))  # checked before the model loads
    options, model = checked_options_and_model(args)
    segmented = segment_object(model, image, prompt, frame_index=0)
    log.info("running %s", ", ".join(tasks + (["prompt"] if args.prompt is not None else [])) or "no task")
    (generations,) = describe_regions(model, [segmented.features], tasks, free_prompt=args.prompt, **options)
    result = {"image": args.image, "size": [width, height],
              **segmented_object_fields(segmented.mask, segmented.object_score_logit, generations)}
    if args.ask is not None:
        log.info("asking whether the object serves %r", args.ask.strip())
        add_ask([result], model.ask(segmented.features, args.ask))
    geometry = None
    if depth is not None:
        result["geometry"], geometry = still_depth.geometry_json(depth, segmented.mask)
    if args.save_overlay:
        save_overlay(image, segmented.mask, prompt, args.save_overlay, geometry=geometry)
    return result


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
    first = tracked.frames[0]
    result = {
        "image": args.image,
        "size": [width, height],
        "object_score_logit": first.object_score_logit,
        "score": first.score,
        "roi": list(first.roi),
        "mask_rle": first.mask_rle,
        **semantics_fields(generations),
        "frames": [{"index": f.index, "score": f.score, "mask_rle": f.mask_rle} for f in tracked.frames],
    }
    if args.save_overlay:
        save_overlay(clip.first_frame(), first.mask(), prompt, args.save_overlay)
    return result


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
    else:
        print_result(result)
    return 0
