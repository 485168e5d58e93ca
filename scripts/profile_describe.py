#!/usr/bin/env python3
"""Where one whole `pam-ros describe` process spends its time: imports, model construction, weight loading,
the image encoder, generation, output (and the rest), in seconds and as a share of the process.

    python scripts/profile_describe.py test/fixtures/pam_tiny/inputs/img0.png --box 110 90 340 320 \
        --task recognize --task explain --task caption --model tiny --max-new-tokens 12 --json

Runs the command in this process (started fresh, so every import is paid here) with timers wrapped around
the functions of each phase. Imports are timed at the import machinery (`importlib._bootstrap._find_and_load`,
which the `import` statement looks up each time), outermost import only, and taken out of the phase they
happen in, so a phase's figure is its own work. The table goes to stderr, the command's output to stdout.
"""
from __future__ import annotations

import functools
import importlib._bootstrap as bootstrap
import sys
import time

START = time.perf_counter()
_import_seconds = 0.0
_import_depth = 0
_original_find_and_load = bootstrap._find_and_load


def _timed_find_and_load(name, import_):
    global _import_seconds, _import_depth
    if _import_depth:
        return _original_find_and_load(name, import_)
    _import_depth += 1
    t0 = time.perf_counter()
    try:
        return _original_find_and_load(name, import_)
    finally:
        _import_seconds += time.perf_counter() - t0
        _import_depth -= 1


bootstrap._find_and_load = _timed_find_and_load

totals: dict[str, float] = {}
_stack: list[list[float]] = []  # per running phase: [seconds its nested phases claimed]


def _timed(phase: str, fn):
    """fn, with its wall time less its imports and less its nested phases' own time added to `phase`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _stack.append([0.0])
        t0, i0 = time.perf_counter(), _import_seconds
        try:
            return fn(*args, **kwargs)
        finally:
            (nested,) = _stack.pop()
            own_and_nested = (time.perf_counter() - t0) - (_import_seconds - i0)
            totals[phase] = totals.get(phase, 0.0) + own_and_nested - nested
            if _stack:
                _stack[-1][0] += own_and_nested

    return wrapper


def _wrap(module_name: str, owner: str | None, attr: str, phase: str) -> None:
    module = sys.modules[module_name] if module_name in sys.modules else __import__(module_name, fromlist=["_"])
    target = getattr(module, owner) if owner else module
    original = target.__dict__[attr]
    if isinstance(original, (classmethod, staticmethod)):
        wrapped = type(original)(_timed(phase, original.__func__))
    else:
        wrapped = _timed(phase, original)
    setattr(target, attr, wrapped)


def main(argv: list[str]) -> int:
    from pam_ros import cli

    # (module, class or None, function, phase). A helper imported by name elsewhere is rewrapped there too.
    phases = (
        ("pam_ros.model.checkpoint", None, "load_tokenizer", "model construction"),
        ("pam_ros.model.checkpoint", None, "load_generation_config", "model construction"),
        ("pam_ros.model.checkpoint", None, "read_safetensors", "weight loading"),
        ("pam_ros.model.checkpoint", None, "load_module_weights", "weight loading"),
        ("pam_ros.model.sam2_checkpoint", None, "read_sam2_checkpoint", "weight loading"),
        ("pam_ros.model.sam2_checkpoint", None, "load_state_dict_strict", "weight loading"),
        ("pam_ros.model.sam2_backbone", "Sam2Backbone", "encode_image", "image encoder"),
        ("pam_ros.model.sam2_backbone", "Sam2Backbone", "decode", "mask decoder"),
        ("pam_ros.model.pam", "PamModel", "describe_batch", "generation"),
        ("pam_ros.cli.describe_output", None, "semantics_fields", "output"),
        ("pam_ros.cli.describe_output", None, "segmented_object_fields", "output"),
        ("pam_ros.cli.describe_output", None, "print_result", "output"),
    )
    for spec in phases:
        _wrap(*spec)
    for module_name in ("pam_ros.model.language", "pam_ros.model.perceiver", "pam_ros.model.sam2_backbone",
                        "pam_ros.model.pam", "pam_ros.cli.describe"):
        module = __import__(module_name, fromlist=["_"])
        for source_name, owner, attr, _ in phases:
            if owner is None and attr in module.__dict__:
                setattr(module, attr, getattr(sys.modules[source_name], attr))
    # model construction: what from_pretrained does that the timers above do not claim (building modules)
    _wrap("pam_ros.model.pam", "PamModel", "from_pretrained", "model construction")
    return _run(cli, argv)


def _run(cli, argv: list[str]) -> int:
    import json

    json_dumps = json.dumps
    json.dumps = _timed("output", json_dumps)
    code = cli.main(argv)
    sys.stdout.flush()
    end = time.perf_counter()
    total = end - START
    claimed = sum(totals.values())
    rest = total - _import_seconds - claimed
    rows = [("imports", _import_seconds)] + sorted(totals.items(), key=lambda kv: -kv[1]) + [("rest", rest)]
    print(f"{'phase':<28} {'seconds':>8} {'share':>7}", file=sys.stderr)
    for name, seconds in rows:
        print(f"{name:<28} {seconds:8.3f} {100 * seconds / total:6.1f}%", file=sys.stderr)
    print(f"{'whole process (python)':<28} {total:8.3f}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
