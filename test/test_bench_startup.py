"""`pam-ros bench startup --size tiny` end to end (numbers printed, not asserted): the cached random-weight
checkpoint is written once and loads both ways, and the last line is the issue's exact format."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^startup: first answer (\d+\.\d+) s, naive (\d+\.\d+) s, ratio X/Y = (\d+\.\d+)$")


def test_bench_startup_tiny_prints_the_ratio(tmp_path):
    env = {**__import__("os").environ, "PAM_ROS_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "pam_ros.cli", "bench", "startup", "--size", "tiny"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    fast, naive, ratio = (float(g) for g in match.groups())
    assert fast > 0 and naive > 0 and abs(ratio - fast / naive) < 0.01
    assert any(line.startswith("same mask and answer: yes") for line in lines)
    # written once, in the official layout, under the override
    folder = tmp_path / "cache" / "startup-tiny-v1"
    assert (folder / "ready").is_file() and (folder / "sam2.pt").is_file()
    config = json.loads((folder / "pam" / "config.json").read_text())
    assert config["model_type"] == "llava_qwen" and (folder / "pam" / "model.safetensors").is_file()


def test_cache_dir_respects_overrides(monkeypatch, tmp_path):
    from pam_ros.bench.startup import cache_dir

    monkeypatch.delenv("PAM_ROS_BENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "pam_ros" / "bench"
    monkeypatch.setenv("PAM_ROS_BENCH_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
