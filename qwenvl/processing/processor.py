"""Qwen2-VL / Qwen2.5-VL processor: chat messages -> ModelInputs (ids, pixels, grids, M-RoPE positions).

The one place where images and text become tensors for these generations; training, CLI and server
all call it, so there is no train/serve skew. Steps: normalise messages, render the chat template
(checkpoint's own, else the built-in one), encode user text with special tokens escaped, expand each
<|image_pad|> / <|video_pad|> into t*h*w/merge^2 slots, compute positions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from qwenvl.config import QwenVLConfig
from qwenvl.inputs import ModelInputs
from qwenvl.processing.chat_template import QWEN2_VL_TEMPLATE, load_chat_template, render_chat_segments
from qwenvl.processing.image import ImageProcessorConfig, load_image, process_image
from qwenvl.processing.messages import normalize_messages
from qwenvl.processing.positions import RopeSpec, mrope_positions
from qwenvl.processing.tokenizer import QwenTokenizer
from qwenvl.processing.video import VideoOptions, process_video

_IMAGE_OPTS = ("min_pixels", "max_pixels")
_VIDEO_OPTS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels")


class Qwen2VLProcessor:
    def __init__(self, cfg: QwenVLConfig, tokenizer: QwenTokenizer, template: str | None = None,
                 image_cfg: ImageProcessorConfig | None = None, video_opts: VideoOptions | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.template = template or QWEN2_VL_TEMPLATE
        self.image_cfg = image_cfg or ImageProcessorConfig(patch_size=cfg.vision.patch_size,
                                                           temporal_patch_size=cfg.vision.temporal_patch_size,
                                                           merge_size=cfg.vision.spatial_merge_size)
        self.video_opts = video_opts or VideoOptions()
        self.rope = RopeSpec(cfg.image_token_id, cfg.video_token_id, cfg.vision.spatial_merge_size,
                             absolute_time=cfg.model_type == "qwen2_5_vl",
                             tokens_per_second=cfg.vision.tokens_per_second)

    @classmethod
    def from_folder(cls, folder: str | Path, cfg: QwenVLConfig) -> Qwen2VLProcessor:
        folder = Path(folder)
        pre = folder / "preprocessor_config.json"
        image_cfg = ImageProcessorConfig.from_preprocessor_config(json.loads(pre.read_text())) if pre.is_file() \
            else None
        vid = folder / "video_preprocessor_config.json"
        video_opts = VideoOptions.from_video_preprocessor_config(json.loads(vid.read_text())) if vid.is_file() \
            else None
        return cls(cfg, QwenTokenizer.from_folder(folder), load_chat_template(folder), image_cfg, video_opts)

    def save(self, folder: str | Path) -> None:
        (Path(folder) / "preprocessor_config.json").write_text(
            json.dumps(self.image_cfg.to_preprocessor_config(), indent=2) + "\n")
        (Path(folder) / "video_preprocessor_config.json").write_text(
            json.dumps(self.video_opts.to_video_preprocessor_config(), indent=2) + "\n")

    # ------------------------------------------------------------------------------------------
    def __call__(self, messages: list[dict], *, add_generation_prompt: bool = True, min_pixels: int | None = None,
                 max_pixels: int | None = None, **template_vars: Any) -> ModelInputs:
        msgs, items = normalize_messages(messages)
        pixels: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
        grids: dict[str, list[tuple[int, int, int]]] = {"image": [], "video": []}
        sizes, seconds = [], []
        for it in items:
            if it.kind == "image":
                img = load_image(it.source)
                opts = {k: it.options[k] for k in _IMAGE_OPTS if k in it.options}
                opts.setdefault("min_pixels", min_pixels)
                opts.setdefault("max_pixels", max_pixels)
                px, grid = process_image(img, self.image_cfg, **opts)
                sizes.append(img.size)
            else:
                opts = {k: it.options[k] for k in _VIDEO_OPTS if k in it.options}
                px, grid, spg = process_video(it.source, self.image_cfg, replace(self.video_opts, **opts))
                seconds.append(spg)
            pixels[it.kind].append(px)
            grids[it.kind].append(grid)
        rendered = render_chat_segments(msgs, self.template, add_generation_prompt=add_generation_prompt,
                                        **template_vars)
        ids = self.expand(self.tokenizer.encode_segments(rendered.segments), grids["image"], grids["video"])
        pos, delta = mrope_positions(ids, self.rope, grids["image"], grids["video"], seconds)
        return ModelInputs(
            input_ids=ids, positions=pos, rope_delta=delta,
            image_pixels=torch.cat(pixels["image"]) if pixels["image"] else None, image_grid=grids["image"],
            video_pixels=torch.cat(pixels["video"]) if pixels["video"] else None, video_grid=grids["video"],
            image_sizes=sizes, second_per_grid=seconds, text=rendered.text,
        )

    def expand(self, ids: list[int], image_grids: list, video_grids: list) -> list[int]:
        """Replace the k-th <|image_pad|> (<|video_pad|>) by the k-th item's t*h*w/merge^2 slots."""
        unit = self.cfg.vision.spatial_merge_size ** 2
        counts = {self.cfg.image_token_id: iter([t * h * w // unit for t, h, w in image_grids]),
                  self.cfg.video_token_id: iter([t * h * w // unit for t, h, w in video_grids])}
        out: list[int] = []
        for tok in ids:
            if tok in counts:
                n = next(counts[tok], None)
                if n is None:
                    raise ValueError("the chat template produced more vision placeholders than there are "
                                     "images/videos in the messages")
                out += [tok] * n
            else:
                out.append(tok)
        if any(next(it, None) is not None for it in counts.values()):
            raise ValueError("the chat template dropped an image or video placeholder; check the template")
        return out

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        # box / ref tags are special tokens: the grounding parser needs skip_special=False
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def input_sizes(self, inputs: ModelInputs) -> list[tuple[int, int]]:
        """(W, H) in pixels of each image as the model saw it (Qwen2.5-VL boxes are in these units)."""
        p = self.image_cfg.patch_size
        return [(w * p, h * p) for _, h, w in inputs.image_grid]

    def stop_ids(self) -> list[int]:
        """Ids that end an answer: the tokenizer's eos ids (<|im_end|>, <|endoftext|>)."""
        return list(self.tokenizer.eos_ids)
