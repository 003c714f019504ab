"""The assembled vision-language model with a phased API an engine can drive.

    feats  = model.encode_images(pixels, grid_thw)        # vision tower + adapter -> [N_img_tokens, F]
    embeds = model.embed(input_ids, image_feats, video_feats)  # scatter into placeholder slots
    hidden = model(embeds, positions, mask, cache, start)  # decoder with explicit positions / KV cache
    logits = model.logits(hidden)

F = D, except with DeepStack (Qwen3-VL, cfg.n_deepstack = k > 0): F = D*(1+k), the main features then
each deepstack level (vision_qwen3.py); embed() then returns [B, T, D*(1+k)] and the decoder peels the
levels off after its first k layers (decoder.TextDecoder.forward). The tower is chosen by
`cfg.vision.tower`, never by a family name.

Module names match the legacy Hugging Face layout (`visual.*`, `model.*`, `lm_head`), so weights.py
maps checkpoint keys with a prefix rename only. No generate() here: sampling lives in qwenvl.engine.
"""

from __future__ import annotations

import torch
from torch import nn

from qwenvl.config import QwenVLConfig
from qwenvl.model.decoder import KVCache, TextDecoder
from qwenvl.model.layers import Linear, linear
from qwenvl.model.vision import VisionTransformer
from qwenvl.model.vision_qwen3 import DeepstackVisionTransformer
from qwenvl.model.vision_v1 import VisionTransformerV1

TOWER_CLASSES: dict[str, type[nn.Module]] = {
    "resampler": VisionTransformerV1,  # Qwen-VL v1: fixed-res ViT + resampler
    "merger": VisionTransformer,  # Qwen2-VL / Qwen2.5-VL
    "deepstack": DeepstackVisionTransformer,  # Qwen3-VL
}


def build_vision(cfg: QwenVLConfig) -> nn.Module:
    return TOWER_CLASSES[cfg.vision.tower](cfg.vision)


class QwenVLModel(nn.Module):
    def __init__(self, cfg: QwenVLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = build_vision(cfg)
        self.model = TextDecoder(cfg.text)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)

    # -- phase 1: vision -------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor, grid_thw: torch.Tensor | list | None = None) -> torch.Tensor:
        """Images or videos -> LLM-space tokens [N_tokens, F], in input order.

        towers merger / deepstack: pixels [N_patches, C*T*P*P] packed over items, grid_thw [n, 3];
        N_tokens = sum(t*h*w)/4. F = D, or D*(1+k) with k deepstack levels.
        tower resampler (v1): pixels [n, 3, S, S]; N_tokens = n * n_queries, F = D.
        """
        dtype = next(self.visual.parameters()).dtype
        return self.visual(pixels.to(dtype), grid_thw)

    # -- phase 2: embed --------------------------------------------------------------------------
    def placeholder_masks(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image slots, video slots) as [B, T] bool."""
        cfg = self.cfg
        if cfg.vision.tower == "resampler":
            # v1: every position strictly between <img> and </img> is an image slot
            start, end = cfg.image_start_id, cfg.image_start_id + 1
            depth = (input_ids == start).long().cumsum(-1) - (input_ids == end).long().cumsum(-1)
            img = (depth > 0) & (input_ids != start)
            return img, torch.zeros_like(img)
        return input_ids == cfg.image_token_id, input_ids == cfg.video_token_id

    def embed(self, input_ids: torch.Tensor, image_feats: torch.Tensor | None = None,
              video_feats: torch.Tensor | None = None, *, placeholders: bool = True) -> torch.Tensor:
        """input_ids [B, T] -> embeddings [B, T, D], vision feature rows written into their slots in order.

        With DeepStack (cfg.n_deepstack = k > 0) and any vision slot in the batch the result is
        [B, T, D*(1+k)]: token embeddings in channels [0, D), zeros in the rest, and every vision slot
        holding its whole feature row [main | level 0 | ... | level k-1] (TextDecoder.forward splits it).
        placeholders=False: plain token lookup [B, T, D] (decode steps: a sampled placeholder id is just
        a token there, as in the reference, not a slot missing its features).
        """
        x = self.model.embed_tokens(input_ids)
        if not placeholders:
            return x
        img_mask, vid_mask = self.placeholder_masks(input_ids)
        items = (("image", img_mask, image_feats), ("video", vid_mask, video_feats))
        counts = [int(mask.sum()) for _, mask, _ in items]
        for (name, _, feats), n in zip(items, counts, strict=True):
            got = 0 if feats is None else feats.shape[0]
            if n != got:
                raise ValueError(f"{name} placeholders and features do not match: {n} slots in the prompt, "
                                 f"{got} {name} feature rows")
        if self.cfg.n_deepstack and sum(counts):
            x = torch.cat([x, x.new_zeros(*x.shape[:-1], x.shape[-1] * self.cfg.n_deepstack)], dim=-1)
        for (name, mask, feats), n in zip(items, counts, strict=True):
            if n:
                if feats.shape[-1] != x.shape[-1]:
                    raise ValueError(f"{name} features are {feats.shape[-1]} wide, the embeddings {x.shape[-1]} "
                                     f"(hidden_size * (1 + n_deepstack = {self.cfg.n_deepstack}))")
                x = x.masked_scatter(mask[..., None], feats.to(x.dtype))
        return x

    # -- phase 3: decoder ------------------------------------------------------------------------
    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, start: int | torch.Tensor = 0,
                ntk_len: int | list[int] | torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, T, D] (or [B, T, D*(1+k)] from embed(), DeepStack), positions [3, B, T] or [B, T]
        -> final hidden states [B, T, D]. start / ntk_len: an int, or one per row ([B]; TextDecoder)."""
        return self.model(embeds, positions, mask, cache, start, ntk_len)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V]."""
        if self.lm_head is None:
            return linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)
