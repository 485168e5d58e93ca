"""The `pam-ros` command: describe, replay, demo, compare, bench, download, export-onnx.

Front end only: one module per command parses its arguments, calls the engine / model core and
prints results; shared options live in cli/options.py. torch loads only when a command runs, so
`pam-ros --help` stays fast.
"""
from __future__ import annotations

import argparse

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)
