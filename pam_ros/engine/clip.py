"""Offline clips: read a clip's frames, track one object through it, describe it with PAM (no ROS).

A clip is a directory of frames (sorted by file name), an animated GIF or, when PyAV is installed, a
video file. `track_clip` prompts the object on the first frame and tracks it through every frame
with the StreamingTracker (the same code the live engine runs); `describe_clip` then runs PAM tasks:
video tasks on PAM's 16 selected frames of the clip (`[0] + linspace(1, n-1, 15)`, fixture quirk 5),
image tasks on the first (prompted) frame.

Memory: a clip is decoded frame by frame, and only the PAM features of the frames PAM's video mode
reads are kept (the clip's length is known up front, so these are exactly the official frames);
per-frame masks are kept as COCO RLE.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pam_ros.engine.tracker import StreamingTracker
from pam_ros.engine.types import TrackingState
from pam_ros.errors import ClipError, PromptError, TaskError
from pam_ros.model.masks import mask_to_rle, rle_to_mask, score_from_logit
from pam_ros.model.pam import RegionFeatures
from pam_ros.model.tasks import VIDEO_FRAMES, canonical_task, is_video_task, select_video_frames

__all__ = ["ClipError", "ClipFrame", "ClipSource", "TrackedClip", "check_clip_tasks", "describe_clip",
           "is_clip_path", "open_clip", "select_video_frames", "track_clip"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
GIF_SUFFIXES = (".gif",)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
SUPPORTED_CLIPS = "a directory of frames (PNG/JPEG/BMP/WebP/TIFF, sorted by file name), an animated GIF"



def is_clip_path(path: str | Path) -> bool:
    """Whether `path` names a clip (directory, GIF or video file) rather than a single image."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in GIF_SUFFIXES + VIDEO_SUFFIXES


# --------------------------------------------------------------------------------------------
# Reading clips
# --------------------------------------------------------------------------------------------
class ClipSource:
    """The frames of a clip on disk, decoded lazily as HxWx3 uint8 RGB arrays of one size.

    `num_frames` and `size_wh` are known after opening (the first frame is decoded to check it).
    """

    def __init__(self, path: Path, num_frames: int, size_wh: tuple[int, int], frames: Callable[[], Iterator]):
        self.path = path
        self.num_frames = num_frames
        self.size_wh = size_wh
        self._frames = frames

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, frame in enumerate(self._frames()):
            if (frame.shape[1], frame.shape[0]) != self.size_wh:
                raise ClipError(
                    f"{self.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, but the clip's first "
                    f"frame is {self.size_wh[0]}x{self.size_wh[1]}; all frames must have one size"
                )
            yield frame

    def first_frame(self) -> np.ndarray:
        for frame in self._frames():
            return frame
        raise ClipError(f"{self.path} holds no frames")


def open_clip(path: str | Path) -> ClipSource:
    """A clip's frames (see the module doc for the formats); ClipError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ClipError(f"clip not found: {path}")
    if path.is_dir():
        source = _open_frame_directory(path)
    elif path.suffix.lower() in GIF_SUFFIXES:
        source = _open_gif(path)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        source = _open_video_file(path)
    else:
        raise ClipError(f"{path} is not a clip; clips are {SUPPORTED_CLIPS}, or a video file "
                        f"({', '.join(VIDEO_SUFFIXES)}) when PyAV is installed")
    first = source.first_frame()
    source.size_wh = (first.shape[1], first.shape[0])
    return source


def _read_rgb_frame(file: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.load()
            if img.mode != "RGB":
                # the same rule as single images: no silent colour conversion of what the user gave
                raise ClipError(f"frame {file} is a {img.mode} image; frames must be 8-bit RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise ClipError(f"frame {file} is not a readable image ({exc})") from None


def _open_frame_directory(folder: Path) -> ClipSource:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ClipError(f"{folder} holds no frames (image files named *{', *'.join(FRAME_SUFFIXES)})")
    # headers only (cheap): a bad frame is reported before any model is loaded
    size_wh = None
    for file in files:
        try:
            with Image.open(file) as img:
                mode, size = img.mode, img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise ClipError(f"frame {file} is not a readable image ({exc})") from None
        if mode != "RGB":
            raise ClipError(f"frame {file} is a {mode} image; frames must be 8-bit RGB")
        if size_wh is not None and size != size_wh:
            raise ClipError(f"frame {file} is {size[0]}x{size[1]}, but the clip's first frame is "
                            f"{size_wh[0]}x{size_wh[1]}; all frames must have one size")
        size_wh = size
    return ClipSource(folder, len(files), size_wh, lambda: (_read_rgb_frame(f) for f in files))


def _open_gif(file: Path) -> ClipSource:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            count = int(getattr(img, "n_frames", 1))
    except (UnidentifiedImageError, OSError) as exc:
        raise ClipError(f"{file} is not a readable GIF ({exc})") from None

    def frames() -> Iterator[np.ndarray]:
        with Image.open(file) as img:
            for frame in ImageSequence.Iterator(img):
                # GIF frames are palette images by format; RGB is what they show
                yield np.asarray(frame.convert("RGB"), dtype=np.uint8).copy()

    return ClipSource(file, count, (0, 0), frames)


def _open_video_file(file: Path) -> ClipSource:
    try:
        import av  # PyAV: optional, not a dependency of pam_ros
    except ImportError:
        raise ClipError(
            f"cannot decode {file}: video files need PyAV, which is not installed; "
            f"supported here: {SUPPORTED_CLIPS}"
        ) from None

    def frames() -> Iterator[np.ndarray]:
        try:
            with av.open(str(file)) as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, IndexError) as exc:  # IndexError: no video stream
            raise ClipError(f"{file} is not a readable video ({exc})") from None

    count = sum(1 for _ in frames())  # exact count: container headers may not carry one
    if count == 0:
        raise ClipError(f"{file} holds no video frames")
    return ClipSource(file, count, (0, 0), frames)


# --------------------------------------------------------------------------------------------
# Tracking a clip
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipFrame:
    """The object in one frame of a clip."""

    index: int
    object_score_logit: float
    score: float  # sigmoid(object_score_logit)
    state: TrackingState  # PROMPTED (frame 0), TRACKED or LOST
    roi: tuple[int, int, int, int]  # x, y, w, h of the mask's bounding box (zeros if empty)
    mask_area: int
    mask_rle: dict  # COCO uncompressed RLE at the frame's resolution (pam_ros.model.masks)

    def mask(self) -> np.ndarray:
        return rle_to_mask(self.mask_rle)


@dataclass
class TrackedClip:
    """One object tracked through a clip, with the PAM features its descriptions read."""

    size_wh: tuple[int, int]
    frames: list[ClipFrame]  # every frame, in order
    first_features: RegionFeatures  # the prompted frame's (what image tasks describe)
    video_features: list[RegionFeatures]  # PAM's selected frames (empty for clips under 16 frames)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def track_clip(backbone, frames: Iterable[np.ndarray], prompt, *, num_frames: int,
               on_frame: Callable[[ClipFrame], None] | None = None) -> TrackedClip:
    """Prompt the object on the first frame and track it through every frame.

    backbone: a Sam2Backbone (e.g. PamModel.backbone). num_frames: the clip's length, needed up
    front to keep exactly the frames PAM's video mode reads. on_frame(frame) is called after each
    frame (progress). Raises PromptError if the prompt does not fit the first frame, ClipError if the
    clip is empty or its length differs from num_frames.
    """
    if num_frames < 1:
        raise ClipError("the clip has no frames")
    wanted = set(select_video_frames(num_frames)) if num_frames >= VIDEO_FRAMES else set()
    # the tracker's own feature history is not used here: the clip's selection is known exactly
    tracker = StreamingTracker(backbone, keep_feature_frames=2, feature_dtype=None)  # as decoded: official parity
    object_id = tracker.add_object(prompt)
    clip_frames: list[ClipFrame] = []
    kept: dict[int, RegionFeatures] = {}
    first: RegionFeatures | None = None
    size_wh = (0, 0)
    for index, image in enumerate(frames):
        if index >= num_frames:
            raise ClipError(f"the clip has more frames than the {num_frames} announced")
        result = tracker.step(image, stamp_ns=index)
        if result.rejected_prompts:
            raise PromptError(result.rejected_prompts[0][1])
        track = result.by_id()[object_id]
        if index == 0:
            first = track.features
            size_wh = (result.image_hw[1], result.image_hw[0])
        if index in wanted:
            kept[index] = track.features
        frame = ClipFrame(
            index=index,
            object_score_logit=track.object_score_logit,
            score=score_from_logit(track.object_score_logit),
            state=track.state,
            roi=tuple(track.roi),
            mask_area=track.mask_area,
            mask_rle=mask_to_rle(track.mask),
        )
        clip_frames.append(frame)
        if on_frame is not None:
            on_frame(frame)
    if len(clip_frames) != num_frames:
        raise ClipError(f"the clip has {len(clip_frames)} frames, not the {num_frames} announced")
    return TrackedClip(size_wh, clip_frames, first, [kept[i] for i in sorted(kept)])



# --------------------------------------------------------------------------------------------
# Describing a clip
# --------------------------------------------------------------------------------------------
def check_clip_tasks(tasks: Sequence[str], num_frames: int, *, history: str | None = None,
                     free_prompt: bool = False) -> list[str]:
    """Canonical task names for a clip of `num_frames`; TaskError/ClipError before any model work.

    Video tasks (and a free prompt, which asks about the whole track) need 16+ frames; `history`
    needs a streaming-caption task.
    """
    names = [canonical_task(t) for t in tasks]
    needs_track = [n for n in names if is_video_task(n)] + (["--prompt"] if free_prompt else [])
    if needs_track and num_frames < VIDEO_FRAMES:
        raise ClipError(
            f"{', '.join(needs_track)} need(s) PAM's video mode, which reads {VIDEO_FRAMES} frames; "
            f"the clip has only {num_frames}"
        )
    if history is not None and not any(n.startswith("video_stream_caption") for n in names):
        raise TaskError("a caption history is only used by video_stream_caption / video_stream_caption_zh")
    return names


def describe_clip(model, clip: TrackedClip, tasks: Sequence[str], *, prompt: str | None = None,
                  history: str | None = None, **generation) -> list:
    """PAM's answers for a tracked clip: one PamGeneration per task, then one for `prompt` if given.

    Video tasks read PAM's 16 selected frames; `history` goes to the streaming-caption tasks (PAM's
    streaming template; None = the first window's "None"). Image tasks describe the first frame.
    A free prompt asks about the whole track (video mode). `generation`: PamModel.describe options.
    """
    names = check_clip_tasks(tasks, clip.num_frames, history=history, free_prompt=prompt is not None)
    results = []
    for name in names:
        if is_video_task(name):
            stream = name.startswith("video_stream_caption")
            results.append(model.describe(clip.video_features, name, history=history if stream else None,
                                          **generation))
        else:
            results.append(model.describe(clip.first_features, name, **generation))
    if prompt is not None:
        results.append(model.describe(clip.video_features, None, prompt=prompt, **generation))
    return results
