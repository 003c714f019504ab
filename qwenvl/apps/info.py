"""Model facts for `qwenvl info`: family, parameter counts per group, the "auto" dtype and image tokens.

Must not: load models (the caller passes a pipeline) or change any setting.
"""

from __future__ import annotations

from typing import Any

import torch

from qwenvl import families
from qwenvl.engine import cpu_kernels
from qwenvl.engine.precision import auto_dtype
from qwenvl.engine.quant import weight_counts
from qwenvl.pipeline import auto_storage
from qwenvl.processing.image import smart_resize
from qwenvl.train.freeze import param_group

SIZES = ((448, 448), (1280, 720))  # (width, height)


def image_tokens(pipe: Any, width: int, height: int, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> int:
    """LLM tokens one image of width x height takes: v1 n_queries; v2+ (h*w patches) / merge^2 after resize."""
    icfg = getattr(pipe.processor, "image_cfg", None)
    if icfg is None:
        return pipe.model.cfg.vision.n_queries
    lo = icfg.min_pixels if min_pixels is None else min_pixels
    hi = icfg.max_pixels if max_pixels is None else max_pixels
    h, w = smart_resize(height, width, icfg.factor, lo, hi)
    return (h // icfg.patch_size) * (w // icfg.patch_size) // icfg.merge_size ** 2


def model_info(pipe: Any, device: str = "cpu", min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
    cfg = pipe.model.cfg
    prefixes = families.of(cfg).adapter_prefixes
    params = {"vision": 0, "adapter": 0, "llm": 0}
    for name, n in weight_counts(pipe.model):  # quantized / bf16-stored weights count as the float ones
        params[param_group(name, prefixes)] += n
    params["total"] = sum(params.values())
    dtype, why = auto_dtype(device)
    icfg = getattr(pipe.processor, "image_cfg", None)
    budget = ({"min_pixels": min_pixels or icfg.min_pixels, "max_pixels": max_pixels or icfg.max_pixels}
              if icfg is not None else {"image_size": cfg.vision.image_size})
    no_kernel = cpu_kernels.unavailable_reason() if torch.device(device).type == "cpu" else "not a CPU"
    storage = auto_storage(pipe.folder, dtype, device) if pipe.folder is not None else None
    return {"family": cfg.family, "model_type": getattr(cfg, "model_type", cfg.family), "params": params,
            "auto_dtype": str(dtype).removeprefix("torch."), "auto_dtype_reason": why,
            "auto_weights": f"{storage} (the checkpoint's, computed in fp32)" if storage else "the auto dtype",
            "int8_kernel": f"torch's ({no_kernel})" if no_kernel else "tiled (compiled at the first int8 / bf16 load)",
            "image_budget": budget,
            "image_tokens": {f"{w}x{h}": image_tokens(pipe, w, h, min_pixels, max_pixels) for w, h in SIZES}}


def format_info(info: dict) -> str:
    p = info["params"]
    lines = [f"family:      {info['family']}", f"model_type:  {info['model_type']}",
             f"parameters:  total {p['total']:,} (vision {p['vision']:,}, adapter {p['adapter']:,}, "
             f"llm {p['llm']:,})",
             f"auto dtype:  {info['auto_dtype']} ({info['auto_dtype_reason']})",
             f"auto weights: {info['auto_weights']}",
             f"int8 kernel: {info['int8_kernel']}",
             "image budget: " + ", ".join(f"{k}={v}" for k, v in info["image_budget"].items())]
    lines += [f"image tokens {k}: {v}" for k, v in info["image_tokens"].items()]
    return "\n".join(lines)
