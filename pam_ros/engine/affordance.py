"""Ranking tracked objects for a need ("something to cut with"): the engine side of find_objects.

The model gives each object a score (PamModel.ask: PAM's P(yes) from its first answer token); this
module picks the candidates, orders the answers best first and applies max_results / min_score, so
the pipeline's Python API, the node's service and the tests rank alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from pam_ros.engine.types import ObjectResult
from pam_ros.errors import QueryError


@dataclass(frozen=True)
class RankedObject:
    """One object's answer to a query, with the object as it was on the frame whose features were read."""

    object_id: str
    score: float  # P(yes), 0..1
    log_odds: float  # l_yes - l_no
    stamp_ns: int  # stamp of the frame whose features were read
    frame_index: int
    object: ObjectResult
    camera: str = ""  # the camera whose object this is (engine/host.py); "" for a single stream


def check_query(query: str, max_results: int = 0, min_score: float = 0.0) -> str:
    """The query without surrounding whitespace; QueryError for an empty one or bad limits."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty: say what the object should be used for, e.g. 'cutting paper'")
    if max_results < 0:
        raise QueryError(f"max_results must be >= 0 (0 = all), got {max_results}")
    if not (math.isfinite(min_score) and 0.0 <= min_score <= 1.0):
        raise QueryError(f"min_score must be within 0..1, got {min_score}")
    return query.strip()


def rank(candidates: Sequence[tuple[str, object, ObjectResult]], answers: Sequence, *, max_results: int = 0,
         min_score: float = 0.0, cameras: Sequence[str] = ()) -> list[RankedObject]:
    """Best first: candidates (object id, the features asked about, the object) zipped with the model's
    answers (score, log_odds), sorted by score (ties: higher log odds, then candidate order), cut to
    min_score and max_results (0 = all). cameras: each candidate's camera (several cameras ranked as one)."""
    cameras = list(cameras) or [""] * len(candidates)
    ranked = [
        RankedObject(object_id, float(answer.score), float(answer.log_odds), int(getattr(features, "stamp_ns", 0)),
                     int(getattr(features, "frame_index", -1)), obj, camera)
        for (object_id, features, obj), answer, camera in zip(candidates, answers, cameras, strict=True)
    ]
    ranked.sort(key=lambda r: (-r.score, -r.log_odds))  # stable: equal answers keep candidate order
    ranked = [r for r in ranked if r.score >= min_score]
    return ranked[:max_results] if max_results > 0 else ranked
