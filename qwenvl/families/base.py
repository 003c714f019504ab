"""What a model family declares, with the defaults the Qwen2-style generations share.

A `Family` is the one place a generation's differences live: how its `config.json` is spelled, how its
checkpoint keys map onto our module names, which processor and chat format it uses, how training
treats its tower. Shared code (weights, pipeline, train, eval) asks the family and never compares
model_type strings. Must not: do I/O beyond building a processor from a folder the caller names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from qwenvl.config import QwenVLConfig

Tensors = Iterable[tuple[str, torch.Tensor]]


def rope_dict(d: dict) -> dict:
    """`rope_scaling` (older transformers) and `rope_parameters` (>= 4.5x / 5.x) hold the same thing."""
    out: dict = {}
    for key in ("rope_scaling", "rope_parameters"):
        val = d.get(key)
        if isinstance(val, dict):
            out.update(val)
    return out


def int_if_whole(x: float) -> int | float:
    # transformers' strict configs want ints for mlp_ratio / tokens_per_second when they are whole
    return int(x) if float(x).is_integer() else x


def split_hf_dict(d: dict) -> tuple[dict, dict]:
    """(text dict, vision dict) of a Qwen2-style config.json, top-level or nested text_config form."""
    text = dict(d.get("text_config") or {})
    for k, val in d.items():  # top-level form: text keys live at the top
        if k not in ("text_config", "vision_config"):
            text.setdefault(k, val)
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in text]
    if missing:
        raise ValueError(f"invalid config: text config lacks {missing}")
    if not isinstance(d.get("vision_config"), dict):
        raise ValueError("invalid config: no vision_config")
    return text, d["vision_config"]


def special_ids(d: dict, text: dict) -> dict[str, int]:
    """The placeholder / bos / eos ids, top level first (where the released configs keep them)."""
    def tok(name: str, default: int) -> int:
        return int(d.get(name, text.get(name, default)))

    return dict(image_token_id=tok("image_token_id", 151655), video_token_id=tok("video_token_id", 151656),
                vision_start_token_id=tok("vision_start_token_id", 151652),
                vision_end_token_id=tok("vision_end_token_id", 151653),
                bos_token_id=tok("bos_token_id", 151643), eos_token_id=tok("eos_token_id", 151645))


def legacy_to_hf(name: str) -> str:
    """A legacy key (visual.*, model.*) -> the transformers >= 4.52 layout (model.visual.*, model.language_model.*)."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + name[len("model."):]
    return name


def hf_to_legacy(name: str) -> str:
    """A transformers >= 4.52 key (model.visual.*, model.language_model.*) -> the legacy layout we use."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


class Family:
    """Defaults are the Qwen2-VL-style behaviour; a generation overrides what differs."""

    name: str = ""
    model_types: tuple[str, ...] = ()  # config.json spellings this family reads
    prompt_format: str = "template"  # "template": the checkpoint's Jinja chat template; "chatml_v1": v1 make_context
    fixed_resolution: bool = False  # v1: one square input size (stage.image_size); others take a pixel budget
    adapter_prefixes: tuple[str, ...] = ("visual.merger.",)  # what the freeze policy calls the adapter

    # -- config.json ------------------------------------------------------------------------------
    def parse_config(self, d: dict) -> QwenVLConfig:
        raise NotImplementedError

    def dump_config(self, cfg: QwenVLConfig) -> dict:
        raise NotImplementedError

    # -- checkpoint keys --------------------------------------------------------------------------
    # canonical = the layout we save (the released checkpoints' own); our module names are the legacy
    # Qwen2-VL layout (visual.*, model.*, lm_head), so for Qwen2/2.5-VL the two coincide
    def canonical_key(self, key: str, cfg: QwenVLConfig) -> str:
        """A key of any accepted layout -> its canonical name."""
        return hf_to_legacy(key)

    def our_key(self, canonical: str, cfg: QwenVLConfig) -> str:
        """A canonical key -> our module name."""
        return canonical

    def canonical_shapes(self, found: dict[str, tuple[int, ...]], cfg: QwenVLConfig) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> shape table in canonical names (what the strict check compares)."""
        out = {self.canonical_key(k, cfg): tuple(s) for k, s in found.items()}
        if cfg.tie_word_embeddings:  # some tied checkpoints still carry a copy of the embedding
            out.pop("lm_head.weight", None)
        return out

    def export_state(self, state: dict[str, torch.Tensor], cfg: QwenVLConfig) -> dict[str, torch.Tensor]:
        """Our state dict -> canonical checkpoint tensors."""
        return {self.canonical_key(k, cfg): t for k, t in state.items()}

    def import_tensors(self, tensors: Tensors, cfg: QwenVLConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream checkpoint (key, tensor) -> (our key, tensor), one tensor in flight."""
        for key, t in tensors:
            name = self.our_key(self.canonical_key(key, cfg), cfg)
            if not (cfg.tie_word_embeddings and name == "lm_head.weight"):
                yield name, t

    # -- processing -------------------------------------------------------------------------------
    def build_processor(self, folder: str | Path, cfg: QwenVLConfig) -> Any:
        raise NotImplementedError

    def processing_defaults(self) -> dict[str, Any]:
        """Keyword defaults for Qwen2VLProcessor.from_folder (image_cfg, video_opts, default_template, ...)
        that a checkpoint's own files override; {} = Qwen2-VL's."""
        return {}

    def box_input_size(self, image_size: tuple[int, int], min_pixels: int | None = None,
                       max_pixels: int | None = None) -> tuple[int, int] | None:
        """(W, H) of the input the model saw for an image of image_size (W, H) under the family's default
        resize rule, when its boxes are in those pixels; None when they are relative to the image
        (per-mille, 0-1000). For a client without the checkpoint's processor (apps/remote.py); with one,
        processor.input_sizes is exact."""
        return None

    def generation_config(self, config: dict) -> dict:
        """Greedy defaults for a shipped checkpoint: stop at <|im_end|> and <|endoftext|>."""
        text = config.get("text_config", config)
        bos = text.get("bos_token_id", config.get("bos_token_id"))
        eos = text.get("eos_token_id", config.get("eos_token_id"))
        return {"bos_token_id": bos, "eos_token_id": [eos, bos], "pad_token_id": bos, "do_sample": False,
                "max_new_tokens": 64}

    # -- training ---------------------------------------------------------------------------------
    def dummy_vision_input(self, cfg: QwenVLConfig) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        """The smallest input the tower accepts (one 1 x merge x merge block), for zero-gradient steps."""
        v = cfg.vision
        m = v.spatial_merge_size
        return torch.zeros(m * m, v.in_channels * v.temporal_patch_size * v.patch_size ** 2), [(1, m, m)]
