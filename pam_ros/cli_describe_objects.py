"""`pam-ros describe IMAGE --box ... --box ...`: several objects on one image, one per box.

The image is encoded once, every box is segmented in one mask-decoder batch, and every task of every
object runs in one batched generation (PamModel.describe_batch: each object's visual prefix once).
The JSON is {"image", "size", "objects": [...]}, one entry per box in command-line order, each with
the per-object fields of the single-object JSON. Points cannot be mixed with several boxes: points
describe one object, and which box they belong to would be a guess.
"""
from __future__ import annotations

import logging

import numpy as np

from pam_ros.errors import InputError, PamError

log = logging.getLogger("pam_ros.describe")


def check_boxes(args, image_wh: tuple[int, int]) -> list:
    """One validated VisualPrompt per --box (InputError for the first bad one, or with --point)."""
    from pam_ros.model.sam2_backbone import VisualPrompt

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


def describe_objects(args) -> dict:
    """Everything the command prints for several boxes, as the --json object."""
    from pam_ros.cli_describe import check_tasks, checked_options_and_model, load_rgb_image, save_overlay, task_results
    from pam_ros.engine.clip import is_clip_path
    from pam_ros.masks import mask_bbox_xywh, mask_to_rle, score_from_logit
    from pam_ros.model.pam import DescribeJob

    if is_clip_path(args.image):
        raise InputError("several --box work on one image; a clip tracks one object")
    image = load_rgb_image(args.image)
    height, width = image.shape[:2]
    prompts = check_boxes(args, (width, height))
    tasks = check_tasks(args)
    options, model = checked_options_and_model(args)
    enc = model.encode_image(image)
    dec = model.segment(enc, prompts)
    runs = [(t, None) for t in tasks] + ([(None, args.prompt)] if args.prompt is not None else [])
    jobs = [DescribeJob(model.region_features(dec, k), task, prompt=free)
            for k in range(len(prompts)) for task, free in runs]
    log.info("running %d task(s) on %d objects in one batch", len(runs), len(prompts))
    generations = model.describe_batch(jobs, **options)
    masks = (dec.mask_logits[:, 0] > 0).cpu().numpy()
    logits = dec.object_score_logits[:, 0].float().cpu().numpy()
    objects = []
    for k in range(len(prompts)):
        results, explanation = task_results(generations[k * len(runs):(k + 1) * len(runs)])
        logit = float(logits[k])
        objects.append({
            "object_score_logit": logit,
            "score": score_from_logit(logit),
            "roi": list(mask_bbox_xywh(masks[k])),
            "mask_rle": mask_to_rle(masks[k]),
            "tasks": results,
            "category": explanation.category if explanation else None,
            "definition": explanation.definition if explanation else None,
        })
    if args.ask is not None:  # one batched prefill over every object
        log.info("asking whether each object serves %r", args.ask.strip())
        answers = model.ask([model.region_features(dec, k) for k in range(len(prompts))], args.ask)
        for obj, answer in zip(objects, answers):
            obj["ask"] = answer.to_json()
    if args.save_overlay:
        save_overlay(image, masks.any(axis=0), prompts, args.save_overlay)
    return {"image": args.image, "size": [width, height], "objects": objects}


def print_objects_text(result: dict) -> None:
    print(f"{result['image']} {result['size'][0]}x{result['size'][1]}: {len(result['objects'])} objects")
    for number, obj in enumerate(result["objects"], start=1):
        print(f"object {number}: score {obj['score']:.3f}, roi {obj['roi']}")
        for task, out in obj["tasks"].items():
            print(f"  [{task}] {out['text']}")
        if obj["category"] is not None:
            print(f"  category: {obj['category']}")
            print(f"  definition: {obj['definition']}")
