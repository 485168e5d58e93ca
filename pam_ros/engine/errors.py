"""Errors raised by the engine. All are PamError subclasses, so front ends can catch one base class."""
from __future__ import annotations

from pam_ros.engine.tracker import TrackerError, UnknownObjectError
from pam_ros.model.errors import PamError

__all__ = ["ConfigError", "EngineClosedError", "TrackerError", "UnknownObjectError"]


class ConfigError(PamError, ValueError):
    """A model or pipeline setting is invalid (missing file, unknown device, model not downloaded...)."""


class EngineClosedError(PamError, RuntimeError):
    """The pipeline was closed (node deactivated); no more work is accepted."""
