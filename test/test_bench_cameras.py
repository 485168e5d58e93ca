"""`pam-ros bench cameras` plumbing (numbers are printed, not asserted): a row's process serves its
cameras over one model, and the last line is the issue's exact format."""
from __future__ import annotations

from pam_ros.bench.cameras import CamerasRow, run_in_process, summary_line


def test_one_process_serves_every_camera_over_one_model():
    out = run_in_process("tiny", cameras=2, frames=1)
    assert out["frames"] == 2 and out["seconds"] > 0 and out["resident_mib"] > 100


def test_the_last_line_compares_measured_rows():
    rows = [CamerasRow(2, "one process", 900.0, 1.0), CamerasRow(2, "2 processes", 1800.0, 0.5)]
    assert summary_line(rows) == "cameras: 2 in one process 900 MiB, 2 processes 1800 MiB, ratio X/Y = 0.50"
    skipped = [rows[0], CamerasRow(2, "2 processes", 0.0, 0.0, skipped="needs about 30000 MiB")]
    assert "not run (needs about 30000 MiB)" in summary_line(skipped)
