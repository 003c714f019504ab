"""Video preprocessing: frame sampling, pixel budget, patches, and the sampled frames' times.

One pipeline, two rule sets, chosen by the options object (never by a generation's name):
  VideoOptions        qwen-vl-utils `fetch_video` (architecture-facts B.4), the released recipe of
                      Qwen2-VL / Qwen2.5-VL: even frame counts, a per-frame budget that shrinks as
                      frames grow.
  Qwen3VideoOptions   transformers' Qwen3VLVideoProcessor (processing/video_qwen3.py): a budget over
                      the whole clip (frames * h * w).
Both give: how many frames to take (`frame_count`), which (`frame_indices`), and one size for all
frames (`frame_size`). Then every frame is resized with bicubic + antialias on uint8 (what
torchvision does on CPU, which qwen-vl-utils and transformers' video processors call), normalised and
patchified like images with T frames per temporal patch (an odd count repeats the last frame).
`ProcessedVideo.timestamps` are the Qwen3-VL text timestamps of each temporal patch.

Must not: import the model or hold every decoded frame of a long video (only sampled frames are kept;
decoding lives in video_io.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qwenvl.processing.image import (
    MIN_IMAGE_SIDE,
    ImageProcessorConfig,
    describe_source,
    load_image,
    normalize,
    patchify,
    target_size,
)
from qwenvl.processing.video_io import decode_video_frames, probe_video_file

FRAME_FACTOR = 2  # qwen-vl-utils samples frames in pairs, independent of the config's temporal_patch_size
RESIZE_CHUNK = 32  # frames resized per call: bounds the resize kernel's temporary buffers

VideoSource = str | os.PathLike | Sequence[Any] | np.ndarray


class VideoRules(Protocol):
    """What the pipeline asks of an options object (VideoOptions, Qwen3VideoOptions)."""

    fps: float
    max_frames: int
    nframes: int | None

    def frame_count(self, total_frames: int, video_fps: float) -> int: ...

    def frame_indices(self, total_frames: int, n: int) -> list[int]: ...

    def frame_size(self, n: int, height: int, width: int, cfg: ImageProcessorConfig, name: str) -> tuple[int, int]: ...

    @classmethod
    def from_video_preprocessor_config(cls, d: dict, defaults: Any = None) -> Any: ...

    def to_video_preprocessor_config(self, cfg: ImageProcessorConfig | None = None) -> dict: ...


@dataclass(frozen=True)
class VideoOptions:
    """Sampling and pixel budget for one video (qwen-vl-utils defaults, factor-28 token limits).

    fps: frames per second to sample. For a list of frames (or a 4-D array) it is instead the rate at
    which those frames were already sampled, as in qwen-vl-utils: all are kept and sample_fps = fps.
    nframes: if set, sample exactly round-to-even(nframes) frames and ignore fps/min/max_frames.
    min_pixels / max_pixels: per frame. total_pixels: budget for the whole video; each frame gets at
    most total_pixels / nframes * 2. (qwen-vl-utils 0.0.14 for Qwen3-VL: the same rules with factor 32,
    i.e. min 128*32*32, max 768*32*32, total 128000*32*32*0.9.)
    """

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = int(128000 * 28 * 28 * 0.9)
    nframes: int | None = None

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"VideoOptions.fps must be > 0, got {self.fps}")
        for name in ("min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"VideoOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_frames > self.max_frames or self.min_pixels > self.max_pixels:
            raise ValueError(f"VideoOptions: a minimum exceeds its maximum in {self}")
        if self.nframes is not None and self.nframes < 1:
            raise ValueError(f"VideoOptions.nframes must be >= 1, got {self.nframes}")

    @classmethod
    def from_video_preprocessor_config(cls, d: dict, defaults: VideoOptions | None = None) -> VideoOptions:
        """A checkpoint's video_preprocessor_config.json over `defaults`: top-level min/max_pixels (or
        transformers 5's size.shortest_edge / longest_edge, pixel counts), fps, min/max_frames."""
        if not isinstance(d, dict):
            raise TypeError(f"video preprocessor config must be a dict, got {type(d).__name__}")
        size = d.get("size") if isinstance(d.get("size"), dict) else {}
        kw = {k: size[s] for k, s in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")) if s in size}
        keys = ("fps", "min_frames", "max_frames", "min_pixels", "max_pixels")
        kw.update({k: d[k] for k in keys if d.get(k) is not None})
        return replace(defaults or cls(), **kw)

    def to_video_preprocessor_config(self, cfg: ImageProcessorConfig | None = None) -> dict:
        out = {"video_processor_type": "Qwen2VLVideoProcessor", "fps": self.fps, "min_frames": self.min_frames,
               "max_frames": self.max_frames, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
               "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}
        return {**out, **geometry_keys(cfg)}

    def frame_count(self, total_frames: int, video_fps: float) -> int:
        return smart_nframes(total_frames, video_fps, self)

    def frame_indices(self, total_frames: int, n: int) -> list[int]:
        return sample_indices(total_frames, n)

    def frame_size(self, n: int, height: int, width: int, cfg: ImageProcessorConfig, name: str) -> tuple[int, int]:
        # qwen-vl-utils pads a frame list to an even count before budgeting, hence n + n % 2
        budget = frame_pixel_budget(n + n % FRAME_FACTOR, self)
        return target_size(height, width, cfg.factor, self.min_pixels, budget, name)


# qwen-vl-utils 0.0.14's numbers for Qwen3-VL (factor 32: 128 .. 768 tokens per frame, 128000-token context),
# the recipe of Qwen's own cookbooks; QWEN3_VL_VIDEO (video_qwen3.py) is transformers' processor instead.
QWEN3_VL_UTILS_VIDEO = VideoOptions(min_pixels=128 * 32 * 32, max_pixels=768 * 32 * 32,
                                    total_pixels=int(128000 * 32 * 32 * 0.9))


def geometry_keys(cfg: ImageProcessorConfig | None) -> dict:
    """Patch geometry and normalisation keys a video_preprocessor_config.json carries (none without cfg)."""
    if cfg is None:
        return {}
    return {"patch_size": cfg.patch_size, "temporal_patch_size": cfg.temporal_patch_size,
            "merge_size": cfg.merge_size, "image_mean": list(cfg.image_mean), "image_std": list(cfg.image_std)}


def _floor2(x: float) -> int:
    return math.floor(x / FRAME_FACTOR) * FRAME_FACTOR


def smart_nframes(total_frames: int, video_fps: float, opts: VideoOptions) -> int:
    """How many frames to sample: even, in [2, total_frames].

    fps mode: total / video_fps * fps, clamped to [ceil2(min_frames), floor2(min(max_frames, total))]
    and to total, then floored to even. Example: 30 frames at 10 fps, fps=2 -> 6 frames.
    """
    if opts.nframes is not None:
        n = round(opts.nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        lo = math.ceil(opts.min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = _floor2(min(opts.max_frames, total_frames))
        n = _floor2(min(max(total_frames / video_fps * opts.fps, lo), hi, total_frames))
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"cannot sample {n} frames from a video of {total_frames} frames (need 2..{total_frames})")
    return n


def sample_indices(total_frames: int, nframes: int) -> list[int]:
    """linspace(0, total-1, nframes).round(), in torch float32 as qwen-vl-utils (ties round to even)."""
    return torch.linspace(0, total_frames - 1, nframes).round().long().tolist()


def frame_pixel_budget(nframes: int, opts: VideoOptions) -> float:
    """Per-frame max_pixels: the whole-video budget shared out, never below 1.05 * min_pixels."""
    return max(min(opts.max_pixels, opts.total_pixels / nframes * FRAME_FACTOR), int(opts.min_pixels * 1.05))


def frame_timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds per temporal patch: the mean of its first and last frame's time (Qwen3-VL's text timestamps).

    Mirrors transformers' Qwen3VLProcessor._calculate_timestamps: an odd count repeats the last index.
    Example: indices [0, 15, 30, 45, 60] at 30 fps, T=2 -> groups (0, 15) (30, 45) (60, 60) -> [0.25, 1.25, 2.0].
    """
    idx = list(indices)
    if not idx or not video_fps > 0:
        raise ValueError(f"frame_timestamps needs frame indices and a positive fps, got {len(idx)} and {video_fps}")
    idx += [idx[-1]] * (-len(idx) % temporal_patch_size)
    t = [i / video_fps for i in idx]
    return [(t[g] + t[g + temporal_patch_size - 1]) / 2 for g in range(0, len(t), temporal_patch_size)]


@dataclass(frozen=True)
class VideoFrames:
    """Sampled frames: uint8 [n, H, W, 3] (array sources, files) or RGB PIL (frame lists); `indices`
    into the source's `total_frames` frames, which run at `video_fps`."""

    frames: np.ndarray | list[Image.Image]
    indices: list[int]
    total_frames: int
    video_fps: float

    @property
    def sample_fps(self) -> float:
        """Frames per second of video time that the samples represent (qwen-vl-utils' sample_fps)."""
        return len(self.indices) / self.total_frames * self.video_fps


@dataclass(frozen=True)
class ProcessedVideo:
    """One video ready for the model. pixel_values [t*h*w, C*T*P*P] float32; grid (t, h, w) in patches;
    second_per_grid = T / sample_fps (Qwen2.5-VL's M-RoPE time step); timestamps: seconds of each of the
    t temporal patches (Qwen3-VL's `<{t:.1f} seconds>` text)."""

    pixel_values: torch.Tensor
    grid: tuple[int, int, int]
    second_per_grid: float
    timestamps: list[float]
    frame_indices: list[int]
    video_fps: float


def _pick(n: int, opts: VideoRules, source_fps: float | None) -> tuple[list[int], float]:
    """Indices into n given frames and the rate they run at. Without source_fps the frames were already
    sampled at opts.fps (qwen-vl-utils): keep all unless nframes / max_frames asks for fewer."""
    if source_fps is None:
        if opts.nframes is None and n <= opts.max_frames:
            return list(range(n)), opts.fps
        source_fps = opts.fps
    return opts.frame_indices(n, opts.frame_count(n, source_fps)), source_fps


def read_video(src: VideoSource, opts: VideoRules = VideoOptions(), source_fps: float | None = None) -> VideoFrames:
    """Sample a video: a file path (decoded with PyAV at the stream's rate), a uint8 array [F, H, W, 3] or a
    list of frames (anything `load_image` takes). For arrays and lists, `source_fps` says they are a whole
    clip at that rate, to be sampled like a file; without it they are frames already sampled at opts.fps.
    Raises FileNotFoundError / ValueError naming the source.
    """
    name = describe_source(src) if not isinstance(src, (list, tuple)) else f"<list of {len(src)} frames>"
    if isinstance(src, (str, os.PathLike)):
        path = Path(os.fspath(src).removeprefix("file://"))
        total, fps = probe_video_file(path, name)
        idx = opts.frame_indices(total, opts.frame_count(total, fps))
        return VideoFrames(decode_video_frames(path, idx, name), idx, total, fps)
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 4 or src.shape[-1] != 3 or src.shape[0] < 1:
            raise ValueError(f"video array {name} must be uint8 [F, H, W, 3] with F >= 1")
        idx, fps = _pick(src.shape[0], opts, source_fps)
        return VideoFrames(src[idx], idx, src.shape[0], fps)
    if isinstance(src, (list, tuple)):
        if not src:
            raise ValueError("video frame list is empty")
        idx, fps = _pick(len(src), opts, source_fps)
        frames = [load_image(src[i]) for i in idx]
        if len({f.size for f in frames}) > 1:
            raise ValueError(f"{name}: frames differ in size {sorted({f.size for f in frames})}; all must match")
        return VideoFrames(frames, idx, len(src), fps)
    raise TypeError(f"cannot load a video from {name}")


def load_video(src: VideoSource, opts: VideoRules = VideoOptions()) -> tuple[list[Image.Image] | np.ndarray, float]:
    """Sampled frames and sample_fps (see `read_video`; kept for callers that need only these two)."""
    v = read_video(src, opts)
    return v.frames, v.sample_fps


def _resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [F, 3, H, W] -> uint8 [F, 3, height, width], bicubic with antialias (torch's uint8 kernel)."""
    if frames.shape[-2:] == (height, width):
        return frames
    return torch.cat(
        [
            F.interpolate(frames[i : i + RESIZE_CHUNK], size=(height, width), mode="bicubic", antialias=True)
            for i in range(0, frames.shape[0], RESIZE_CHUNK)
        ]
    )


def preprocess_video(
    src: VideoSource, cfg: ImageProcessorConfig, opts: VideoRules = VideoOptions(), source_fps: float | None = None
) -> ProcessedVideo:
    """Video -> ProcessedVideo: sample (opts), one size for all frames (opts' budget, cfg's factor),
    resize, normalise (cfg's mean/std), patchify (t = ceil(frames / T))."""
    v = read_video(src, opts, source_fps)
    array = v.frames if isinstance(v.frames, np.ndarray) else np.stack([np.asarray(f) for f in v.frames])
    n, h, w, _ = array.shape
    name = f"video {describe_source(src)}"
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} frames are {w}x{h}; each side must be >= {MIN_IMAGE_SIDE}")
    rh, rw = opts.frame_size(n, h, w, cfg, name)
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2)  # channels-last view, which the uint8 kernel prefers
    pixels = normalize(_resize_frames(pixels, rh, rw), cfg.image_mean, cfg.image_std)
    pixel_values, grid = patchify(pixels, cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size)
    return ProcessedVideo(pixel_values, grid, cfg.temporal_patch_size / v.sample_fps,
                          frame_timestamps(v.indices, v.video_fps, cfg.temporal_patch_size), v.indices, v.video_fps)


def process_video(
    src: VideoSource, cfg: ImageProcessorConfig, opts: VideoRules = VideoOptions()
) -> tuple[torch.Tensor, tuple[int, int, int], float]:
    """Video -> (pixel_values [t*h*w, 3*T*P*P] float32, grid_thw (t, h, w), second_per_grid); see preprocess_video."""
    v = preprocess_video(src, cfg, opts)
    return v.pixel_values, v.grid, v.second_per_grid
