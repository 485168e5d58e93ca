"""Follow prompts from the ROS side (topic / manage_objects) to the engine's outcome for each.

The engine reports outcomes per processed frame (FrameResult.prompt_outcomes, expire_held_prompts),
carrying the object id but no reference to the request. Every request it queues has an id (it names
an ADD without one in PerceptionPipeline.submit_prompt), and the ticket keeps the request as queued,
so each outcome matches its prompt by id.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable

from pam_ros.engine.types import PromptAction, PromptOutcome, PromptRequest


@dataclass
class PromptTicket:
    """One submitted prompt; `done` is set once the engine applied or refused it."""

    request: PromptRequest
    source: str = "topic"  # "topic" or "manage_objects" (for log lines)
    outcome: PromptOutcome | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def resolve(self, outcome: PromptOutcome) -> None:
        self.outcome = outcome
        self.done.set()


class PendingPrompts:
    """Tickets submitted to the engine and not yet resolved, in submission order (thread-safe)."""

    def __init__(self) -> None:
        self._tickets: list[PromptTicket] = []
        self._lock = threading.Lock()

    def add(self, ticket: PromptTicket) -> None:
        with self._lock:
            self._tickets.append(ticket)

    def resolve(self, outcomes: Iterable[PromptOutcome]) -> list[tuple[PromptOutcome, PromptTicket | None]]:
        """Match each outcome to the oldest pending ticket with its object id (RESET_ALL: the oldest reset)."""
        matched = []
        with self._lock:
            for outcome in outcomes:
                ticket = self._find(outcome)
                if ticket is not None:
                    self._tickets.remove(ticket)
                    ticket.resolve(outcome)
                matched.append((outcome, ticket))
        return matched

    def _find(self, outcome: PromptOutcome) -> PromptTicket | None:
        for ticket in self._tickets:
            if ticket.request.action != PromptAction.RESET_ALL and ticket.request.object_id == outcome.object_id:
                return ticket
        for ticket in self._tickets:
            if ticket.request.action == PromptAction.RESET_ALL and not outcome.object_id:
                return ticket
        return None

    def fail_all(self, error: str) -> None:
        """Resolve every pending ticket as refused (node deactivated)."""
        with self._lock:
            tickets, self._tickets = self._tickets, []
        for ticket in tickets:
            ticket.resolve(PromptOutcome(object_id="", accepted=False, error=error))

    def __len__(self) -> int:
        with self._lock:
            return len(self._tickets)
