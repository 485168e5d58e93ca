"""Named errors of the PAM model core.

Every failure a caller can cause (a bad file, a bad prompt, a bad image, an unknown task) is raised
as one of these, with a message that says what was wrong, so long-running front ends can catch
`PamError` and keep going.
"""
from __future__ import annotations


class PamError(Exception):
    """Base class of every error raised on purpose by pam_ros.model."""


class CheckpointError(PamError):
    """A weight file or config is missing, unreadable, or does not fit the model (names the key)."""


class PromptError(PamError, ValueError):
    """A visual prompt (points, labels, box) is unusable: NaN, outside the image, empty, ..."""


class ImageError(PamError, ValueError):
    """An input image has the wrong shape, dtype or size."""


class TaskError(PamError, ValueError):
    """An unknown task name or a task that cannot run on the given input."""
