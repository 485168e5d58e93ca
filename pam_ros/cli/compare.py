"""`pam-ros compare BASELINE CANDIDATE` (and `pam-ros replay ... --baseline DIR`): argument parsing,
printing and exit status only.

The work is pam_ros.replay: compare (figures, verdict, JSON), compare_summary (the text) and
compare_report (the HTML report: the only user of matplotlib, imported only when --report is given).
Exit status: 0 no regression, 1 a regression (the reasons are the last lines on stdout), 2 inputs that
cannot be compared (one sentence on stderr naming the file).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHECKS_TITLE = "regression checks (what makes the exit status 1)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compare` sub-command."""
    compare = subparsers.add_parser(
        "compare", help="compare two replays of the same bags: what changed, is it worse, where to look",
        description="Compare two `pam-ros replay` outputs of the same bag (OUT folders), or of the same bags "
                    "(fleet outputs OUT/<bag>/, matched by bag name): mask IoU per object over frames matched by "
                    "stamp, lost frames, semantics per task, geometry, timing, prompts. Exit status 0: no "
                    "regression; 1: a regression (reasons on the last lines); 2: inputs that cannot be compared.")
    compare.add_argument("baseline", type=Path, metavar="BASELINE", help="the replay output to compare against")
    compare.add_argument("candidate", type=Path, metavar="CANDIDATE", help="the replay output under test")
    add_check_arguments(compare)
    compare.set_defaults(run=run)


def add_check_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options of `compare`, shared with `replay --baseline` (one spelling for both)."""
    group = parser.add_argument_group(CHECKS_TITLE)
    group.add_argument("--min-iou", type=float, default=0.9, metavar="IOU",
                       help="a frame whose mask IoU with the baseline is below this is a regression (default 0.9)")
    group.add_argument("--max-lost-frames", type=int, default=0, metavar="N",
                       help="frames an object may be lost (score <= 0.5 or gone) where the baseline tracks it "
                            "(default 0)")
    group.add_argument("--semantics", choices=("report", "exact"), default="report",
                       help="report (default): changed texts are shown, never a regression; exact: any changed "
                            "text is a regression")
    group.add_argument("--max-slowdown", type=float, default=None, metavar="R",
                       help="a regression when the per-frame processing time exceeds R times the baseline's "
                            "(default: timing never fails)")
    group.add_argument("--json", type=Path, default=None, metavar="FILE", help="write every figure to FILE as JSON")
    group.add_argument("--report", type=Path, default=None, metavar="DIR",
                       help="write DIR/index.html (self-contained: plots and overlays as PNG files beside it)")
    return group


def run(args: argparse.Namespace) -> int:
    """Run `compare`; returns the exit status."""
    return run_comparison(args.baseline, args.candidate, args, command="compare")


def baseline_problem(args: argparse.Namespace) -> str:
    """Why `replay --baseline DIR` cannot compare with DIR, checked before the replay starts ("" if it can)."""
    from pam_ros.errors import PamError
    from pam_ros.replay.compare_runs import find_replay_output

    if args.baseline.resolve() == args.out.resolve():
        return f"--baseline {args.baseline} is the --out folder itself: give an earlier replay's folder"
    try:
        _settings(args)
        find_replay_output(args.baseline, "baseline")
    except PamError as err:
        return str(err)
    return ""


def run_comparison(baseline: Path, candidate: Path, args: argparse.Namespace, *, command: str) -> int:
    """Compare, write --json / --report, print the summary; the exit status (0, 1 or 2)."""
    from pam_ros.errors import PamError
    from pam_ros.replay.compare import compare_outputs
    from pam_ros.replay.compare_summary import format_comparison

    try:
        comparison = compare_outputs(baseline, candidate, _settings(args))
    except PamError as err:
        print(f"pam-ros {command}: error: {err}", file=sys.stderr)
        return 2
    for warning in comparison.warnings:
        print(warning, file=sys.stderr)
    try:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(comparison.to_json(), indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
            print(f"figures: {args.json}")
        if args.report is not None:
            from pam_ros.replay.compare_report import write_report

            print(f"report: {write_report(comparison, args.report)}")
    except OSError as err:
        print(f"pam-ros {command}: error: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print(format_comparison(comparison))
    return comparison.exit_code


def _settings(args: argparse.Namespace):
    from pam_ros.replay.compare import CompareSettings

    return CompareSettings(min_iou=args.min_iou, max_lost_frames=args.max_lost_frames, semantics=args.semantics,
                           max_slowdown=args.max_slowdown).validate()
