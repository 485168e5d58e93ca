"""`pam-ros describe` on several regions of one image: several --box, or --everything (SAM 2's automatic
mask generator finds them), each region described with PAM in one batched generation; and the
generator's option group, shared by `describe --everything` and `replay --discover-every`.

    pam-ros describe IMAGE --everything [--points-per-side N] [--pred-iou-thresh T]
        [--stability-score-thresh S] [--box-nms-thresh B] [--min-region-area A] [--max-objects K]
        [--task NAME]... [--prompt TEXT] [--ask QUERY] [model options] [--json] [--overlay PNG]

--everything JSON: {"image", "size", "generator": {every setting given to SAM2AutomaticMaskGenerator},
"objects": [{"mask_rle", "roi", "predicted_iou", "stability_score", "tasks", "category", "definition"}]}.
Several --box JSON: {"image", "size", "objects": [...]}, one entry per box in command-line order, each
with the fields of the single-object JSON. Settings out of range end with one line on stderr and exit
status 2 before the model is loaded.
"""
from __future__ import annotations

import logging

from pam_ros.cli.describe_inputs import check_boxes, check_tasks, checked_options_and_model, load_rgb_image
from pam_ros.cli.describe_output import (
    add_ask,
    mask_fields,
    save_overlay,
    save_regions_overlay,
    segmented_object_fields,
    semantics_fields,
)
from pam_ros.errors import InputError
from pam_ros.model.region_settings import DEFAULT_MAX_REGIONS, DEFAULT_POINTS_PER_SIDE, GENERATOR_DEFAULTS

log = logging.getLogger("pam_ros.describe")

# (option suffix, RegionSettings field, type, help): the generator's settings, spelt once for both commands
_GENERATOR_OPTIONS = (
    ("points-per-side", "points_per_side", int, f"grid of N x N point prompts (default {DEFAULT_POINTS_PER_SIDE})"),
    ("pred-iou-thresh", "pred_iou_thresh", float,
     f"keep regions whose predicted IoU is above T, in [0, 1] (default {GENERATOR_DEFAULTS['pred_iou_thresh']})"),
    ("stability-score-thresh", "stability_score_thresh", float,
     "keep regions with a stability score of at least S, in [0, 1] "
     f"(default {GENERATOR_DEFAULTS['stability_score_thresh']})"),
    ("box-nms-thresh", "box_nms_thresh", float,
     f"box IoU above which duplicate regions are dropped, in [0, 1] (default {GENERATOR_DEFAULTS['box_nms_thresh']})"),
)


def _add_generator_options(group, prefix: str) -> None:
    for suffix, _, kind, text in _GENERATOR_OPTIONS:
        metavar = {"points-per-side": "N", "pred-iou-thresh": "T", "stability-score-thresh": "S"}.get(suffix, "B")
        group.add_argument(f"--{prefix}{suffix}", type=kind, default=None, metavar=metavar,
                           help=("discover: " if prefix else "") + text)


def _region_settings(args, prefix: str, what: str, **extra):
    """RegionSettings from the options with this prefix, resolved (InputError names `what`)."""
    from pam_ros.errors import RegionSettingsError
    from pam_ros.model.region_settings import RegionSettings

    values = {field: getattr(args, (prefix + suffix).replace("-", "_")) for suffix, field, _, _ in _GENERATOR_OPTIONS}
    if values["points_per_side"] is None:
        values["points_per_side"] = DEFAULT_POINTS_PER_SIDE
    try:
        return RegionSettings(**values, **extra).resolved()
    except RegionSettingsError as exc:
        raise InputError(f"{what}: {exc}") from None


# ------------------------------------------------------------------ describe --everything
def add_arguments(parser) -> None:
    """The --everything option group of `pam-ros describe`."""
    group = parser.add_argument_group(
        "segment everything (--everything: regions from SAM 2's automatic mask generator, each described)")
    group.add_argument("--everything", action="store_true",
                       help="find the regions yourself (no --box/--point) and describe each of them")
    _add_generator_options(group, "")
    group.add_argument("--min-region-area", type=int, default=None, metavar="A",
                       help="leave out regions smaller than A pixels; also the generator's "
                            "min_mask_region_area (default 0)")
    group.add_argument("--max-objects", type=int, default=None, metavar="K",
                       help=f"describe at most K regions, best predicted IoU first (default {DEFAULT_MAX_REGIONS})")


def check_arguments(args) -> None:
    """Refuse the options that only make sense with, or without, --everything."""
    region_options = [field for _, field, _, _ in _GENERATOR_OPTIONS] + ["min_region_area", "max_objects"]
    if not args.everything:
        given = [name for name in region_options if getattr(args, name) is not None]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --everything")
        return
    if args.box is not None or args.point:
        raise InputError("--everything finds the regions itself: leave out --box and --point")


def region_settings(args):
    """The generator settings of `describe --everything`, checked, and the most regions to describe."""
    settings = _region_settings(args, "", "--everything", min_mask_region_area=args.min_region_area)
    max_objects = DEFAULT_MAX_REGIONS if args.max_objects is None else args.max_objects
    if max_objects < 1:
        raise InputError(f"--max-objects must be at least 1, got {max_objects}")
    return settings, max_objects


def describe_everything(args) -> dict:
    """Everything `describe --everything` prints, as the --json object."""
    from pam_ros.engine.clip import is_clip_path
    from pam_ros.engine.describe import describe_regions
    from pam_ros.model.regions import find_regions, region_decoder_output

    if is_clip_path(args.image):
        raise InputError("--everything works on one image, not on a clip")
    image = load_rgb_image(args.image)
    height, width = image.shape[:2]
    settings, max_objects = region_settings(args)
    tasks, free_prompt = check_tasks(args), args.prompt
    options, model = checked_options_and_model(args)
    log.info("segmenting everything (%s)", ", ".join(f"{k}={v}" for k, v in settings.generator_kwargs().items()))
    found = find_regions(model.backbone, image, settings, max_regions=max_objects,
                         min_area=settings.min_mask_region_area)
    log.info("%d regions found, %d smaller than %d pixels left out, describing %d", found.generated,
             found.skipped_small, settings.min_mask_region_area, len(found.regions))
    decoded = region_decoder_output(model.backbone, found)
    features = [model.region_features(decoded, index) for index in range(len(found.regions))]
    log.info("running %d task(s) on %d regions in one batch", len(tasks) + (free_prompt is not None), len(features))
    generations = describe_regions(model, features, tasks, free_prompt=free_prompt, **options)
    objects = [{**mask_fields(region.mask), "predicted_iou": region.predicted_iou,
                "stability_score": region.stability_score, **semantics_fields(gens)}
               for region, gens in zip(found.regions, generations)]
    if args.ask is not None and objects:  # one batched prefill over every region
        log.info("asking whether each region serves %r", args.ask.strip())
        add_ask(objects, model.ask(features, args.ask))
    result = {"image": args.image, "size": [width, height], "generator": settings.generator_kwargs(),
              "objects": objects}
    if args.save_overlay:
        save_regions_overlay(image, found.regions, objects, args.save_overlay)
    return result


# ------------------------------------------------------------------ describe --box ... --box ...
def describe_boxes(args) -> dict:
    """Everything the command prints for several boxes: one image encoding, one mask-decoder batch, one
    batched generation; points cannot be mixed with several boxes (which box they belong to would be a guess)."""
    from pam_ros.engine.clip import is_clip_path
    from pam_ros.engine.describe import describe_regions

    if is_clip_path(args.image):
        raise InputError("several --box work on one image; a clip tracks one object")
    image = load_rgb_image(args.image)
    height, width = image.shape[:2]
    prompts = check_boxes(args, (width, height))
    tasks, free_prompt = check_tasks(args), args.prompt
    options, model = checked_options_and_model(args)
    dec = model.segment(model.encode_image(image), prompts)
    features = [model.region_features(dec, k) for k in range(len(prompts))]
    log.info("running %d task(s) on %d objects in one batch", len(tasks) + (free_prompt is not None), len(prompts))
    generations = describe_regions(model, features, tasks, free_prompt=free_prompt, **options)
    masks = (dec.mask_logits[:, 0] > 0).cpu().numpy()
    logits = dec.object_score_logits[:, 0].float().cpu().numpy()
    objects = [segmented_object_fields(masks[k], float(logits[k]), generations[k]) for k in range(len(prompts))]
    if args.ask is not None:  # one batched prefill over every object
        log.info("asking whether each object serves %r", args.ask.strip())
        add_ask(objects, model.ask(features, args.ask))
    if args.save_overlay:
        save_overlay(image, masks.any(axis=0), prompts, args.save_overlay)
    return {"image": args.image, "size": [width, height], "objects": objects}


# ------------------------------------------------------------------ replay --discover-every
def add_discover_arguments(parser) -> None:
    """`pam-ros replay --discover-every N` and the generator's settings for it."""
    group = parser.add_argument_group("discover (segment everything every N frames and track what is new)")
    group.add_argument("--discover-every", type=int, default=0, metavar="N",
                       help="run SAM 2's automatic mask generator on frames 0, N, 2N, ... and track every region "
                            "that does not overlap a tracked object (mask IoU > 0.5), up to max objects; "
                            "0 = off (default)")
    _add_generator_options(group, "discover-")


def discover_config(args) -> dict:
    """PipelineConfig fields for the discover options (InputError for values out of range)."""
    if args.discover_every < 0:
        raise InputError(f"--discover-every must be >= 0 (0 = off), got {args.discover_every}")
    return {"discover_every_frames": args.discover_every,
            "discover_settings": _region_settings(args, "discover-", "discover")}
