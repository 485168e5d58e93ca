"""The `pam-ros` command: describe, replay, compare, bench, download, demo, export-onnx.

Front end only: it parses arguments, calls the engine / model core, and prints results.
"""
from __future__ import annotations

import argparse
import sys

from pam_ros import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pam-ros",
        description="Perceive Anything Model (SAM 2.1 + PAM semantics) for ROS 2 robots.",
    )
    parser.add_argument("--version", action="version", version=f"pam-ros {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from pam_ros import cli_bench, cli_compare, cli_describe, cli_download, cli_export, cli_replay

    cli_describe.add_parser(subparsers)
    cli_download.add_parser(subparsers)
    cli_export.add_parser(subparsers)
    cli_bench.add_parser(subparsers)
    cli_replay.add_parser(subparsers)
    cli_compare.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
