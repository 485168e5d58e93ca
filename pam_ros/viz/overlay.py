"""Overlay drawing: what the tracker sees, drawn on the frame (shared by node, replay and CLI).

Pure numpy + PIL, no ROS: every front end turns a FrameResult into the same picture.
Each object gets its colour from its id only (viz/colours.py, as the RViz markers do), so it keeps its
colour across frames, runs and front ends; its mask is tinted semi-transparently, outlined, boxed and labelled with
"id category score". Lost objects are drawn grey with a LOST marker.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pam_ros.engine.types import FrameResult, ObjectResult, SemanticsState, TrackingState
from pam_ros.viz.colours import object_colour

MASK_ALPHA = 0.45
LOST_COLOUR = (160, 160, 160)
FONT_SIZE = 12
MAX_CATEGORY_CHARS = 24  # a label names the object; long generated text would hide the image


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask that touch a pixel outside it (4-neighbourhood); the image border counts as outside."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    )
    return mask & ~interior


def object_label(obj: ObjectResult) -> str:
    """'id category score', with what is known about the object so far."""
    parts = [obj.object_id]
    semantics = obj.semantics
    category = printable(semantics.category, MAX_CATEGORY_CHARS)
    if category:
        parts.append(category)
    elif semantics.state == SemanticsState.PENDING:
        parts.append("...")
    elif semantics.state == SemanticsState.FAILED:
        parts.append("(semantics failed)")
    parts.append(f"{obj.score:.2f}")
    if obj.tracking_state == TrackingState.LOST:
        parts.append(f"LOST x{obj.frames_lost}" if obj.frames_lost else "LOST")
    return " ".join(parts)


def printable(text: str, limit: int) -> str:
    """Text with control characters dropped and whitespace collapsed, cut to `limit` characters (with '...')."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: max(0, limit - 3)].rstrip() + "..."


def draw_overlay(image_rgb: np.ndarray, frame_result: FrameResult) -> np.ndarray:
    """Return a copy of `image_rgb` (HxWx3 uint8) with the frame's objects drawn on it.

    Masks must have the image's height and width (the engine gives them at source resolution).
    Raises ValueError for an image that is not HxWx3 uint8 or masks of another size.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"draw_overlay needs an HxWx3 uint8 RGB image, got shape {image_rgb.shape} "
            f"dtype {image_rgb.dtype}"
        )
    height, width = image_rgb.shape[:2]
    canvas = image_rgb.astype(np.float32)
    outlines: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    for obj in frame_result.objects:
        if obj.mask.shape != (height, width):
            raise ValueError(
                f"mask of object {obj.object_id!r} is {obj.mask.shape[1]}x{obj.mask.shape[0]}, "
                f"the image is {width}x{height}"
            )
        mask = obj.mask.astype(bool, copy=False)
        if not mask.any():
            continue
        colour = _colour_of(obj)
        canvas[mask] = canvas[mask] * (1.0 - MASK_ALPHA) + np.asarray(colour, np.float32) * MASK_ALPHA
        outlines.append((mask_outline(mask), colour))
    blended = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    for outline, colour in outlines:
        blended[outline] = colour

    picture = Image.fromarray(blended, mode="RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=FONT_SIZE)
    lost_without_box: list[str] = []
    placed: list[tuple[int, int, int, int]] = []  # label tags drawn so far (never drawn over each other)
    for obj in frame_result.objects:
        colour = _colour_of(obj)
        x, y, w, h = obj.roi
        if w <= 0 or h <= 0:
            if obj.tracking_state == TrackingState.LOST:
                lost_without_box.append(obj.object_id)
            continue
        box_width = 1 if obj.tracking_state == TrackingState.LOST else 2
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=box_width)
        _draw_label(draw, font, object_label(obj), (x, y), colour, width, height, placed)
    if lost_without_box:
        _draw_label(draw, font, "LOST: " + ", ".join(lost_without_box), (0, 0), LOST_COLOUR, width, height,
                    placed, above=False)
    return np.asarray(picture, dtype=np.uint8).copy()


def _colour_of(obj: ObjectResult) -> tuple[int, int, int]:
    return LOST_COLOUR if obj.tracking_state == TrackingState.LOST else object_colour(obj.object_id)


def _draw_label(draw: ImageDraw.ImageDraw, font, text: str, anchor_xy: tuple[int, int],
                colour: tuple[int, int, int], width: int, height: int,
                placed: list[tuple[int, int, int, int]], *, above: bool = True) -> None:
    """A filled tag with the text, just above the anchor point (below it when there is no room),
    shifted to stay inside the image and moved down past tags already drawn."""
    text = _drawable(font, text)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tag_w, tag_h = right - left + 4, bottom - top + 4
    x, y = anchor_xy
    tag_y = y - tag_h if above and y - tag_h >= 0 else y
    tag_x = max(0, min(x, width - tag_w))
    tag_y = max(0, min(tag_y, height - tag_h))
    for _ in range(len(placed)):
        clash = next((p for p in placed if _overlap(p, (tag_x, tag_y, tag_w, tag_h))), None)
        if clash is None:
            break
        tag_y = min(clash[1] + clash[3], height - tag_h)
    placed.append((tag_x, tag_y, tag_w, tag_h))
    draw.rectangle((tag_x, tag_y, tag_x + tag_w - 1, tag_y + tag_h - 1), fill=colour)
    draw.text((tag_x + 2 - left, tag_y + 2 - top), text, fill=_text_colour_on(colour), font=font)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _text_colour_on(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones (readable on every id colour)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _drawable(font, text: str) -> str:
    """The default font has Latin glyphs only; anything it cannot draw becomes '?'."""
    try:
        font.getmask(text)
        return text
    except (UnicodeEncodeError, ValueError):
        return text.encode("latin-1", "replace").decode("latin-1")
