"""Describe one object with the *official* PAM code (Perceive-Anything/PAM), for side-by-side benchmarks.

Runs inside the venv made by `scripts/official_env.sh OFFICIAL_SRC` (its own transformers 4.39.3 etc.), never
in ours. It loads a PAM checkpoint the way test/fixtures/pam_tiny/README.md ("How the reference was run")
says the fixture's reference was made: `llava.model.builder.load_pretrained_model(..., multimodal=True,
torch_dtype="float32", device_map="auto", attn_implementation="eager")` on the CPU, with one patch: the
official SAM 2 tower hard-codes `configs/sam2.1/sam2.1_hiera_l.yaml` and `sam2.1_hiera_large.pt`, so
`sam2_encoder.build_sam2_video_predictor` is redirected to `--sam2-config` / `--sam2-checkpoint` (the
official builder still runs, with its own overrides) and device "auto" becomes "cpu".

Then it follows the official notebooks:
- image (notebooks/image_infer_example.ipynb): for each task, the qwen_2 conversation with the task's
  prompt, `tokenizer_image_token`, and one `model.generate(images=[[path]], visual_prompts=[box],
  vp_labels=[None], types=['image'], ...)` (SAM 2, perceiver and LLM run again for every task, as there);
- clip (notebooks/video_stream_infer_example.ipynb): the streaming caption template with history "None"
  over the clip's frames as one segment, `model.generate(images=[frame_paths], types=['video'], ...)`:
  SAM 2 tracks every frame at 1024 (propagate_in_video), the LLM reads PAM's 16 selected frames.
Greedy decoding (do_sample=False, num_beams=1), --max-new-tokens tokens. Prints one line per task:
`TASK<TAB>text` (and a JSON object with --json).

    .venv-official/bin/python scripts/official_describe.py --image test/fixtures/pam_tiny/inputs/img0.png \
        --box 110 90 340 320 --tasks explain recognize caption --max-new-tokens 12
    .venv-official/bin/python scripts/official_describe.py --video FRAMES_DIR --frames 20 --box 20 40 100 120
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "test" / "fixtures" / "pam_tiny"

# The official notebooks' task strings (image_infer_example / video_stream_infer_example), by our task names.
IMAGE_TASKS = {
    "recognize": "<image>\nClassify this subject and provide its label.",
    "explain": "<image>\nClassify this subject and provide the label and its definition.",
    "caption": "<image>\nProvide a concise caption for this subject.",
    "detailed_caption": "<image>\nProvide a comprehensive and detailed description for this subject.",
}
VIDEO_STREAM_TASK = "<image>\nProvide a caption for this subject in this video.\nPrevious caption: {history}"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image: the official image path, one generate call per task")
    src.add_argument("--video", help="a directory of frames: tracked at 1024 and captioned (streaming template)")
    p.add_argument("--box", nargs=4, type=int, required=True, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box in pixels (of the first frame for --video)")
    p.add_argument("--tasks", nargs="+", default=["explain", "recognize", "caption"], choices=sorted(IMAGE_TASKS),
                   help="image tasks, in order (default: explain recognize caption)")
    p.add_argument("--frames", type=int, default=0, help="use the first N frames of --video (default: all)")
    p.add_argument("--history", default="None", help="previous caption for the streaming template (default None)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--model", default=str(FIXTURE / "pam_tiny_model"), help="PAM checkpoint folder")
    p.add_argument("--sam2-config", default=str(FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.yaml"))
    p.add_argument("--sam2-checkpoint", default=str(FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.pt"))
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", action="store_true", help="also print one JSON object with texts and timings")
    return p.parse_args(argv)


def redirect_sam2(config: Path, checkpoint: Path) -> None:
    """Make the official SAM 2 tower build `config` / `checkpoint` on the CPU (the README's one patch)."""
    import llava.model.multimodal_encoder.sam2_encoder as sam2_encoder
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    official_builder = sam2_encoder.build_sam2_video_predictor

    def build(_config_file, _ckpt_path=None, device="cuda", **kwargs):
        # The official builder composes a hydra config by name: point hydra at the config's folder.
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=str(config.parent.resolve()), version_base="1.2")
        if device in (None, "auto"):
            device = "cpu"
        return official_builder(config.stem, str(checkpoint), device=device, **kwargs)

    sam2_encoder.build_sam2_video_predictor = build


def time_vision_tower(seconds: dict) -> None:
    """Add the seconds spent in the SAM 2 tower (forward / forward_video) to `seconds["sam2_s"]` (observe only)."""
    import llava.model.multimodal_encoder.sam2_encoder as sam2_encoder

    tower = sam2_encoder.SAM2VisionTower
    for name in ("forward", "forward_video"):
        original = getattr(tower, name)

        def timed(self, *a, _original=original, **k):
            start = time.perf_counter()
            try:
                return _original(self, *a, **k)
            finally:
                seconds["sam2_s"] = seconds.get("sam2_s", 0.0) + time.perf_counter() - start

        setattr(tower, name, timed)


def frame_paths(directory: str, count: int) -> list[str]:
    frames = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if count:
        if len(frames) < count:
            sys.exit(f"{directory} has {len(frames)} frames, fewer than --frames {count}")
        frames = frames[:count]
    return [str(p) for p in frames]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import get_model_name_from_path, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    t_import = time.perf_counter()
    redirect_sam2(Path(args.sam2_config), Path(args.sam2_checkpoint))
    tower_seconds: dict = {}
    time_vision_tower(tower_seconds)
    tokenizer, model, _, _ = load_pretrained_model(
        args.model, None, get_model_name_from_path(args.model), multimodal=True, torch_dtype="float32",
        device_map="auto", attn_implementation="eager")
    model.eval()
    t_load = time.perf_counter()

    def ids_for(task_prompt: str):
        conv = conv_templates["qwen_2"].copy()
        conv.append_message(conv.roles[0], task_prompt)
        conv.append_message(conv.roles[1], None)
        return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)

    def generate(task_prompt: str, images, kind: str) -> str:
        with torch.inference_mode():
            output_ids, _masks, _scores = model.generate(
                ids_for(task_prompt), images=images, visual_prompts=[list(args.box)], vp_labels=[None],
                types=[kind], do_sample=False, num_beams=1, max_new_tokens=args.max_new_tokens, use_cache=True)
        return tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()

    answers, seconds = {}, {}
    if args.image:
        for task in args.tasks:
            t = time.perf_counter()
            answers[task] = generate(IMAGE_TASKS[task], [[args.image]], "image")
            seconds[task] = time.perf_counter() - t
    else:
        frames = frame_paths(args.video, args.frames)
        t = time.perf_counter()
        answers["video_stream_caption"] = generate(VIDEO_STREAM_TASK.replace("{history}", args.history),
                                                   [frames], "video")
        seconds["video_stream_caption"] = time.perf_counter() - t
    t_end = time.perf_counter()

    for task, text in answers.items():
        print(f"{task}\t{text}")
    timings = {"import_s": round(t_import - T0, 3), "load_s": round(t_load - t_import, 3),
               "tasks_s": {k: round(v, 3) for k, v in seconds.items()},
               "sam2_tower_s": round(tower_seconds.get("sam2_s", 0.0), 3), "total_in_main_s": round(t_end - T0, 3)}
    print(f"timings: {json.dumps(timings)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"texts": answers, "timings": timings}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
