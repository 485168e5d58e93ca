"""README.md and docs/ work as written: what a reader copies from them runs, and what they name exists.

- every `ros2 service call` / `ros2 topic pub` / `ros2 action send_goal` line fills its message from its
  YAML as `ros2` would (wrong field names or types fail);
- every `pam-ros` command in a code block parses with the real parser, and those with `--model tiny` run
  (unless the block is marked `<!-- docs-test: not run (REASON) -->`);
- every repository path and relative link exists;
- the node's parameter table and config/pam_ros.yaml are what scripts/gen_param_docs.py writes;
- the README is the front door (<= 10,000 characters, the two commands first, links every page) and every
  benchmark figure sits in a dated row.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
NOT_RUN = re.compile(r"<!--\s*docs-test:\s*not run\b")
ROS_COMMAND = re.compile(r"ros2 (service call|topic pub|action send_goal)\b")
# options of those ros2 verbs that take a value (skipped with it to find the positional arguments)
ROS_VALUE_OPTIONS = {"-r", "--rate", "-p", "--print", "-t", "--times", "--qos-profile", "--qos-depth",
                     "--qos-history", "--qos-reliability", "--qos-durability", "--node-name", "--keep-alive",
                     "-w", "--wait-matching-subscriptions", "--max-wait-time-secs", "--timeout"}
TOP_LEVEL = ("pam_ros", "docs", "test", "scripts", "config", "launch", "models", "msg", "srv", "action", "rviz",
             "demo", "requirements", "cmake", ".ci")
REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:%s)/[\w./*-]*)" % "|".join(re.escape(t) for t in TOP_LEVEL))
ROS_TYPE = re.compile(r"^pam_ros/(?:(?:msg|srv|action)/)?[A-Z]\w*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    text: str
    not_run: bool = False

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def logical_lines(page: Path):
    """(line number, text, in a code block, block marked not run) with backslash continuations joined."""
    in_block, not_run, pending, start, previous = False, False, "", 0, ""
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            if not in_block:
                not_run = bool(NOT_RUN.search(previous))
            in_block = not in_block
            previous = line
            continue
        if line.strip():
            previous = line
        if not pending:
            start = number
        if in_block and line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line, in_block, not_run
        pending = ""


def ros_snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        for number, line, in_block, _ in logical_lines(page):
            for match in ROS_COMMAND.finditer(line):
                text = line[match.start():]
                if not in_block and "`" in text:  # inline code: up to its closing backtick
                    text = text.split("`", 1)[0]
                    if len(shlex.split(text)) < 5:  # prose naming the verb ("every `ros2 topic pub` line")
                        continue
                found.append(Snippet(page, number, text))
    return found


def pam_ros_snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        for number, line, in_block, not_run in logical_lines(page):
            if in_block and line.strip().startswith("pam-ros "):
                found.append(Snippet(page, number, line.strip(), not_run))
    return found


def ros_arguments(text: str) -> tuple[str, str]:
    """(type, YAML) of a ros2 service call / topic pub / action send_goal command line."""
    words = shlex.split(text, comments=True)
    positional, skip = [], False
    for word in words[3:]:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in ROS_VALUE_OPTIONS
        else:
            positional.append(word)
    if len(positional) < 2:
        raise AssertionError(f"expected NAME TYPE [VALUES] after {' '.join(words[:3])}: {text}")
    return positional[1], positional[2] if len(positional) > 2 else ""


def test_the_docs_show_ros_and_pam_ros_commands():
    """The extraction itself works: the README's first prompt and the tiny describe are found."""
    ros = {str(s): s.text for s in ros_snippets()}
    assert any("ros2 service call /manage_objects" in text for text in ros.values()), ros
    assert any(s.page.name == "README.md" and "--model tiny" in s.text for s in pam_ros_snippets())


@pytest.mark.parametrize("snippet", ros_snippets(), ids=str)
def test_ros_command_yaml_fills_its_message(snippet):
    from ros_helpers.message_yaml import message_from_yaml

    type_name, values = ros_arguments(snippet.text)
    try:
        message_from_yaml(type_name, values)
    except Exception as error:  # noqa: BLE001 - every failure is the reader's failure
        pytest.fail(f"{snippet}: {type_name} {values!r} is not accepted: {type(error).__name__}: {error}")


def _is_synopsis(words: list[str]) -> bool:
    return any(word.startswith("[") or word in ("|", "...") for word in words)


@pytest.mark.parametrize("snippet", pam_ros_snippets(), ids=str)
def test_pam_ros_command_parses(snippet):
    from pam_ros.cli import build_parser

    words = shlex.split(snippet.text, comments=True)[1:]
    if _is_synopsis(words):
        pytest.skip("a synopsis, not a command")
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(words)
    except SystemExit as stop:
        if stop.code:
            pytest.fail(f"{snippet}: `{snippet.text}` does not parse: {errors.getvalue().strip()}")


def _tiny_commands() -> list[Snippet]:
    return [s for s in pam_ros_snippets() if re.search(r"--model\s+tiny\b", s.text)]


@pytest.mark.parametrize("snippet", _tiny_commands(), ids=str)
def test_pam_ros_command_with_the_tiny_model_runs(snippet, tmp_path):
    if snippet.not_run:
        pytest.skip("marked: docs-test: not run")
    for name in ("test", "demo"):  # the commands name files of the checkout, relative to its root
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    words = shlex.split(snippet.text, comments=True)
    done = subprocess.run([sys.executable, "-m", "pam_ros.cli", *words[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{snippet}: `{snippet.text}` exited {done.returncode}:\n{done.stderr[-3000:]}"


def repository_paths(page: Path) -> list[tuple[int, str]]:
    """(line, path) of every repository path and relative link a page names."""
    found = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        for match in REPO_PATH.finditer(line):
            path = match.group(1).rstrip(".,:;")
            if not ROS_TYPE.match(path):
                found.append((number, path))
        for match in LINK.finditer(line):
            target = match.group(1).split("#", 1)[0]
            if target and not re.match(r"^[a-z]+:", target):
                found.append((number, str((page.parent / target).resolve().relative_to(ROOT))))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_exists(page):
    missing = []
    for number, path in repository_paths(page):
        exists = any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
        if not exists:
            missing.append(f"{page.relative_to(ROOT)}:{number}: {path}")
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def test_parameter_table_and_config_are_generated_from_the_code():
    sys.path.insert(0, str(ROOT / "scripts"))
    import gen_param_docs

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = gen_param_docs.main(["--check"])
    assert code == 0, errors.getvalue()


def test_readme_is_the_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 10_000, f"README.md has {len(text)} characters (at most 10,000)"
    first_block = text.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"], commands  # .ci/run runs `make test`
    unlinked = [page.name for page in DOCS if f"(docs/{page.name})" not in text]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_every_benchmark_figure_is_in_a_dated_row():
    rows = [line for line in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line) and not line.startswith("| date |")]
    assert rows
    undated = [row for row in rows if not re.match(r"^\| \d{4}-\d\d-\d\d \| [0-9a-f]{7,40} \| [^|]+ \| `[^`]+`", row)]
    assert not undated, "rows without date | commit | machine | `command`:\n" + "\n".join(undated)
