"""The benchmarks' input image: smooth RGB gradients + N(0, 20) noise (not a flat colour, so no encoder
shortcut applies), deterministic per seed. numpy + PIL only: bench/llama_cpp_runner.py runs where torch is not."""

from __future__ import annotations

import numpy as np


def gradient_image(width: int, height: int, seed: int = 0):
    """gradient_image(448, 448) is the core benchmarks' image (bench_core.bench_image)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 / (width - 1), yy * 255 / (height - 1), (xx + yy) * 255 / (width + height - 2)], -1)
    return Image.fromarray(np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8), "RGB")
