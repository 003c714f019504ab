"""Qwen3-VL video rules, as transformers' Qwen3VLVideoProcessor applies them (5.24; 4.57.x alike).

Frames: n = int(total / video_fps * fps), clamped to [min_frames, max_frames] and to total, with no
rounding to an even count (an odd count gets its last frame repeated at patchify); indices are
numpy float64 linspace(0, total - 1, n).round(). Budget: the config's size.shortest_edge /
longest_edge are pixel counts for the whole clip, compared with t_bar * h * w where t_bar is n
rounded to a multiple of T; one (h, w) for every frame. Optionally (transformers 5's
cap_pixels_per_frame) each frame is held to qwen-vl-utils' per-frame share first.

Worked example, shipped config (4096 .. 25165824), factor 32, 5 frames of 360x640:
  t_bar = round(5/2)*2 = 4, 4 * 352 * 640 = 901,120 <= 25,165,824 -> 352 x 640, grid (3, 22, 40).
With the cap (768 tokens/frame): per frame min(768*32*32, 25165824 // 5) = 786,432 -> the same here.

Differences from transformers, on purpose: frame counts above the source's are refused (transformers
repeats indices), and tiny frames are scaled up as in 5.24 (4.57 refused frames under the factor).
Must not: decode files (video.py / video_io.py do) or import the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from qwenvl.processing.image import MAX_RATIO, ImageProcessorConfig
from qwenvl.processing.video import geometry_keys

# video_preprocessor_config.json of the released Qwen3-VL-*-Instruct checkpoints (third-party copies):
# size {shortest_edge 4096, longest_edge 25165824}, patch 16, T 2, merge 2, mean = std = 0.5; fps, frame
# limits and the cap are the class defaults (fps 2, 4..768 frames, cap off, 768 tokens per frame).
CLIP_MIN_PIXELS = 4096
CLIP_MAX_PIXELS = 25165824


def smart_resize_clip(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                      min_pixels: float = CLIP_MIN_PIXELS, max_pixels: float = CLIP_MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width) for every frame: multiples of `factor`, t_bar * h * w within the budget.

    Sides under `factor` are first scaled up (aspect kept) as transformers 5 does. Raises ValueError for
    fewer frames than `temporal_factor` or an aspect ratio over 200.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"a Qwen3-VL video needs at least {temporal_factor} frames, got {num_frames}")
    if height < factor or width < factor:
        grow = max(factor / height, factor / width)
        height, width = int(height * grow), int(width * grow)
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"aspect ratio {ratio:.1f} (height {height} x width {width}) is over the limit of {MAX_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor  # Python round: 5 frames -> 4, 7 -> 8
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Qwen3VideoOptions:
    """Sampling and whole-clip pixel budget for one video (transformers' Qwen3VLVideoProcessor).

    fps: frames per second to sample from a file (or a clip given with its rate); for frames given as
    a list / array without a rate, the rate they were already sampled at (all are kept).
    clip_min_pixels / clip_max_pixels: size.shortest_edge / longest_edge, budgets for frames * h * w
    (named apart from qwen-vl-utils' per-frame min_pixels / max_pixels on purpose).
    cap_pixels_per_frame: transformers 5's opt-in cap; off by default, as in 5.24 and at release (4.57).
    max_video_tokens: the cap's per-frame token ceiling. nframes: sample exactly this many frames.
    """

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    clip_min_pixels: int = CLIP_MIN_PIXELS
    clip_max_pixels: int = CLIP_MAX_PIXELS
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768
    nframes: int | None = None

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"Qwen3VideoOptions.fps must be > 0, got {self.fps}")
        for name in ("min_frames", "max_frames", "clip_min_pixels", "clip_max_pixels", "max_video_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Qwen3VideoOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_frames > self.max_frames or self.clip_min_pixels > self.clip_max_pixels:
            raise ValueError(f"Qwen3VideoOptions: a minimum exceeds its maximum in {self}")
        if self.nframes is not None and self.nframes < 1:
            raise ValueError(f"Qwen3VideoOptions.nframes must be >= 1, got {self.nframes}")

    @classmethod
    def from_video_preprocessor_config(cls, d: dict, defaults: Qwen3VideoOptions | None = None) -> Qwen3VideoOptions:
        """A checkpoint's video_preprocessor_config.json over `defaults` (size, fps, min/max_frames,
        num_frames, cap_pixels_per_frame, max_video_tokens; other keys ignored)."""
        if not isinstance(d, dict):
            raise TypeError(f"video preprocessor config must be a dict, got {type(d).__name__}")
        size = d.get("size") if isinstance(d.get("size"), dict) else {}
        kw = {k: size[s] for k, s in (("clip_min_pixels", "shortest_edge"), ("clip_max_pixels", "longest_edge"))
              if size.get(s) is not None}
        keys = {"fps": "fps", "min_frames": "min_frames", "max_frames": "max_frames", "nframes": "num_frames",
                "cap_pixels_per_frame": "cap_pixels_per_frame", "max_video_tokens": "max_video_tokens"}
        kw.update({k: d[j] for k, j in keys.items() if d.get(j) is not None})
        return replace(defaults or cls(), **kw)

    def to_video_preprocessor_config(self, cfg: ImageProcessorConfig | None = None) -> dict:
        out = {"video_processor_type": "Qwen3VLVideoProcessor", "fps": self.fps, "min_frames": self.min_frames,
               "max_frames": self.max_frames, "cap_pixels_per_frame": self.cap_pixels_per_frame,
               "max_video_tokens": self.max_video_tokens,
               "size": {"shortest_edge": self.clip_min_pixels, "longest_edge": self.clip_max_pixels}}
        if self.nframes is not None:
            out["num_frames"] = self.nframes
        return {**out, **geometry_keys(cfg)}

    def frame_count(self, total_frames: int, video_fps: float) -> int:
        """Frames to sample from total_frames at video_fps. Example: 30 frames at 10 fps, fps 2 -> 6."""
        if self.nframes is not None:
            n = self.nframes
        else:
            n = min(max(int(total_frames / video_fps * self.fps), self.min_frames), self.max_frames, total_frames)
        if not 1 <= n <= total_frames:
            raise ValueError(f"cannot sample {n} frames from a video of {total_frames} frames")
        return n

    def frame_indices(self, total_frames: int, n: int) -> list[int]:
        """numpy float64 linspace(0, total-1, n).round() (ties to even), as transformers samples."""
        return np.linspace(0, total_frames - 1, n).round().astype(int).tolist()

    def frame_size(self, n: int, height: int, width: int, cfg: ImageProcessorConfig, name: str) -> tuple[int, int]:
        budget = self.clip_max_pixels
        if self.cap_pixels_per_frame:
            per_frame = max(min(self.max_video_tokens * cfg.factor**2, self.clip_max_pixels // n),
                            int(self.clip_min_pixels * 1.05))
            budget = per_frame * n
        try:
            return smart_resize_clip(n, height, width, cfg.temporal_patch_size, cfg.factor,
                                     self.clip_min_pixels, budget)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e


QWEN3_VL_VIDEO = Qwen3VideoOptions()
