"""Finding and reading the replay outputs that `pam-ros compare` compares, one line at a time.

A replay output is a folder with frames.jsonl (one bag), or a fleet output whose OUT/<bag>/ folders
each hold one. frames.jsonl is read line by line and never held whole (a week of recordings would
not fit), and the two runs' frames are paired by stamp as they stream past. Everything unusable
raises CompareInputError with one sentence naming the file.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pam_ros.errors import CompareInputError
from pam_ros.replay.outputs import FRAMES_FILE, SUMMARY_JSON

SINGLE, FLEET = "one bag", "several bags"
_decode_json = json.JSONDecoder().decode
STORAGE_SUFFIXES = (".mcap", ".db3")


@dataclass(frozen=True)
class ReplayRun:
    """The outputs of one bag's replay: its folder, the bag's name and summary.json (None when absent)."""

    out_dir: Path
    bag_name: str
    summary: dict | None = None

    @property
    def frames_path(self) -> Path:
        return self.out_dir / FRAMES_FILE


@dataclass(frozen=True)
class ReplayOutput:
    """What a BASELINE or CANDIDATE argument names: one bag's replay, or a fleet's (runs by bag name)."""

    path: Path
    layout: str  # SINGLE | FLEET
    runs: dict[str, ReplayRun]


def find_replay_output(path: str | Path, role: str) -> ReplayOutput:
    """The replay output at path; role ("baseline" / "candidate") names it in errors."""
    path = Path(path)
    if not path.exists():
        raise CompareInputError(f"the {role} {path} does not exist")
    if not path.is_dir():
        raise CompareInputError(f"the {role} {path} is not a folder (give the --out folder of a replay)")
    if (path / FRAMES_FILE).is_file():
        run = _read_run(path, role)
        return ReplayOutput(path, SINGLE, {run.bag_name: run})
    bag_dirs = sorted(child for child in path.iterdir() if (child / FRAMES_FILE).is_file())
    if not bag_dirs:
        raise CompareInputError(f"the {role} {path} is not a replay output: it has no {FRAMES_FILE}, nor "
                                f"<bag>/{FRAMES_FILE} folders (write one with pam-ros replay --out)")
    # in a fleet output the folder is the bag's name: that is how the two runs' bags are matched
    runs = {child.name: ReplayRun(child, child.name, _read_summary(child, role)) for child in bag_dirs}
    return ReplayOutput(path, FLEET, runs)


def _read_run(out_dir: Path, role: str) -> ReplayRun:
    summary = _read_summary(out_dir, role)
    bag = (summary or {}).get("bag") or ""
    return ReplayRun(out_dir, storage_name(bag) if bag else out_dir.resolve().name, summary)


def storage_name(bag: str) -> str:
    """A bag's name from the path the replay recorded: its folder name, or a storage file's name
    without .mcap / .db3 (the bag need not exist here any more)."""
    name = Path(bag.rstrip("/\\")).name
    for suffix in STORAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_summary(out_dir: Path, role: str) -> dict | None:
    path = out_dir / SUMMARY_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CompareInputError(f"the {role}'s {path} is damaged ({err}): replay the bag again") from None
    if not isinstance(data, dict):
        raise CompareInputError(f"the {role}'s {path} is damaged (not a JSON object): replay the bag again")
    return data


@dataclass
class FrameReader:
    """The frames.jsonl lines of one run, as dicts, one at a time. A last line that is not JSON (an
    interrupted replay) ends the reading with a warning; a damaged line before it is an error."""

    path: Path
    role: str
    lines_read: int = 0
    warning: str = ""

    def __iter__(self) -> Iterator[dict]:
        try:
            stream = self.path.open("rb")
        except OSError as err:
            raise CompareInputError(f"the {self.role}'s {self.path} cannot be read: {err.strerror}") from None
        with stream:
            # one line of look-ahead: only the very last line may be cut off
            pending = stream.readline()
            number = 0
            while pending:
                raw, pending = pending, stream.readline()
                number += 1
                if not raw.strip():
                    continue
                line = self._parse(raw, number, last=not pending)
                if line is None:
                    return
                self.lines_read += 1
                yield line

    def _parse(self, raw: bytes, number: int, *, last: bool) -> dict | None:
        try:
            line = _decode_json(raw.decode("utf-8"))  # not json.loads: it would guess the encoding per line
            usable = (isinstance(line, dict) and isinstance(line.get("stamp_ns"), int)
                      and isinstance(line.get("frame"), int) and isinstance(line.get("objects"), list))
        except ValueError:
            line, usable = None, False
        if usable:
            return line
        if last and not raw.endswith(b"\n"):
            self.warning = (f"warning: the {self.role}'s {self.path} ends in a cut-off line {number} (an interrupted "
                            f"replay?): compared up to the line before it")
            return None
        raise CompareInputError(f"the {self.role}'s {self.path} is damaged at line {number} (not a frames.jsonl "
                                f"line): replay the bag again")


def paired_by_stamp(baseline: Iterator[dict], candidate: Iterator[dict]) -> Iterator[tuple[dict | None, dict | None]]:
    """(baseline line, candidate line) of the same stamp, in bag order; a frame only one run has comes
    with None beside it. Both files are in bag order, so one step of each at a time suffices."""
    base, cand = next(baseline, None), next(candidate, None)
    while base is not None or cand is not None:
        if base is not None and cand is not None and base["stamp_ns"] == cand["stamp_ns"]:
            yield base, cand
            base, cand = next(baseline, None), next(candidate, None)
        elif cand is None or (base is not None and base["stamp_ns"] < cand["stamp_ns"]):
            yield base, None
            base = next(baseline, None)
        else:
            yield None, cand
            cand = next(candidate, None)
