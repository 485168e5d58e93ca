"""scripts/bench_vs_official.py without the official code (CI has no copy): its CLI, clip and fixture look-up."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_vs_official.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_vs_official", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_help_runs():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--runs" in done.stdout and "--official-python" in done.stdout


def test_missing_official_venv_is_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--official-python", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "official_env.sh" in done.stderr


def test_clip_is_the_fixture_clip_forward_then_back(tmp_path):
    bench = _module()
    bench.build_clip(20, tmp_path)
    frames = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in frames] == [f"{i:05d}.png" for i in range(20)]
    source = ROOT / "test" / "fixtures" / "pam_tiny" / "inputs" / "video"
    assert frames[15].read_bytes() == (source / "00015.png").read_bytes()
    assert frames[16].read_bytes() == (source / "00014.png").read_bytes()
    assert frames[19].read_bytes() == (source / "00011.png").read_bytes()


def test_fixture_texts_of_the_default_case():
    bench = _module()
    texts = bench.fixture_texts(str(ROOT / "test" / "fixtures" / "pam_tiny" / "inputs" / "img0.png"),
                                [110, 90, 340, 320])
    assert set(texts) == {"recognize"} and texts["recognize"]
    assert bench.fixture_texts(str(ROOT / "test" / "fixtures" / "pam_tiny" / "inputs" / "img0.png"),
                               [0, 0, 10, 10]) == {}
