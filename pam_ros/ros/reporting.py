"""How the node tells its user about bad input and prompt outcomes: throttled warnings and outcome lines."""
from __future__ import annotations

import threading
import time

from pam_ros.engine.types import PromptOutcome

BAD_INPUT_LOG_PERIOD_S = 5.0  # the same bad-input message is logged at most this often


def error_text(error: BaseException) -> str:
    """str() of a KeyError is its repr; show its message plainly."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


class Reporter:
    """Log lines about what users sent: bad input (throttled, so a bad stream cannot flood the log) and
    the outcome of every prompt."""

    def __init__(self, logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}  # message -> when it was last logged

    def bad_input(self, message: str) -> None:
        """Warn about bad input; the same message at most every BAD_INPUT_LOG_PERIOD_S."""
        now = time.monotonic()
        with self._lock:
            if now - self._logged.get(message, -1e9) < BAD_INPUT_LOG_PERIOD_S:
                return
            self._logged[message] = now
        self._logger.warn(message)

    def outcome(self, outcome: PromptOutcome) -> None:
        request = outcome.request
        action = request.action.name if request is not None else "prompt"
        source = (request.source if request is not None else "") or "engine"
        if outcome.accepted:
            self._logger.info(f"{action} {outcome.object_id} applied on frame {outcome.frame_index} ({source})")
        else:
            self._logger.warn(f"{action} {outcome.object_id or ''} refused ({source}): {outcome.error}")

    def outcomes(self, outcomes) -> None:
        for outcome in outcomes:
            self.outcome(outcome)

    def reset(self) -> None:
        with self._lock:
            self._logged.clear()
