"""The semantics worker says where a request waits: what runs or waits before it (the caption action's
queue_position comes from here, not from a list of its own). No model: the work is plain callables."""
from __future__ import annotations

import threading

from pam_ros.engine.semantics import SemanticsJob, SemanticsStore, SemanticsWorker


def _job(object_id: str) -> SemanticsJob:
    return SemanticsJob(object_id, ("caption",), snapshot=None, stamp_ns=1, frame_index=0, max_new_tokens=2)


def test_position_counts_what_runs_or_waits_before_a_request():
    worker = SemanticsWorker(lambda sequences: [], SemanticsStore(), mode="async")
    release, started = threading.Event(), threading.Event()
    try:
        running = worker.run_request(lambda: (started.set(), release.wait(30)), name="hold")
        assert started.wait(30)
        assert worker.position(running) is None, "running: no longer queued"
        first = worker.run_request(lambda: "first", name="caption")
        job = _job("cup")
        worker.submit(job)
        second = worker.run_request(lambda: "second", name="caption")
        assert worker.position(first) == 1  # the running request
        assert worker.position(second) == 3  # the running request, the first caption, the cup's job
        merged = _job("cup")
        worker.submit(merged)  # merged into the queued job: it waits where that job waits
        assert worker.position(merged.future) == 2 and worker.position(second) == 3
        urgent = worker.run_request(lambda: "urgent", name="find_objects", first=True)
        assert worker.position(urgent) == 1 and worker.position(first) == 2  # first=True goes ahead
        first.cancel()
        release.set()
        assert second.result(30) == "second" and urgent.result(30) == "urgent"
        assert worker.position(second) is None
    finally:
        release.set()
        worker.close()
