"""The semantics worker says where a request waits: what runs or waits before it (the caption action's
queue_position comes from here, not from a list of its own). No model is needed: requests without
tasks generate nothing, and the work that holds the worker is a plain call."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from pam_ros.engine.semantics import SemanticsJob, SemanticsStore, SemanticsWorker

FRAME = SimpleNamespace(stamp_ns=1, frame_index=0)  # what a job reads of its newest frame


def _request(object_id: str) -> SemanticsJob:
    return SemanticsJob(object_id, (), (FRAME,), kind="request")


def _job(object_id: str) -> SemanticsJob:
    return SemanticsJob(object_id, ("caption",), (FRAME,))


def test_position_counts_what_runs_or_waits_before_a_request():
    worker = SemanticsWorker(object(), SemanticsStore(), mode="async")
    release, started = threading.Event(), threading.Event()
    try:
        running = worker.call_first(lambda _model: (started.set(), release.wait(30)))
        assert started.wait(30)
        assert worker.position(running) is None, "running: no longer queued"
        first = worker.request(_request("a"))
        worker.submit(_job("cup"))
        second = worker.request(_request("b"))
        assert worker.position(first) == 1  # the running call
        assert worker.position(second) == 3  # the running call, the first request, the cup's job
        merged = _job("cup")
        worker.submit(merged)  # merged into the queued job: it waits where that job waits
        assert worker.position(merged.future) == 2 and worker.position(second) == 3
        urgent = worker.call_first(lambda _model: "urgent")
        assert worker.position(urgent) == 1 and worker.position(first) == 2  # queries go ahead
        first.cancel()
        release.set()
        assert second.result(30) == [] and urgent.result(30) == "urgent"
        assert worker.position(second) is None
    finally:
        release.set()
        worker.close()
