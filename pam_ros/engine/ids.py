"""Automatic object ids: obj_1, obj_2, ... (one scheme for the tracker, the prompt queue and every front end)."""
from __future__ import annotations

import itertools
from typing import Iterable

AUTO_ID_PREFIX = "obj_"


class ObjectIdNamer:
    """Hands out obj_N ids in increasing order, skipping ids already in use; numbers are never reused."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def next_id(self, taken: Iterable[str] = ()) -> str:
        taken = set(taken)
        while True:
            candidate = f"{AUTO_ID_PREFIX}{next(self._numbers)}"
            if candidate not in taken:
                return candidate
