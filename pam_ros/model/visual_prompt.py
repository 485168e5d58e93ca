"""VisualPrompt: SAM 2's points and box for one object, and the one check of them (numpy only).

Every front end's prompt is checked here, once: by the engine's prompt queue at submission (against the
frame it will be applied to), by `pam-ros describe` against its image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pam_ros.errors import PromptError

# SAM 2 point labels for the two box corners.
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3


@dataclass
class VisualPrompt:
    """A visual prompt in pixel coordinates of the original image.

    points: [P, 2] float (x, y); labels: [P] int, 1 = positive, 0 = negative; box: [4] x1, y1, x2, y2.
    A box may be combined with points (SAM 2 puts the box corners first).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    @property
    def num_sam_points(self) -> int:
        """Number of SAM 2 prompt points this prompt becomes (a box counts as two)."""
        n = 0 if self.points is None else int(np.asarray(self.points).reshape(-1, 2).shape[0])
        return n + (2 if self.box is not None else 0)

    def validate(self, image_size_wh: tuple[int, int] | None = None) -> "VisualPrompt":
        """Check the prompt and return a normalised copy (float32/int32 arrays, clipped box).

        Raises PromptError on: no prompt at all, points without labels (or the reverse), a count
        mismatch, NaN/inf, labels not in {0, 1}, an inverted or zero-area box and, when the image
        size is given, points outside the image or a box entirely outside it. A box partly outside
        the image is clipped to it.
        """
        points = labels = box = None
        if self.points is not None or self.labels is not None:
            if self.points is None or self.labels is None:
                raise PromptError("points and labels must be given together")
            points = np.asarray(self.points, dtype=np.float64)
            labels = np.asarray(self.labels)
            if points.size == 0 and labels.size == 0:
                points = labels = None
            else:
                if points.ndim != 2 or points.shape[1] != 2:
                    raise PromptError(f"points must have shape [P, 2], got {list(points.shape)}")
                if labels.ndim != 1 or labels.shape[0] != points.shape[0]:
                    raise PromptError(
                        f"labels must have shape [{points.shape[0]}] to match the points, "
                        f"got {list(labels.shape)}"
                    )
                if not np.all(np.isfinite(points)):
                    raise PromptError("point coordinates contain NaN or infinity")
                if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
                    raise PromptError("point labels contain NaN or infinity")
                if not np.all(np.isin(labels, (0, 1))):
                    raise PromptError(f"point labels must be 0 or 1, got {labels.tolist()}")
                labels = labels.astype(np.int32)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape[0] != 4:
                raise PromptError(f"box must have 4 numbers x1, y1, x2, y2, got {box.shape[0]}")
            if not np.all(np.isfinite(box)):
                raise PromptError("box contains NaN or infinity")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise PromptError(f"box {box.tolist()} is inverted or has zero area (need x2>x1, y2>y1)")
        if points is None and box is None:
            raise PromptError("a prompt needs at least one point or a box")
        if image_size_wh is not None:
            width, height = image_size_wh
            if points is not None:
                outside = (
                    (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
                )
                if np.any(outside):
                    raise PromptError(
                        f"points {points[outside].tolist()} lie outside the {width}x{height} image"
                    )
            if box is not None:
                if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
                    raise PromptError(f"box {box.tolist()} lies entirely outside the {width}x{height} image")
                box = np.array(
                    [max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)]
                )
        return VisualPrompt(
            points=None if points is None else points.astype(np.float32),
            labels=labels,
            box=None if box is None else box.astype(np.float32),
        )
