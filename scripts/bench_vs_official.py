"""Whole-process benchmark: our `pam-ros describe --model tiny` against the official PAM code, side by side.

Issue #24's measure. Both sides are whole processes started from nothing, on the same inputs, in one run:
- describe: one fixture image, one box, 3 tasks (explain, recognize, caption), 12 new tokens each;
- clip: a 20-frame clip (the fixture's 16-frame clip played forward, then back), the box on frame 0, tracked
  with SAM 2 at 1024 and captioned with PAM's streaming-caption template (history "None"), 12 new tokens.
The official side is `scripts/official_describe.py` in the venv of `scripts/official_env.sh OFFICIAL_SRC`
(the fixture's tiny checkpoint, loaded as the fixture README says the reference was run); ours is
`pam-ros describe ... --model tiny --image-size 1024` (SAM 2 at 1024 like the official code; the tiny
model's own default is smaller). Float32 on the CPU, OMP/MKL threads = --threads on both sides.

Per case: one warm-up of each side (page cache, not timed), then --runs rounds, each running both sides,
the order alternating (official first, then ours first, ...) to cancel the machine's drift; the table also
gives the median of the per-round ratios, which a change of load between rounds disturbs less. Wall time is
the child process's (start to exit); peak memory is its own maximum resident set size (os.wait4). Every
run must print a non-empty answer per task. For describe it reports whether both sides give the same
texts, and whether they match the texts the fixture recorded for the official code (only where the
fixture has that image, box and task; a mismatch is reported, not fatal).

    make bench-official OFFICIAL_SRC=/path/to/PAM          # creates .venv-official, then this script
    python scripts/bench_vs_official.py --runs 3 --cases describe clip

The last two lines are `describe: ours X s, official Y s, ratio R` and `clip: ...` (ratio = ours / official).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "test" / "fixtures" / "pam_tiny"
TASK_KEYS = {"recognize": "recognize_en", "explain": "explain_en", "caption": "brief_cap_en",
             "detailed_caption": "detail_cap_en"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-python", default=str(ROOT / ".venv-official" / "bin" / "python"),
                   help="python of the official venv (scripts/official_env.sh; default .venv-official)")
    p.add_argument("--runs", type=int, default=5, help="timed rounds per case after the warm-up (default 5)")
    p.add_argument("--cases", nargs="+", default=["describe", "clip"], choices=["describe", "clip"])
    p.add_argument("--image", default=str(FIXTURE / "inputs" / "img0.png"), help="describe: the image")
    p.add_argument("--box", nargs=4, type=int, default=[110, 90, 340, 320], metavar=("X0", "Y0", "X1", "Y1"),
                   help="describe: the box (default: the fixture's c0 box)")
    p.add_argument("--tasks", nargs="+", default=["explain", "recognize", "caption"], choices=sorted(TASK_KEYS))
    p.add_argument("--clip-frames", type=int, default=20, help="clip length, built from the fixture clip (>= 16)")
    p.add_argument("--clip-box", nargs=4, type=int, default=[20, 40, 100, 120], metavar=("X0", "Y0", "X1", "Y1"))
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--image-size", type=int, default=1024, help="our SAM 2 input size (official: always 1024)")
    p.add_argument("--threads", type=int, default=2, help="OMP/MKL/torch threads on both sides (default 2)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one process may take (default 900)")
    return p.parse_args(argv)


@dataclass
class Run:
    seconds: float
    peak_mb: float
    texts: dict
    detail: str = ""


@dataclass
class Side:
    name: str
    runs: list = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def peak(self) -> float:
        return max(r.peak_mb for r in self.runs)

    def paired_ratio(self, official: "Side") -> float:
        """Median over rounds of ours / official within the round (robust to load changing between rounds)."""
        return statistics.median(u.seconds / o.seconds for u, o in zip(self.runs, official.runs))



def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # each venv finds its own packages
    return env


def run_process(cmd: list[str], env: dict, timeout: float) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS in MB of this process, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode} after {seconds:.1f} s:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024.0, stdout, stderr  # ru_maxrss is in KiB on Linux


def ours_command() -> list[str]:
    script = Path(sys.executable).with_name("pam-ros")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pam_ros.cli"]


def commands(args, case: str, clip_dir: Path | None) -> tuple[list[str], list[str]]:
    official = [args.official_python, str(ROOT / "scripts" / "official_describe.py"),
                "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--json"]
    ours = ours_command() + ["describe", "--model", "tiny", "--image-size", str(args.image_size),
                             "--max-new-tokens", str(args.max_new_tokens), "--json"]
    if case == "describe":
        official += ["--image", args.image, "--box", *map(str, args.box), "--tasks", *args.tasks]
        ours += [args.image, "--box", *map(str, args.box)] + [a for t in args.tasks for a in ("--task", t)]
    else:
        official += ["--video", str(clip_dir), "--frames", str(args.clip_frames), "--box", *map(str, args.clip_box)]
        ours += [str(clip_dir), "--box", *map(str, args.clip_box), "--task", "video_stream_caption"]
    return official, ours


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{stdout[-2000:]}")


def texts_of(side: str, stdout: str) -> dict:
    data = last_json(stdout)
    if side == "official":
        return dict(data["texts"])
    if "objects" in data:
        data = data["objects"][0]
    return {name: task["text"] for name, task in data["tasks"].items()}


def build_clip(frames: int, directory: Path) -> Path:
    """`frames` PNGs from the fixture's 16-frame clip played forward, then backward (ping-pong)."""
    source = sorted((FIXTURE / "inputs" / "video").glob("*.png"))
    cycle = source + source[-2:0:-1]
    for i in range(frames):
        shutil.copyfile(cycle[i % len(cycle)], directory / f"{i:05d}.png")
    return directory


def fixture_texts(image: str, box: list[int]) -> dict:
    """Task name -> text the official code produced in the fixture, for this image and box."""
    data = json.loads((FIXTURE / "fixture.json").read_text(encoding="utf-8"))
    found = {}
    for case in data["image_cases"]:
        same_image = Path(image).resolve() == (FIXTURE / case["image"]).resolve()
        if same_image and case["prompt_type"] == "box" and list(case["visual_prompt"]) == list(box):
            for name, key in TASK_KEYS.items():
                if case["task_key"] == key:
                    found[name] = case["generated_text"]
    return found


def measure(args, case: str, clip_dir: Path | None) -> tuple[Side, Side]:
    official_cmd, ours_cmd = commands(args, case, clip_dir)
    env = child_env(args.threads)
    sides = {"official": (Side("official"), official_cmd), "ours": (Side("ours"), ours_cmd)}
    print(f"\n## {case}", flush=True)
    for name, (_, cmd) in sides.items():
        print(f"{name}: {' '.join(cmd)}", flush=True)
    expected = len(args.tasks) if case == "describe" else 1
    for round_index in range(-1, args.runs):  # -1: warm-up
        order = ["official", "ours"] if round_index % 2 == 0 or round_index < 0 else ["ours", "official"]
        for name in order:
            side, cmd = sides[name]
            seconds, peak, stdout, _ = run_process(cmd, env, args.timeout)
            texts = texts_of(name, stdout)
            timings = last_json(stdout).get("timings") if name == "official" else None
            detail = "" if not timings else (
                f"  (import {timings['import_s']:.1f} s, load {timings['load_s']:.1f} s, generate "
                f"{sum(timings['tasks_s'].values()):.1f} s of which SAM 2 tower {timings['sam2_tower_s']:.1f} s)")
            empty = [t for t, text in texts.items() if not text.strip()]
            if len(texts) != expected or empty:
                raise RuntimeError(f"{name} {case}: expected {expected} non-empty answers, got {texts!r}")
            label = "warm-up" if round_index < 0 else f"run {round_index + 1}"
            print(f"  {label:8s} {name:8s} {seconds:8.2f} s  peak {peak:7.0f} MB{detail}", flush=True)
            if round_index >= 0:
                side.runs.append(Run(seconds, peak, texts, detail))
    return sides["official"][0], sides["ours"][0]


def report_texts(case: str, official: Side, ours: Side, recorded: dict) -> None:
    o_texts, u_texts = official.runs[-1].texts, ours.runs[-1].texts
    stable = all(r.texts == o_texts for r in official.runs) and all(r.texts == u_texts for r in ours.runs)
    print(f"{case}: every run gave the same texts on each side: {'yes' if stable else 'NO'}")
    for task, text in o_texts.items():
        mine = u_texts.get(task)
        line = f"  {task}: official {text!r} / ours {mine!r}: {'same' if mine == text else 'DIFFERENT'}"
        if task in recorded:
            line += (f"; fixture recorded {recorded[task]!r}: official {'matches' if text == recorded[task] else 'DIFFERS'}"
                     f", ours {'matches' if mine == recorded[task] else 'DIFFERS'}")
        print(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.official_python).exists():
        print(f"no official venv at {args.official_python}: run scripts/official_env.sh OFFICIAL_SRC first",
              file=sys.stderr)
        return 2
    if args.clip_frames < 16:
        print("--clip-frames must be at least 16 (PAM's video mode reads 16 frames)", file=sys.stderr)
        return 2
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; "
          f"threads {args.threads}; runs {args.runs} after 1 warm-up", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="pam_bench_clip_") as tmp:
        clip_dir = build_clip(args.clip_frames, Path(tmp)) if "clip" in args.cases else None
        for case in args.cases:
            results[case] = measure(args, case, clip_dir)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    for case, (official, ours) in results.items():
        recorded = fixture_texts(args.image, args.box) if case == "describe" else {}
        report_texts(case, official, ours, recorded)
    print()
    print("| case | official median s | ours median s | ratio ours/official | median of per-round ratios "
          "| official peak MB | ours peak MB | official runs s | ours runs s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, (official, ours) in results.items():
        print(f"| {case} | {official.median():.2f} | {ours.median():.2f} | {ours.median() / official.median():.3f} "
              f"| {ours.paired_ratio(official):.3f} | {official.peak():.0f} | {ours.peak():.0f} | {', '.join(f'{r.seconds:.2f}' for r in official.runs)} "
              f"| {', '.join(f'{r.seconds:.2f}' for r in ours.runs)} |")
    print()
    for case, (official, ours) in results.items():
        print(f"{case}: ours {ours.median():.2f} s, official {official.median():.2f} s, "
              f"ratio {ours.median() / official.median():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
