"""Errors of the bag replay. Each message says what is wrong and what exists / what to do."""
from __future__ import annotations

from pam_ros.model.errors import PamError


class ReplayError(PamError):
    """Base of every replay error."""


class BagOpenError(ReplayError):
    """The bag cannot be opened at all (missing, not a rosbag2 bag, unreadable metadata)."""


class TopicNotFoundError(ReplayError):
    """The requested (or an automatically chosen) image topic is not in the bag; lists the topics that are."""


class BagReadError(ReplayError):
    """The bag is damaged (truncated, corrupted) part-way: messages before the damage were read."""


class InterfaceNotFoundError(ReplayError):
    """The pam_ros .msg definitions (msg/ beside the sources or share/pam_ros/msg) cannot be found."""


class PromptFileError(ReplayError, ValueError):
    """A prompts YAML file that does not follow the documented format (names the entry and field)."""


class OutputExistsError(ReplayError):
    """The output directory already holds replay outputs and overwriting was not asked for."""
