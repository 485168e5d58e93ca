"""Many bags on Ray: N long-lived workers (Ray actors) each load the model once and take the next
bag when they are free; a worker that dies mid-bag is replaced and its bag retried once.

The command starts a local Ray instance for itself (and stops it) unless it is given the address
of a running cluster. Workers write each bag's outputs straight to OUT/<bag name>/, so on a
cluster the bags and OUT must be at the same paths on every node (a shared file system), and
pam_ros and the model's weights must be installed there too. Results sent back are a few kB.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from dataclasses import replace

from pam_ros.errors import ConfigError, InputError, PamError
from pam_ros.replay.fleet_plan import (
    FAILED,
    INCOMPLETE,
    BagReplayer,
    BagResult,
    FleetBag,
    FleetProgress,
    FleetReport,
    FleetSettings,
)

# Results are small dicts, so the local instance needs only a small object store (the default
# would reserve 30% of the machine's memory in /dev/shm).
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
POLL_S = 0.5  # how often the driver looks at finished bags and the frames of running ones
STOP_GRACE_S = 30.0  # after Ctrl-C: how long running bags may take to close their outputs


class BagWorker:
    """One Ray worker (actor): the model loaded once, then bags one after another. Its methods run
    in two threads (max_concurrency=2) so progress() and stop() answer while a bag is replayed."""

    def __init__(self, settings: FleetSettings) -> None:
        self.error = ""
        self.replayer: BagReplayer | None = None
        try:
            self.replayer = BagReplayer(settings)
        except PamError as err:  # the model cannot be loaded here: told to the driver by ready()
            self.error = str(err)

    def ready(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "error": self.error}

    def replay(self, job: FleetBag, attempt: int) -> BagResult:
        return self.replayer.replay(job, attempt)

    def progress(self) -> tuple[str, int] | None:
        return self.replayer.progress() if self.replayer else None

    def stop(self) -> None:
        if self.replayer:
            self.replayer.stop()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--workers > 1 runs on Ray, which is not installed: pip install ray "
                         "(make setup installs it)") from None
    return ray


def run_on_ray(jobs: list[FleetBag], settings: FleetSettings, progress: FleetProgress, report: FleetReport, *,
               workers: int, address: str | None, gpus_per_worker: float | None,
               on_progress=None) -> dict[str, BagResult]:
    """Replay `jobs` on `workers` Ray actors; returns {bag name: result} for every bag handed out."""
    ray = _import_ray()
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker:g}")
    started = time.perf_counter()
    if address:
        print(f"joining the Ray cluster at {address} ...", file=sys.stderr)
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
            auth = "auth" in repr(err.__cause__ or err).lower()
            raise InputError(
                f"cannot join the Ray cluster at {address}: {_first_line(err)}. Is `ray start --head` running "
                f"there and the port reachable?" + (" The cluster wants its token: export RAY_AUTH_MODE=token and "
                                                     "copy the head's ~/.ray/auth_token to this machine (README)."
                                                     if auth else "")) from None
    else:
        print(f"starting a local Ray instance for {workers} workers ...", file=sys.stderr)
        # address="local": a new instance of our own, even where `ray start` has left one running
        ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1),
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        device = str(settings.spec.device)
        if gpus_per_worker is not None:
            gpus = float(gpus_per_worker)
        elif device == "auto":  # resolved on each worker: reserve a GPU where the cluster has them
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0.0) > 0 else 0.0
        else:
            gpus = 1.0 if device.startswith("cuda") else 0.0
        if gpus > 0 and device.startswith("cuda:"):
            # Ray shows each worker only its own GPU(s), numbered from cuda:0
            settings = replace(settings, spec=replace(settings.spec, device="cuda"))
        _check_resources(ray, workers, gpus)
        pool = _Pool(ray, settings, gpus, progress, report, on_progress)
        return pool.run(jobs, workers, started)
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT nobody listens on: say so now (Ray itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray://... : left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise InputError(f"cannot join the Ray cluster at {address}: {err.strerror or err}. Is `ray start --head "
                         f"--port={port}` running on {host} and the port reachable from here?") from None


def _check_resources(ray, workers: int, gpus: float) -> None:
    available = ray.cluster_resources().get("GPU", 0.0)
    if gpus > 0 and available < gpus:
        raise InputError(f"--gpus-per-worker {gpus:g}: the Ray cluster has {available:g} GPU(s); use a CUDA "
                         f"machine, or --device cpu (no GPU reserved)")
    if gpus > 0 and available < workers * gpus:
        print(f"warning: {workers} workers x {gpus:g} GPU need {workers * gpus:g} GPUs, the cluster has "
              f"{available:g}: {int(available // gpus)} run at once", file=sys.stderr)


class _Pool:
    """The driver's bookkeeping: workers starting, idle and busy; bags waiting; results."""

    def __init__(self, ray, settings: FleetSettings, gpus: float, progress: FleetProgress, report: FleetReport,
                 on_progress) -> None:
        self.ray = ray
        self.settings = settings
        self.remote_worker = ray.remote(BagWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0,
                                                           max_concurrency=2)
        self.progress = progress
        self.report = report
        self.on_progress = on_progress
        self.starting: dict = {}  # ready() ref -> actor
        self.idle: list[tuple[object, int]] = []  # (actor, pid)
        self.running: dict = {}  # replay() ref -> (actor, pid, job, attempt)
        self.pending: deque[tuple[FleetBag, int]] = deque()
        self.results: dict[str, BagResult] = {}
        self.start_errors: list[str] = []
        self.handed_out = False

    def start_worker(self) -> None:
        actor = self.remote_worker.remote(self.settings)
        self.starting[actor.ready.remote()] = actor

    def run(self, jobs: list[FleetBag], workers: int, started: float) -> dict[str, BagResult]:
        self.pending.extend((job, 1) for job in jobs)
        for _ in range(workers):
            self.start_worker()
        replay_started = None
        try:
            while self.pending or self.running:
                if not (self.idle or self.running or self.starting):
                    self._no_worker_left()
                    break
                while self.idle and self.pending:
                    if replay_started is None:
                        replay_started = time.perf_counter()
                        self.report.startup_seconds = replay_started - started
                    self._hand_out(*self.pending.popleft())
                refs = list(self.running) + list(self.starting)
                done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
                for ref in done:
                    if ref in self.starting:
                        self._worker_started(ref, self.starting.pop(ref))
                    else:
                        self._bag_done(ref, *self.running.pop(ref))
                self._show_frames()
        except KeyboardInterrupt:
            self.report.interrupted = True
            print("\ninterrupted: stopping the workers (running bags close their outputs) ...", file=sys.stderr)
            self._stop_running()
        finally:
            if replay_started is not None:
                self.report.replay_seconds = time.perf_counter() - replay_started
            for actor in [a for a, _ in self.idle] + [r[0] for r in self.running.values()] + list(self.starting.values()):
                self.ray.kill(actor, no_restart=True)
        return self.results

    def _hand_out(self, job: FleetBag, attempt: int) -> None:
        actor, pid = self.idle.pop(0)
        self.handed_out = True
        self.running[actor.replay.remote(job, attempt)] = (actor, pid, job, attempt)

    def _worker_started(self, ref, actor) -> None:
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as err:
            self.start_errors.append(f"a worker died while loading the model: {_first_line(err)}")
            print(f"warning: {self.start_errors[-1]}", file=sys.stderr)
            return
        if info["error"]:
            self.ray.kill(actor, no_restart=True)
            self.start_errors.append(f"worker on {info['host']} cannot load the model: {info['error']}")
            print(f"warning: {self.start_errors[-1]}", file=sys.stderr)
            return
        self.idle.append((actor, info["pid"]))

    def _bag_done(self, ref, actor, pid: int, job: FleetBag, attempt: int) -> None:
        ray = self.ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            self._worker_died(actor, pid, job, attempt, err)
            return
        except ray.exceptions.RayTaskError as err:  # a bug in the worker: the bag fails, the worker goes on
            result = BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, status=FAILED,
                               reason=_first_line(err), worker_pid=pid, attempts=attempt,
                               prompts_file=job.prompt_file, traceback=str(err))
        self.idle.append((actor, pid))
        self._finished(result)

    def _worker_died(self, actor, pid: int, job: FleetBag, attempt: int, err: Exception) -> None:
        self.ray.kill(actor, no_restart=True)
        self.report.worker_restarts += 1
        if attempt == 1:
            print(f"\nworker {pid} died while replaying {job.name} ({_first_line(err)}); starting a replacement, "
                  f"{job.name} will be retried on another worker", file=sys.stderr)
            self.pending.appendleft((job, 2))
        else:
            self._finished(BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, status=FAILED,
                                     reason=f"its worker died on both tries (last: pid {pid}: {_first_line(err)})",
                                     worker_pid=pid, attempts=attempt, prompts_file=job.prompt_file))
        if self.pending:
            self.start_worker()

    def _finished(self, result: BagResult) -> None:
        self.results[result.name] = result
        self.progress.finished(result)

    def _no_worker_left(self) -> None:
        reason = "; ".join(dict.fromkeys(self.start_errors)) or "every worker died"
        if not self.handed_out and self.start_errors:
            raise ConfigError(reason)
        while self.pending:
            job, attempt = self.pending.popleft()
            self._finished(BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, status=FAILED,
                                     reason=f"no worker left to replay it: {reason}", attempts=attempt - 1,
                                     prompts_file=job.prompt_file))

    def _show_frames(self) -> None:
        """Ask busy workers how far their bags are (for the bar and on_progress)."""
        asked = {actor.progress.remote(): pid for actor, pid, _, _ in self.running.values()}
        if not asked:
            return
        done, _ = self.ray.wait(list(asked), num_returns=len(asked), timeout=POLL_S)
        frames: dict[str, tuple[int, int]] = {}
        for ref in done:
            try:
                current = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue  # that worker died: seen when its bag's result is fetched
            if current is not None:
                frames[current[0]] = (asked[ref], current[1])
        self.progress.frames({name: n for name, (_, n) in frames.items()})
        if self.on_progress is not None:
            self.on_progress(frames)

    def _stop_running(self) -> None:
        for actor, _, _, _ in self.running.values():
            actor.stop.remote()
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            while self.running and time.monotonic() < deadline:
                done, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=POLL_S)
                for ref in done:
                    actor, pid, job, attempt = self.running.pop(ref)
                    try:
                        self._finished(self.ray.get(ref))
                    except self.ray.exceptions.RayError as err:
                        self._finished(BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, status=INCOMPLETE,
                                                 reason=f"interrupted (Ctrl-C); its worker stopped: {_first_line(err)}",
                                                 worker_pid=pid, attempts=attempt, prompts_file=job.prompt_file))
                    self.idle.append((actor, pid))
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: do not wait any longer
        for actor, pid, job, attempt in self.running.values():
            self._finished(BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, status=INCOMPLETE,
                                     reason="interrupted (Ctrl-C) before it closed its outputs",
                                     worker_pid=pid, attempts=attempt, prompts_file=job.prompt_file))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
