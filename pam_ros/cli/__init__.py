"""The `pam-ros` command: describe, replay, demo, compare, bench, download, export-onnx.

Front end only: one module per command parses its arguments, calls the engine / model core and
prints results; shared options live in cli/options.py. torch loads only when a command runs, so
`pam-ros --help` stays fast.
"""
from __future__ import annotations

import argparse
import gc

from pam_ros import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pam-ros",
        description="Perceive Anything Model (SAM 2.1 + PAM semantics) for ROS 2 robots.",
    )
    parser.add_argument("--version", action="version", version=f"pam-ros {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from pam_ros.cli import bench, compare, describe, download, export, replay

    for command in (describe, download, export, bench, replay, compare):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; argv None: this process's own command line (the console script, python -m)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if argv is None:
        # Loading torch, sam2 and transformers creates millions of long-lived objects, and with Python's
        # default thresholds (700, 10, 10) the collector ran about a thousand times, 0.6 s of a 5 s describe
        # on a CPU (72 times at 10,000). It finds the same garbage, a little later; 50,000 gained nothing more.
        gc.set_threshold(10_000, 10, 10)
    code = args.run(args)
    if argv is None:
        # The process exits next. Python's exit runs several garbage collections over every object torch
        # and transformers created (0.7 s of a 5 s describe on a CPU); frozen objects are skipped there.
        # Outputs are closed by now, and the interpreter's own teardown (atexit, flushing) still runs.
        gc.freeze()
    return code
