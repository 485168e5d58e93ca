"""`pam-ros compare` on hand-written replay outputs (no model): the figures, the exit status and its
reasons, bad inputs, fleet outputs, the report's files, and flat memory over a 100,000-frame pair.

The end-to-end checks with real replays of the tiny model are in test_compare_replay.py.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pam_ros.cli import main
from pam_ros.model.masks import mask_bbox_xywh, mask_to_rle

STAMP0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000
SIZE = (24, 32)  # height, width of the hand-written masks


# ----- helpers: replay outputs written by hand ------------------------------------------------------------
def box(x: int, y: int = 8, w: int = 8, h: int = 6, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[y:y + h, x:x + w] = True
    return mask


def obj(object_id: str, mask: np.ndarray, *, score: float = 0.9, caption: str = "a red cube",
        position: list[float] | None = None) -> dict:
    return {"object_id": object_id, "score": score, "roi": list(mask_bbox_xywh(mask)), "mask_rle": mask_to_rle(mask),
            "semantics": {"caption": caption}, "tracking_state": "tracked" if score > 0.5 else "lost",
            "geometry": None if position is None else {"frame_id": "cam", "position": position}}


def line(t: int, objects: list[dict], process_ms: float = 10.0, stamp0: int = STAMP0) -> str:
    return json.dumps({"frame": t, "stamp_ns": stamp0 + t * PERIOD, "objects": objects, "process_ms": process_ms},
                      separators=(",", ":"))


def write_run(out: Path, lines: list[str], *, bag: str = "/recordings/kitchen", refused: int = 0) -> Path:
    """A replay output folder: frames.jsonl and summary.json (what `pam-ros replay` writes)."""
    out.mkdir(parents=True)
    (out / "frames.jsonl").write_text("".join(text + "\n" for text in lines))
    summary = {"bag": bag, "image_topic": "/cam", "frames_processed": len(lines), "seconds": 0.01 * len(lines),
               "frames_per_second": 100.0, "prompts_refused": [{"frame": 0, "object_id": "x", "error": "no"}] * refused,
               "prompts_never_applied": []}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def cube_frames(frames: int = 6, *, moved: dict[int, int] | None = None, **kwargs) -> list[str]:
    """A cube moving right 2 px per frame; `moved`: frame -> extra x shift of its mask."""
    moved = moved or {}
    return [line(t, [obj("cube", box(2 + 2 * t + moved.get(t, 0)), **kwargs)]) for t in range(frames)]


def compare(capsys, base: Path, cand: Path, *options: str) -> tuple[int, str, str]:
    code = main(["compare", str(base), str(cand), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_lines(text: str, count: int) -> list[str]:
    return text.strip().splitlines()[-count:]


# ----- figures and verdict -------------------------------------------------------------------------------
def test_identical_runs_exit_0_with_every_iou_1_and_identical_semantics(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    cand = write_run(tmp_path / "cand", cube_frames())
    code, out, _ = compare(capsys, base, cand, "--json", str(tmp_path / "f.json"))
    assert code == 0
    assert out.strip().splitlines()[-1] == "no regression (1 bag, 1 object, 6 frames compared)"
    assert "bag kitchen: ok: 6 frames, 1 object" in out
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["regression"] is False and figures["reasons"] == []
    (bag,) = figures["bags"]
    (cube,) = bag["objects"]
    assert cube["iou"] == {"frames": 6, "mean": 1.0, "p5": 1.0, "min": 1.0, "min_frame": 0,
                           "below_min_iou": {"count": 0, "ranges": [], "frames_not_listed": 0}}
    assert cube["semantics"]["caption"]["identical_share"] == 1.0
    assert bag["image_size"] == [32, 24] and bag["frames"]["matched"] == 6
    assert bag["timing"]["baseline"]["mean_ms"] == pytest.approx(10.0) and bag["timing"]["slowdown"] == 1.0


def test_moved_mask_is_a_regression_naming_object_and_frames(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    cand = write_run(tmp_path / "cand", cube_frames(moved={2: 4, 3: 4}))  # half of the 8-px box overlaps
    code, out, _ = compare(capsys, base, cand, "--json", str(tmp_path / "f.json"))
    assert code == 1
    assert last_lines(out, 2) == [
        "REGRESSION: 1 reason",
        "regression: bag kitchen, object cube: 2 frames below IoU 0.9: frames 2-3 (lowest 0.333 at frame 2)"]
    cube = json.loads((tmp_path / "f.json").read_text())["bags"][0]["objects"][0]
    assert cube["iou"]["min"] == pytest.approx(24 / 72, abs=1e-4)  # 4x6 shared of 72 pixels
    assert cube["iou"]["mean"] == pytest.approx((4 + 2 * 24 / 72) / 6, abs=1e-4)
    assert cube["iou"]["below_min_iou"]["ranges"] == [[2, 3]]
    assert cube["regression"] is True and cube["reasons"] == [last_lines(out, 1)[0].removeprefix("regression: ")]
    # a lower threshold lets the same change pass
    assert compare(capsys, base, cand, "--min-iou", "0.3")[0] == 0


def test_lost_frames_count_against_max_lost_frames(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    lost = cube_frames()
    lost[4:6] = [line(t, [obj("cube", box(2 + 2 * t), score=0.2)]) for t in (4, 5)]
    cand = write_run(tmp_path / "cand", lost)
    code, out, _ = compare(capsys, base, cand)
    assert code == 1
    assert last_lines(out, 1) == ["regression: bag kitchen, object cube: lost in 2 frames the baseline tracks: "
                                  "frames 4-5 (--max-lost-frames 0)"]
    assert compare(capsys, base, cand, "--max-lost-frames", "2")[0] == 0
    # the other way round the candidate tracks more: better, not a regression
    code, out, _ = compare(capsys, cand, base)
    assert code == 0 and "lost in the baseline only: 2 frames (frames 4-5)" in out


def test_changed_texts_are_reported_and_fail_only_with_semantics_exact(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    changed = cube_frames(3) + [line(t, [obj("cube", box(2 + 2 * t), caption="a red box")]) for t in range(3, 6)]
    cand = write_run(tmp_path / "cand", changed)
    code, out, _ = compare(capsys, base, cand)
    assert code == 0
    assert 'caption 50% identical (first differs at frame 3: "a red cube" vs "a red box")' in out
    code, out, _ = compare(capsys, base, cand, "--semantics", "exact")
    assert code == 1
    assert last_lines(out, 1) == ['regression: bag kitchen, object cube: caption text differs in 3 frames: frames 3-5 '
                                  '(first at frame 3: "a red cube" vs "a red box")']


def test_object_missing_in_candidate_is_a_regression_a_new_one_is_listed(tmp_path, capsys):
    base = write_run(tmp_path / "base", [line(t, [obj("cube", box(2)), obj("ball", box(20))]) for t in range(3)])
    cand = write_run(tmp_path / "cand", [line(t, [obj("cube", box(2)), obj("cup", box(12, y=0))]) for t in range(3)])
    code, out, _ = compare(capsys, base, cand)
    assert code == 1
    assert last_lines(out, 2) == [
        "REGRESSION: 1 reason",
        "regression: bag kitchen, object ball: missing in the candidate (the baseline has it in 3 frames)"]
    assert "kitchen/cup: only in the candidate (3 frames)" in out


def test_geometry_difference_in_millimetres(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames(4, position=[0.1, 0.2, 1.0]))
    shifted = [line(t, [obj("cube", box(2 + 2 * t), position=[0.1, 0.2, 1.0 + 0.001 * (t + 1)])]) for t in range(4)]
    cand = write_run(tmp_path / "cand", shifted)
    code, out, _ = compare(capsys, base, cand, "--json", str(tmp_path / "f.json"))
    assert code == 0  # geometry is reported, never a regression on its own
    geometry = json.loads((tmp_path / "f.json").read_text())["bags"][0]["objects"][0]["geometry"]
    assert geometry["frames"] == 4
    assert geometry["position_difference_mm"]["max"] == pytest.approx(4.0, abs=1e-6)
    assert geometry["position_difference_mm"]["median"] == pytest.approx(2.0, rel=0.03)
    assert "position moved 2.0 mm median, 4.0 mm max" in out


def test_timing_fails_only_beyond_max_slowdown_and_prompts_are_counted(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    slow = [line(t, [obj("cube", box(2 + 2 * t))], process_ms=25.0) for t in range(6)]
    cand = write_run(tmp_path / "cand", slow, refused=2)
    code, out, _ = compare(capsys, base, cand)
    assert code == 0 and "10.0 -> 25.0 ms/frame (2.50x), prompts refused 0 -> 2, never applied 0 -> 0" in out
    code, out, _ = compare(capsys, base, cand, "--max-slowdown", "2")
    assert code == 1 and last_lines(out, 1) == [
        "regression: bag kitchen: processing is 2.50x the baseline's time per frame (10.0 -> 25.0 ms), more than "
        "--max-slowdown 2"]
    assert compare(capsys, base, cand, "--max-slowdown", "3")[0] == 0


# ----- bad input: exit 2 with one sentence naming the file ---------------------------------------------------
def test_not_a_replay_output(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    base = write_run(tmp_path / "base", cube_frames())
    code, out, err = compare(capsys, base, tmp_path / "empty")
    assert code == 2 and out == ""
    assert err.strip() == (f"pam-ros compare: error: the candidate {tmp_path / 'empty'} is not a replay output: it has "
                           f"no frames.jsonl, nor <bag>/frames.jsonl folders (write one with pam-ros replay --out)")
    assert compare(capsys, tmp_path / "nowhere", base)[0] == 2


def test_different_bags_exit_2_naming_both(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    other = write_run(tmp_path / "other", cube_frames(), bag="/recordings/garage.mcap")
    code, _, err = compare(capsys, base, other)
    assert code == 2 and "are replays of different bags: kitchen and garage" in err
    later = write_run(tmp_path / "later", [line(t, [], stamp0=STAMP0 + 7) for t in range(6)])
    code, _, err = compare(capsys, base, later)
    assert code == 2 and "different bags" in err
    assert f"kitchen first stamped {STAMP0} ns and kitchen first stamped {STAMP0 + 7} ns" in err


def test_truncated_last_line_is_compared_up_to_it_with_a_warning(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    cand = write_run(tmp_path / "cand", cube_frames())
    frames = cand / "frames.jsonl"
    frames.write_bytes(frames.read_bytes()[:-40])  # an interrupted replay: the last line cut off
    code, out, err = compare(capsys, base, cand, "--json", str(tmp_path / "f.json"))
    assert code == 0
    assert f"warning: the candidate's {frames} ends in a cut-off line 6 (an interrupted replay?): compared up to " \
           f"the line before it" in err
    assert "warning: bag kitchen: 1 frame of the baseline without a frame of the same stamp in the candidate " \
           "(frame 5): not compared" in err
    assert json.loads((tmp_path / "f.json").read_text())["bags"][0]["frames"]["matched"] == 5


def test_damaged_line_before_the_end_exits_2(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    lines = cube_frames()
    lines[2] = lines[2][:30]
    cand = write_run(tmp_path / "cand", lines)
    code, _, err = compare(capsys, base, cand)
    assert code == 2
    assert f"the candidate's {cand / 'frames.jsonl'} is damaged at line 3 (not a frames.jsonl line)" in err


def test_different_image_sizes_exit_2_naming_both_sizes(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    big = write_run(tmp_path / "big", [line(t, [obj("cube", box(2 + 2 * t, size=(48, 64)))]) for t in range(6)])
    code, _, err = compare(capsys, base, big)
    assert code == 2
    assert "the baseline's masks are 32x24 pixels" in err and "and the candidate's 64x48" in err
    assert "never resized" in err


def test_bad_options_and_mixed_layouts_exit_2(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    fleet = tmp_path / "fleet"
    write_run(fleet / "kitchen", cube_frames())
    code, _, err = compare(capsys, base, fleet)
    assert code == 2 and "holds the replay of one bag and the candidate" in err
    code, _, err = compare(capsys, base, base, "--min-iou", "1.5")
    assert code == 2 and "--min-iou must be between 0 and 1, got 1.5" in err


# ----- fleet outputs ---------------------------------------------------------------------------------------
def test_fleet_pair_with_one_regressed_bag_names_that_bag_only(tmp_path, capsys):
    base, cand = tmp_path / "base", tmp_path / "cand"
    for name in ("a", "b", "c"):
        write_run(base / name, cube_frames(), bag=f"/bags/{name}")
    write_run(cand / "a", cube_frames(), bag="/bags/a")
    write_run(cand / "b", cube_frames(moved={1: 6}), bag="/bags/b")
    write_run(cand / "c", cube_frames(), bag="/bags/c")
    code, out, _ = compare(capsys, base, cand)
    assert code == 1
    reasons = [text for text in out.splitlines() if text.startswith("regression: ")]
    assert reasons == ["regression: bag b, object cube: 1 frame below IoU 0.9: frame 1 (lowest 0.143 at frame 1)"]
    assert "bag a: ok" in out and "bag b: REGRESSION" in out and "bag c: ok" in out

    shutil.rmtree(cand / "c")
    write_run(cand / "d", cube_frames(), bag="/bags/d")
    code, out, _ = compare(capsys, base, cand)
    assert code == 1
    assert last_lines(out, 1) == [f"regression: bag c: missing in the candidate {cand} (no c/frames.jsonl)"]
    assert "bag d: only in the candidate (not compared)" in out


# ----- the report --------------------------------------------------------------------------------------------
class ReferencedFiles(HTMLParser):
    """Every src/href of a page, and whether it holds scripts or styles from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"])
        if "href" in values:
            self.links.append(values["href"])


def check_report(index: Path) -> ReferencedFiles:
    """index.html parses, references no other site and no script, and every image it shows is a PNG
    file beside it."""
    page = ReferencedFiles()
    page.feed(index.read_text(encoding="utf-8"))
    assert "script" not in page.tags and "link" not in page.tags, "self-contained: inline CSS, no scripts"
    assert all(link.startswith("#") for link in page.links), page.links
    assert page.images, "the report shows plots and overlays"
    for src in page.images:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+\.png", src), src
        with Image.open(index.parent / src) as image:
            assert image.format == "PNG" and image.width > 100
    return page


def test_report_shows_the_regression_with_files_beside_it(tmp_path, capsys):
    base = write_run(tmp_path / "base", cube_frames())
    cand = write_run(tmp_path / "cand", cube_frames(moved={2: 4, 3: 4}))
    code, out, _ = compare(capsys, base, cand, "--report", str(tmp_path / "report"))
    assert code == 1 and f"report: {tmp_path / 'report' / 'index.html'}" in out
    page = check_report(tmp_path / "report" / "index.html")
    text = (tmp_path / "report" / "index.html").read_text()
    assert "REGRESSION" in text and "object cube: 2 frames below IoU 0.9: frames 2-3" in text
    assert '<tr class="regressed"><td>cube</td>' in text, "the object's row is marked"
    assert [src for src in page.images if src.endswith("_iou.png")] == ["bag0_kitchen_iou.png"]
    worst = [src for src in page.images if "_frame" in src]
    assert worst == ["bag0_kitchen_frame2.png", "bag0_kitchen_frame3.png"], "worst first, only changed frames"
    with Image.open(tmp_path / "report" / worst[0]) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    changed = np.all(pixels == (255, 0, 255), axis=1).sum()
    scale = image.width // (2 * SIZE[1])
    assert changed == 2 * 4 * 6 * scale * scale, "4x6 pixels only in each run, magenta on both sides"


def test_help_and_describe_never_import_matplotlib():
    probe = ("import sys\nfrom pam_ros import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('matplotlib', 'torch', 'sam2') if m in sys.modules))\n")
    for args in (["--help"], ["compare", "--help"], ["replay", "--help"], ["describe", "--help"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "[]", (args, out.stdout[-300:])


# ----- a long pair: streamed, flat memory ----------------------------------------------------------------------
RLE = '{"size":[24,32],"counts":[300,20,448]}'
RLE_SHIFTED = '{"size":[24,32],"counts":[310,20,438]}'  # IoU 10/30
LONG_LINE = ('{"frame":%d,"stamp_ns":%d,"objects":[{"object_id":"cube","score":0.9,"roi":[12,9,1,20],'
             '"mask_rle":%s,"semantics":{"caption":"%s"},"tracking_state":"tracked","geometry":null}],'
             '"process_ms":%.1f}\n')


def write_long_run(out: Path, frames: int, *, shifted_every: int = 0) -> Path:
    """frames.jsonl of `frames` frames written straight as text (100,000 frames in well under a second)."""
    out.mkdir(parents=True)
    with (out / "frames.jsonl").open("w") as stream:
        for start in range(0, frames, 10_000):
            stream.write("".join(
                LONG_LINE % (t, STAMP0 + t * PERIOD,
                             RLE_SHIFTED if shifted_every and t % shifted_every == 0 else RLE,
                             "a cube" if not shifted_every or t % shifted_every else "a box", 5.0 + t % 7)
                for t in range(start, min(frames, start + 10_000))))
    (out / "summary.json").write_text(json.dumps({"bag": "/recordings/week"}))
    return out


def memory_kb(key: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset_peak_memory) of this process, in kB."""
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith(key + ":"):
            return int(text.split()[1])
    raise KeyError(key)


def reset_peak_memory() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def peak_growth_of_comparison(tmp_path: Path, frames: int) -> tuple[int, dict]:
    """How far (bytes) this process's peak resident memory rose above its level before comparing a pair of
    `frames` frames (the candidate's masks and texts changed on every 1000th frame), and the figures."""
    from pam_ros.replay.compare import compare_outputs

    base = write_long_run(tmp_path / f"base{frames}", frames)
    cand = write_long_run(tmp_path / f"cand{frames}", frames, shifted_every=1000)
    reset_peak_memory()
    before = memory_kb("VmRSS")
    figures = compare_outputs(base, cand).to_json()
    return 1024 * (memory_kb("VmHWM") - before), figures


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures memory through Linux procfs")
def test_memory_is_flat_in_the_number_of_frames(tmp_path):
    peak_growth_of_comparison(tmp_path, 1000)  # every module imported (sam2's RLE code too) before measuring
    small_growth, _ = peak_growth_of_comparison(tmp_path, 10_000)
    growth, figures = peak_growth_of_comparison(tmp_path, 100_000)
    (bag,) = figures["bags"]
    (cube,) = bag["objects"]
    assert bag["frames"]["matched"] == 100_000 and bag["timing"]["baseline"]["frames"] == 100_000
    assert cube["iou"]["below_min_iou"]["count"] == 100 and cube["iou"]["min"] == pytest.approx(1 / 3, abs=1e-4)
    assert cube["iou"]["below_min_iou"]["ranges"][:2] == [[0, 0], [1000, 1000]]
    assert cube["semantics"]["caption"]["frames_differing"]["count"] == 100
    print(f"peak memory growth of the comparison: {small_growth / 1e6:.2f} MB for 10,000 frames, "
          f"{growth / 1e6:.2f} MB for 100,000 frames")
    # Holding as little as one float per frame would add 2 MB or more here (100,000 floats measured 2.4 MB).
    assert growth < 1_000_000 and growth < small_growth + 1_000_000
