"""Replaying one bag's several cameras over one model: each camera's images through its own pipeline of a
PerceptionHost, its outputs in OUT/<camera>/ (the very layout a single-camera replay writes).

    pam-ros replay BAG --out OUT --camera front=/head/color/image_raw --camera wrist=/wrist/color/image_raw

The model is loaded once; the cameras are replayed one after another, each deterministically, so each
camera's outputs are byte for byte what a single-camera replay of that topic writes (the per-frame timing
aside). A prompts-file entry with `camera:` is for that camera, one without is for every camera; a
recorded Prompt topic is a camera's when its name ends in `<camera>/prompts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pam_ros.errors import InputError


@dataclass(frozen=True)
class CameraTopics:
    """One camera of a bag: its name and topics (depth and CameraInfo optional)."""

    name: str
    image_topic: str
    depth_topic: str = ""
    camera_info_topic: str = ""


def parse_camera(text: str) -> CameraTopics:
    """NAME=IMAGE_TOPIC[,DEPTH_TOPIC[,INFO_TOPIC]] (InputError saying what is wrong)."""
    name, sep, topics = text.partition("=")
    parts = [part.strip() for part in topics.split(",")] if sep else []
    if not name.strip() or not parts or not parts[0] or len(parts) > 3:
        raise InputError(f"--camera {text!r}: give NAME=IMAGE_TOPIC[,DEPTH_TOPIC[,INFO_TOPIC]]")
    parts += [""] * (3 - len(parts))
    return CameraTopics(name.strip(), *parts)


def camera_prompt_topics(prompt_topics: Sequence[str], camera: str) -> list[str]:
    """The recorded Prompt topics that are this camera's: `<camera>/prompts`, in any namespace."""
    return [topic for topic in prompt_topics if topic.rstrip("/").split("/")[-2:] == [camera, "prompts"]]


def run_cameras_replay(bag_path: str | Path, out_dir: str | Path, host, cameras: Sequence[CameraTopics], *,
                       prompt_file: str | Path | None = None, **options) -> dict:
    """Replay each camera of the bag into out_dir/<camera>/ with its pipeline of `host`: {camera: report}.
    options: run_replay's (overwrite, overlay_pngs, mask_encoding, progress, model_name)."""
    from pam_ros.replay.bag import BagInput
    from pam_ros.replay.runner import run_replay

    names = tuple(camera.name for camera in cameras)
    with BagInput(bag_path, cameras[0].image_topic) as bag:
        every_prompt_topic = list(bag.prompt_topics)
    reports = {}
    for camera in cameras:
        reports[camera.name] = run_replay(
            bag_path, Path(out_dir) / camera.name, host[camera.name], image_topic=camera.image_topic,
            prompt_file=prompt_file, depth_topic=camera.depth_topic or None,
            camera_info_topic=camera.camera_info_topic or None, camera=camera.name, cameras=names,
            prompt_topics=camera_prompt_topics(every_prompt_topic, camera.name), **options)
    return reports
