"""Video preprocessing for Qwen2-VL / Qwen2.5-VL: frame sampling, per-frame pixel budget, patches.

Mirrors qwen-vl-utils `fetch_video` (architecture-facts B.4): smart_nframes picks an even frame count
from the source fps, indices are linspace(0, total-1, n).round(), every frame shares one smart_resize
size under a budget that shrinks as frames grow, resized with bicubic + antialias on uint8 (what
torchvision does on CPU, which both qwen-vl-utils and transformers' video processor call), then the
image path's normalise + patchify with T frames per temporal patch.

Must not: import the model or hold every decoded frame of a long video: only sampled frames are kept.
PyAV (`av`, the qwenvl[video] extra) is imported only when a video file is read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

FRAME_FACTOR = 2  # qwen-vl-utils samples frames in pairs, independent of the config's temporal_patch_size
RESIZE_CHUNK = 32  # frames resized per call: bounds the resize kernel's temporary buffers

VideoSource = str | os.PathLike | Sequence[Any] | np.ndarray


@dataclass(frozen=True)
class VideoOptions:
    """Sampling and pixel budget for one video (qwen-vl-utils defaults).

    fps: frames per second to sample. For a list of frames (or a 4-D array) it is instead the rate at
    which those frames were already sampled, as in qwen-vl-utils: all are kept and sample_fps = fps.
    nframes: if set, sample exactly round-to-even(nframes) frames and ignore fps/min/max_frames.
    total_pixels: budget for the whole video; each frame gets at most total_pixels / nframes * 2.
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
    def from_video_preprocessor_config(cls, d: dict) -> VideoOptions:
        """A checkpoint's video_preprocessor_config.json: top-level min/max_pixels (or transformers 5's
        size.shortest_edge / longest_edge, pixel counts), fps, min/max_frames; other keys ignored."""
        if not isinstance(d, dict):
            raise TypeError(f"video preprocessor config must be a dict, got {type(d).__name__}")
        size = d.get("size") if isinstance(d.get("size"), dict) else {}
        kw = {k: size[s] for k, s in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")) if s in size}
        keys = ("fps", "min_frames", "max_frames", "min_pixels", "max_pixels")
        kw.update({k: d[k] for k in keys if d.get(k) is not None})
        return cls(**kw)

    def to_video_preprocessor_config(self) -> dict:
        return {"video_processor_type": "Qwen2VLVideoProcessor", "fps": self.fps, "min_frames": self.min_frames,
                "max_frames": self.max_frames, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}


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


def _stream_fps(stream: Any, total: int, name: str) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    if stream.duration and stream.time_base:
        return total / float(stream.duration * stream.time_base)
    raise ValueError(f"{name}: the video stream reports no frame rate")


def _decode_sampled(container: Any, stream: Any, indices: list[int], name: str) -> np.ndarray:
    """Decode in order, converting only the wanted frames to RGB -> uint8 [n, H, W, 3]."""
    want: dict[int, list[int]] = {}
    for pos, i in enumerate(indices):
        want.setdefault(i, []).append(pos)
    out: np.ndarray | None = None
    filled = 0
    last = None
    for i, frame in enumerate(container.decode(stream)):
        last = frame
        if i in want:
            rgb = frame.to_ndarray(format="rgb24")
            if out is None:
                out = np.empty((len(indices), *rgb.shape), np.uint8)
            elif rgb.shape != out.shape[1:]:
                raise ValueError(f"{name}: frame size changes mid-stream ({rgb.shape} vs {out.shape[1:]})")
            out[want[i]] = rgb
            filled = want[i][-1] + 1  # indices ascend, so positions fill in order
        if i >= indices[-1]:
            break
    if last is None or out is None:  # index 0 is always wanted, so out exists once anything decoded
        raise ValueError(f"{name}: no frame could be decoded")
    # The container's frame count can overstate what decodes; later indices reuse the last frame.
    if filled < len(indices):
        out[filled:] = last.to_ndarray(format="rgb24")
    return out


def _read_video_file(path: Path, opts: VideoOptions, name: str) -> tuple[np.ndarray, float]:
    try:
        import av  # the optional qwenvl[video] extra
    except ImportError as e:
        raise ImportError("reading video files needs PyAV: pip install 'qwenvl[video]'") from e

    if not path.exists():
        raise FileNotFoundError(f"video file not found: {name}")
    if path.is_dir():
        raise ValueError(f"{name} is a directory, not a video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{name} has no video stream")
            stream = container.streams.video[0]
            # Matroska/WebM often leave the frame count at 0: count packets (demux only, no decoding).
            total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        if total < 1:
            raise ValueError(f"{name} has no video frames")
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            video_fps = _stream_fps(stream, total, name)
            n = smart_nframes(total, video_fps, opts)
            frames = _decode_sampled(container, stream, sample_indices(total, n), name)
    except av.FFmpegError as e:
        raise ValueError(f"{name} is not a readable video ({e})") from e
    return frames, n / total * video_fps


def _frames_to_sample(n: int, opts: VideoOptions) -> tuple[list[int], float]:
    """Frames given as a list are already sampled at opts.fps: keep all unless nframes/max_frames says fewer."""
    if opts.nframes is None and n <= opts.max_frames:
        return list(range(n)), opts.fps
    k = smart_nframes(n, opts.fps, opts)
    return sample_indices(n, k), k / n * opts.fps


def load_video(src: VideoSource, opts: VideoOptions = VideoOptions()) -> tuple[list[Image.Image] | np.ndarray, float]:
    """Sampled frames and sample_fps (frames per second of video time that the samples represent).

    src: a video file path (decoded with PyAV; returns uint8 [n, H, W, 3]), a 4-D uint8 array
    [F, H, W, 3] (returns a sub-array), or a list of frames, each anything `load_image` takes
    (returns RGB PIL images). File frame counts are even; a list keeps its length (odd counts are
    padded later by process_video). Raises FileNotFoundError / ValueError naming the source.
    """
    name = describe_source(src) if not isinstance(src, (list, tuple)) else f"<list of {len(src)} frames>"
    if isinstance(src, (str, os.PathLike)):
        return _read_video_file(Path(os.fspath(src).removeprefix("file://")), opts, name)
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 4 or src.shape[-1] != 3 or src.shape[0] < 1:
            raise ValueError(f"video array {name} must be uint8 [F, H, W, 3] with F >= 1")
        idx, fps = _frames_to_sample(src.shape[0], opts)
        return src[idx], fps
    if isinstance(src, (list, tuple)):
        if not src:
            raise ValueError("video frame list is empty")
        idx, fps = _frames_to_sample(len(src), opts)
        frames = [load_image(src[i]) for i in idx]
        if len({f.size for f in frames}) > 1:
            raise ValueError(f"{name}: frames differ in size {sorted({f.size for f in frames})}; all must match")
        return frames, fps
    raise TypeError(f"cannot load a video from {name}")


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


def process_video(
    src: VideoSource, cfg: ImageProcessorConfig, opts: VideoOptions = VideoOptions()
) -> tuple[torch.Tensor, tuple[int, int, int], float]:
    """Video -> (pixel_values [t*h*w, 3*T*P*P] float32, grid_thw (t, h, w), second_per_grid).

    t = ceil(frames / T); second_per_grid = T / sample_fps (Qwen2.5-VL's M-RoPE time step).
    Pixel budget comes from opts (video limits), patch geometry and mean/std from cfg.
    """
    frames, sample_fps = load_video(src, opts)
    array = frames if isinstance(frames, np.ndarray) else np.stack([np.asarray(f) for f in frames])
    n, h, w, _ = array.shape
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f"video {describe_source(src)} frames are {w}x{h}; each side must be >= {MIN_IMAGE_SIDE}")
    budget = frame_pixel_budget(n + n % FRAME_FACTOR, opts)
    rh, rw = target_size(h, w, cfg.factor, opts.min_pixels, budget, f"video {describe_source(src)}")
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2)  # channels-last view, which the uint8 kernel prefers
    pixels = normalize(_resize_frames(pixels, rh, rw), cfg.image_mean, cfg.image_std)
    pixel_values, grid = patchify(pixels, cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size)
    return pixel_values, grid, cfg.temporal_patch_size / sample_fps
