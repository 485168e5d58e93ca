"""The one error root of pam_ros: every error a user can cause derives from PamError.

A bad file, image, prompt, parameter, bag or request raises one of these with a message that says
what was wrong and what to do. Front ends (node, replay, CLI) catch `PamError` and answer the caller;
any other exception is a bug and surfaces with its traceback.
"""
from __future__ import annotations


class PamError(Exception):
    """Base class of every error raised on purpose by pam_ros (a user error, never a bug)."""


# ---------------------------------------------------------------- model core
class CheckpointError(PamError):
    """A weight file or config is missing, unreadable, or does not fit the model (names the key)."""


class PromptError(PamError, ValueError):
    """A visual prompt (points, labels, box) is unusable: NaN, outside the image, empty, ..."""


class ImageError(PamError, ValueError):
    """An input image has the wrong shape, dtype or size."""


class ImageDecodeError(ImageError):
    """Image bytes (a ROS message, a compressed payload) that cannot be decoded into RGB."""


class TaskError(PamError, ValueError):
    """An unknown task name or a task that cannot run on the given input."""


class ConfigError(PamError, ValueError):
    """A model or engine setting is invalid (missing file, unknown device, model not downloaded...)."""


class RegionSettingsError(ConfigError):
    """A setting of the segment-everything generator is out of range (points per side, thresholds, caps)."""


# ---------------------------------------------------------------- engine
class UnknownCameraError(PamError, KeyError):
    """A camera name that the host (several cameras over one model) does not serve."""

    def __str__(self) -> str:  # KeyError would print the repr of its message
        return str(self.args[0]) if self.args else ""


class EngineClosedError(PamError, RuntimeError):
    """The pipeline was closed (node deactivated); no more work is accepted."""


class TrackerError(PamError, ValueError):
    """A tracker request that cannot be honoured (duplicate id, past frame, too many objects)."""


class UnknownObjectError(TrackerError, KeyError):
    """An object id that the engine does not know (never added, or removed)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class ClipError(PamError, ValueError):
    """A clip that cannot be used: unreadable, empty, unsupported format, mixed frame sizes, too short."""


class DepthError(PamError, ValueError):
    """A depth image or its CameraInfo that cannot give geometry: encoding, size, intrinsics."""


class DepthSizeError(DepthError):
    """A depth image whose size differs from the colour image's (the message names both sizes)."""


class QueryError(PamError, ValueError):
    """An affordance query that cannot be asked (empty text, no objects to rank)."""


# ---------------------------------------------------------------- front ends
class InputError(PamError, ValueError):
    """A command-line input that cannot be used (reported as one line, exit status 2)."""


class SettingsError(ConfigError):
    """A node parameter value the node cannot run with (the message names the parameter and the fix)."""


class PromptMessageError(PromptError):
    """A pam_ros/Prompt message that is malformed (action, id, NaN, labels, box); the text says which."""


class ReplayError(PamError):
    """Base of every replay error."""


class BagOpenError(ReplayError):
    """The bag cannot be opened at all (missing, not a rosbag2 bag, unreadable metadata)."""


class TopicNotFoundError(ReplayError):
    """The requested (or an automatically chosen) topic is not in the bag; lists the topics that are."""


class BagReadError(ReplayError):
    """The bag is damaged (truncated, corrupted) part-way: messages before the damage were read."""


class InterfaceNotFoundError(ReplayError):
    """The pam_ros .msg definitions (msg/ beside the sources or share/pam_ros/msg) cannot be found."""


class PromptFileError(ReplayError, ValueError):
    """A prompts YAML file that does not follow the documented format (names the entry and field)."""


class OutputExistsError(ReplayError):
    """The output directory already holds replay outputs and overwriting was not asked for."""


class OnnxModelError(ConfigError):
    """An exported .onnx encoder that cannot be used: unreadable/corrupt, or made from other weights or
    another input size (the message says which and how to export a fitting one)."""


class OnnxExportError(PamError):
    """Exporting the image encoder failed, or its self-check found ONNX Runtime and torch disagree."""


class CompareInputError(ReplayError):
    """`pam-ros compare` inputs that cannot be compared: not a replay output, a damaged frames.jsonl,
    replays of two different bags, masks of two image sizes (one sentence naming the file; exit status 2)."""
