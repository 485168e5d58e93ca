"""`pam-ros describe IMAGE --everything`: find every region of an image and say what each one is.

    pam-ros describe IMAGE --everything [--points-per-side N] [--pred-iou-thresh T]
        [--stability-score-thresh S] [--box-nms-thresh B] [--min-region-area A] [--max-objects K]
        [--task NAME]... [--prompt TEXT] [--ask QUERY] [model options] [--json] [--overlay PNG]

Regions come from the official SAM2AutomaticMaskGenerator on the model's own SAM 2 (16 points per
side; the generator's defaults for the rest), best predicted IoU first, at most K (16). Each kept
region is then described with PAM (default task: explain) from the one image encoding the generator
made (pam_ros.model.regions). The JSON:
    {"image", "size", "generator": {every setting given to SAM2AutomaticMaskGenerator, by keyword},
     "objects": [{"mask_rle", "roi", "predicted_iou", "stability_score", "tasks", "category",
                  "definition"}]}
Settings out of range (points per side < 1, thresholds outside [0, 1], K < 1, A < 0) end with one
line on stderr and exit status 2 before the model is loaded.
"""
from __future__ import annotations

import logging

import numpy as np

from pam_ros.errors import InputError

log = logging.getLogger("pam_ros.describe")

DEFAULT_MAX_OBJECTS = 16


def add_arguments(parser) -> None:
    """The --everything option group of `pam-ros describe`."""
    group = parser.add_argument_group(
        "segment everything (--everything: regions from SAM 2's automatic mask generator, each described)")
    group.add_argument("--everything", action="store_true",
                       help="find the regions yourself (no --box/--point) and describe each of them")
    group.add_argument("--points-per-side", type=int, default=None, metavar="N",
                       help="grid of N x N point prompts (default 16)")
    group.add_argument("--pred-iou-thresh", type=float, default=None, metavar="T",
                       help="keep regions whose predicted IoU is above T, in [0, 1] (generator default 0.8)")
    group.add_argument("--stability-score-thresh", type=float, default=None, metavar="S",
                       help="keep regions with a stability score of at least S, in [0, 1] "
                            "(generator default 0.95)")
    group.add_argument("--box-nms-thresh", type=float, default=None, metavar="B",
                       help="box IoU above which duplicate regions are dropped, in [0, 1] (generator "
                            "default 0.7)")
    group.add_argument("--min-region-area", type=int, default=None, metavar="A",
                       help="leave out regions smaller than A pixels; also the generator's "
                            "min_mask_region_area (default 0)")
    group.add_argument("--max-objects", type=int, default=None, metavar="K",
                       help=f"describe at most K regions, best predicted IoU first (default {DEFAULT_MAX_OBJECTS})")


def check_arguments(args) -> None:
    """Refuse the options that only make sense with, or without, --everything."""
    region_options = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                      "min_region_area", "max_objects")
    if not args.everything:
        given = [name for name in region_options if getattr(args, name) is not None]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --everything")
        return
    if args.box is not None or args.point:
        raise InputError("--everything finds the regions itself: leave out --box and --point")


def region_settings(args):
    """The generator settings from the command line, checked (InputError names the option)."""
    from pam_ros.errors import RegionSettingsError
    from pam_ros.model.regions import DEFAULT_POINTS_PER_SIDE, RegionSettings

    settings = RegionSettings(
        points_per_side=DEFAULT_POINTS_PER_SIDE if args.points_per_side is None else args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh, min_mask_region_area=args.min_region_area)
    try:
        settings = settings.resolved()
    except RegionSettingsError as exc:
        raise InputError(f"--everything: {exc}") from None
    max_objects = DEFAULT_MAX_OBJECTS if args.max_objects is None else args.max_objects
    if max_objects < 1:
        raise InputError(f"--max-objects must be at least 1, got {max_objects}")
    return settings, max_objects


def describe_everything(args) -> dict:
    """Everything `describe --everything` prints, as the --json object."""
    from pam_ros.cli_describe import check_tasks, checked_options_and_model, load_rgb_image, task_results
    from pam_ros.engine.clip import is_clip_path
    from pam_ros.masks import mask_bbox_xywh, mask_to_rle
    from pam_ros.model.regions import find_regions, region_decoder_output

    if is_clip_path(args.image):
        raise InputError("--everything works on one image, not on a clip")
    image = load_rgb_image(args.image)
    height, width = image.shape[:2]
    settings, max_objects = region_settings(args)
    tasks = check_tasks(args)
    options, model = checked_options_and_model(args)
    log.info("segmenting everything (%s)", ", ".join(f"{k}={v}" for k, v in settings.generator_kwargs().items()))
    found = find_regions(model.backbone, image, settings, max_regions=max_objects,
                         min_area=settings.min_mask_region_area)
    log.info("%d regions found, %d smaller than %d pixels left out, describing %d", found.generated,
             found.skipped_small, settings.min_mask_region_area, len(found.regions))
    decoded = region_decoder_output(model.backbone, found)
    runs = [(t, None) for t in tasks] + ([("prompt", args.prompt)] if args.prompt is not None else [])
    objects = []
    for index, region in enumerate(found.regions):
        features = model.region_features(decoded, index)
        generations = []
        for task, free in runs:
            log.info("region %d/%d: running task %s", index + 1, len(found.regions), task)
            generations.append(model.describe(features, None if free is not None else task, prompt=free,
                                              **options))
        results, explanation = task_results(generations)
        objects.append({
            "mask_rle": mask_to_rle(region.mask),
            "roi": list(mask_bbox_xywh(region.mask)),
            "predicted_iou": region.predicted_iou,
            "stability_score": region.stability_score,
            "tasks": results,
            "category": explanation.category if explanation else None,
            "definition": explanation.definition if explanation else None,
        })
    if args.ask is not None and objects:  # one batched prefill over every region
        log.info("asking whether each region serves %r", args.ask.strip())
        answers = model.ask([model.region_features(decoded, i) for i in range(len(objects))], args.ask)
        for obj, answer in zip(objects, answers):
            obj["ask"] = answer.to_json()
    result = {"image": args.image, "size": [width, height], "generator": settings.generator_kwargs(),
              "objects": objects}
    if args.save_overlay:
        save_regions_overlay(image, found.regions, objects, args.save_overlay)
    return result


def save_regions_overlay(image: np.ndarray, regions, objects: list[dict], path: str) -> None:
    """The image with every region drawn as render.py draws tracked objects (id, category, predicted IoU)."""
    from PIL import Image

    from pam_ros.engine.types import FrameResult, ObjectResult, ObjectSemantics, SemanticsState, TrackingState
    from pam_ros.render import draw_overlay

    drawn = []
    for index, (region, obj) in enumerate(zip(regions, objects), start=1):
        ys, xs = np.nonzero(region.mask)
        centroid = (float(xs.mean()), float(ys.mean())) if xs.size else (0.0, 0.0)
        semantics = ObjectSemantics(state=SemanticsState.READY, category=obj["category"] or "")
        drawn.append(ObjectResult(
            object_id=f"region_{index}", score=region.predicted_iou, object_score_logit=0.0,
            tracking_state=TrackingState.PROMPTED, frames_lost=0, mask=region.mask, roi=tuple(obj["roi"]),
            mask_area=region.area, centroid=centroid, semantics=semantics))
    height, width = image.shape[:2]
    picture = draw_overlay(image, FrameResult(frame_index=0, stamp_ns=0, width=width, height=height,
                                              objects=drawn, tracking_seconds=0.0))
    try:
        Image.fromarray(picture).save(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the overlay to {path}: {exc}") from None
    log.info("overlay of %d regions written to %s", len(drawn), path)


def print_everything(result: dict) -> None:
    print(f"{result['image']} {result['size'][0]}x{result['size'][1]}: {len(result['objects'])} regions")
    for index, obj in enumerate(result["objects"], start=1):
        label = f" {obj['category']}" if obj["category"] else ""
        print(f"region_{index}{label}: roi {obj['roi']}, predicted IoU {obj['predicted_iou']:.3f}, "
              f"stability {obj['stability_score']:.3f}")
        for task, out in obj["tasks"].items():
            print(f"  [{task}] {out['text']}")


# ------------------------------------------------------------------ discover during a replay
def add_discover_arguments(parser) -> None:
    """`pam-ros replay --discover-every N` and the generator's settings for it."""
    group = parser.add_argument_group("discover (segment everything every N frames and track what is new)")
    group.add_argument("--discover-every", type=int, default=0, metavar="N",
                       help="run SAM 2's automatic mask generator on frames 0, N, 2N, ... and track every region "
                            "that does not overlap a tracked object (mask IoU > 0.5), up to max objects; "
                            "0 = off (default)")
    group.add_argument("--discover-points-per-side", type=int, default=None, metavar="N",
                       help="discover: N x N point prompts (default 16)")
    group.add_argument("--discover-pred-iou-thresh", type=float, default=None, metavar="T",
                       help="discover: predicted-IoU filter in [0, 1] (generator default 0.8)")
    group.add_argument("--discover-stability-score-thresh", type=float, default=None, metavar="S",
                       help="discover: stability filter in [0, 1] (generator default 0.95)")
    group.add_argument("--discover-box-nms-thresh", type=float, default=None, metavar="B",
                       help="discover: duplicate box IoU in [0, 1] (generator default 0.7)")


def discover_config(args) -> dict:
    """PipelineConfig fields for the discover options (InputError for values out of range)."""
    from pam_ros.errors import RegionSettingsError
    from pam_ros.model.regions import DEFAULT_POINTS_PER_SIDE, RegionSettings

    if args.discover_every < 0:
        raise InputError(f"--discover-every must be >= 0 (0 = off), got {args.discover_every}")
    settings = RegionSettings(
        points_per_side=(DEFAULT_POINTS_PER_SIDE if args.discover_points_per_side is None
                         else args.discover_points_per_side),
        pred_iou_thresh=args.discover_pred_iou_thresh, stability_score_thresh=args.discover_stability_score_thresh,
        box_nms_thresh=args.discover_box_nms_thresh)
    try:
        settings = settings.resolved()
    except RegionSettingsError as exc:
        raise InputError(f"discover: {exc}") from None
    return {"discover_every_frames": args.discover_every, "discover_settings": settings}
