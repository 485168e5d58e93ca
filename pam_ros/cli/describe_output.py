"""What `pam-ros describe` prints and draws: the per-object JSON fields, the "ask" block, the text
form and the overlay PNGs. One place, so one box, several boxes, --everything and a clip report an
object with the same keys."""
from __future__ import annotations

import logging

import numpy as np

from pam_ros.errors import InputError

log = logging.getLogger("pam_ros.describe")


def task_results(generations) -> tuple[dict, object]:
    """The "tasks" object of the JSON and the first explain answer's parse (or None)."""
    results, explanation = {}, None
    for out in generations:
        results[out.task] = {"prompt": out.prompt, "text": out.text, "token_ids": out.token_ids}
        if out.explanation is not None and explanation is None:
            explanation = out.explanation
    return results, explanation


def semantics_fields(generations) -> dict:
    """"tasks", "category" and "definition" of one object."""
    results, explanation = task_results(generations)
    return {"tasks": results,
            "category": explanation.category if explanation else None,
            "definition": explanation.definition if explanation else None}


def mask_fields(mask: np.ndarray) -> dict:
    """"roi" (x, y, w, h) and "mask_rle" of one object's full-image mask."""
    from pam_ros.model.masks import mask_bbox_xywh, mask_to_rle

    return {"roi": list(mask_bbox_xywh(mask)), "mask_rle": mask_to_rle(mask)}


def segmented_object_fields(mask: np.ndarray, object_score_logit: float, generations) -> dict:
    """The JSON of one prompted object: its score, mask and semantics."""
    from pam_ros.model.masks import score_from_logit

    return {"object_score_logit": float(object_score_logit), "score": score_from_logit(object_score_logit),
            **mask_fields(mask), **semantics_fields(generations)}


def add_ask(objects: list[dict], answers) -> None:
    """Each object's "ask" block ({query, score, log_odds}) from model.ask's answers, in order."""
    for obj, answer in zip(objects, answers):
        obj["ask"] = answer.to_json()


def save_overlay(image: np.ndarray, mask: np.ndarray, prompt, path: str) -> None:
    """The image with the mask tinted and the visual prompt(s) drawn."""
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
    _save_png(canvas, path)
    log.info("overlay written to %s", path)


def save_regions_overlay(image: np.ndarray, regions, objects: list[dict], path: str) -> None:
    """The image with every region drawn as tracked objects are drawn (id, category, predicted IoU)."""
    from PIL import Image

    from pam_ros.engine.types import FrameResult, ObjectResult, ObjectSemantics, SemanticsState, TrackingState
    from pam_ros.model.masks import mask_centroid
    from pam_ros.viz.overlay import draw_overlay

    drawn = []
    for index, (region, obj) in enumerate(zip(regions, objects), start=1):
        semantics = ObjectSemantics(state=SemanticsState.READY, category=obj["category"] or "")
        drawn.append(ObjectResult(
            object_id=f"region_{index}", score=region.predicted_iou, object_score_logit=0.0,
            tracking_state=TrackingState.PROMPTED, frames_lost=0, mask=region.mask, roi=tuple(obj["roi"]),
            mask_area=region.area, centroid=mask_centroid(region.mask), semantics=semantics))
    height, width = image.shape[:2]
    picture = draw_overlay(image, FrameResult(frame_index=0, stamp_ns=0, width=width, height=height,
                                              objects=drawn, tracking_seconds=0.0))
    _save_png(Image.fromarray(picture), path)
    log.info("overlay of %d regions written to %s", len(drawn), path)


def _save_png(picture, path: str) -> None:
    try:
        picture.save(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the overlay to {path}: {exc}") from None


def _print_semantics(obj: dict, indent: str) -> None:
    for task, out in obj["tasks"].items():
        print(f"{indent}[{task}] {out['text']}")
    if "ask" in obj:
        ask = obj["ask"]
        print(f"{indent}[ask] {ask['query']}: score {ask['score']:.3f} (log odds {ask['log_odds']:+.3f})")
    if obj["category"] is not None:
        print(f"{indent}category: {obj['category']}")
        print(f"{indent}definition: {obj['definition']}")


def print_result(result: dict) -> None:
    """The text form of any describe result (one object, several boxes, --everything, a clip)."""
    size = f"{result['image']} {result['size'][0]}x{result['size'][1]}"
    if "generator" in result:
        print(f"{size}: {len(result['objects'])} regions")
        for index, obj in enumerate(result["objects"], start=1):
            label = f" {obj['category']}" if obj["category"] else ""
            print(f"region_{index}{label}: roi {obj['roi']}, predicted IoU {obj['predicted_iou']:.3f}, "
                  f"stability {obj['stability_score']:.3f}")
            _print_semantics({**obj, "category": None}, "  ")
        return
    if "objects" in result:
        print(f"{size}: {len(result['objects'])} objects")
        for number, obj in enumerate(result["objects"], start=1):
            print(f"object {number}: score {obj['score']:.3f}, roi {obj['roi']}")
            _print_semantics(obj, "  ")
        return
    print(f"{size}: object score {result['score']:.3f}, roi {result['roi']}")
    if "frames" in result:
        present = sum(frame["score"] > 0.5 for frame in result["frames"])
        print(f"tracked through {len(result['frames'])} frames, present in {present}")
    _print_semantics(result, "")
