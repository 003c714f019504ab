"""The contract between processing and the engine: one tokenised prompt with its vision inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelInputs:
    """One rendered, tokenised prompt with its vision inputs, ready for the model.

    positions: [3, T] (M-RoPE) or [T] (1-D); rope_delta: decode position = slot + rope_delta.
    image_pixels / video_pixels: packed patches [N, C*T*P*P] (v2) or [n, 3, S, S] (v1).
    """

    input_ids: list[int]
    positions: torch.Tensor
    rope_delta: int = 0
    image_pixels: torch.Tensor | None = None
    image_grid: list[tuple[int, int, int]] = field(default_factory=list)
    video_pixels: torch.Tensor | None = None
    video_grid: list[tuple[int, int, int]] = field(default_factory=list)
    second_per_grid: list[float] = field(default_factory=list)  # per video (Qwen2.5-VL time axis)
    # per video, seconds of each temporal patch, when the prompt carries text timestamps (Qwen3-VL)
    video_timestamps: list[list[float]] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # original (W, H), for grounding
    text: str = ""
