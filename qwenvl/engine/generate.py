"""Correctness-first generation for one prompt: prefill, then KV-cached decode with explicit positions.

The engine allocates the cache and computes every position; the model only computes. A batched,
scheduled engine builds on the same calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from qwenvl.engine.sampling import SamplingParams, apply_repetition_penalty, select
from qwenvl.inputs import ModelInputs
from qwenvl.model.decoder import KVCache


@dataclass
class Generation:
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    vision_seconds: float = 0.0
    ttft_seconds: float = 0.0  # vision + prefill + first token
    decode_seconds: float = 0.0


@torch.no_grad()
def vision_features(model, inp: ModelInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(image features, video features) of one prompt, each [N_tokens, D'] or None (D' > D with DeepStack)."""
    dev = model.model.embed_tokens.weight.device
    img = model.encode_images(inp.image_pixels.to(dev), inp.image_grid) if inp.image_pixels is not None else None
    vid = model.encode_images(inp.video_pixels.to(dev), inp.video_grid) if inp.video_pixels is not None else None
    return img, vid


@torch.no_grad()
def prefill_embeds(model, inp: ModelInputs) -> tuple[torch.Tensor, float]:
    """Token embeddings with vision features scattered in: [1, T, D] (wider with DeepStack), plus vision seconds."""
    t0 = time.perf_counter()
    img, vid = vision_features(model, inp)
    vision_s = time.perf_counter() - t0
    ids = torch.tensor([inp.input_ids], device=model.model.embed_tokens.weight.device)
    return model.embed(ids, img, vid), vision_s


def _positions(inp: ModelInputs, device) -> torch.Tensor:
    return inp.positions.to(device).unsqueeze(-2)  # [3, 1, T] or [1, T]


def _decode_position(inp: ModelInputs, slot: int, device) -> torch.Tensor:
    p = torch.tensor([[slot + inp.rope_delta]], device=device)
    return p.expand(3, 1, 1) if inp.positions.dim() == 2 else p


@torch.no_grad()
def stream(model, inp: ModelInputs, params: SamplingParams, stats: Generation | None = None) -> Iterator[int]:
    """Yield generated token ids one by one (stop tokens are not yielded)."""
    dev = model.model.embed_tokens.weight.device
    dtype = model.model.embed_tokens.weight.dtype
    gen = torch.Generator(device=dev).manual_seed(params.seed) if params.seed is not None else None
    t_start = time.perf_counter()
    embeds, vision_s = prefill_embeds(model, inp)
    n = embeds.shape[1]
    cache = KVCache.allocate(model.cfg.text, 1, n + params.max_new_tokens, dtype, dev)
    hidden = model(embeds, _positions(inp, dev), None, cache, 0)
    logits = model.logits(hidden[:, -1]).float()
    seen = torch.tensor([inp.input_ids], device=dev)
    stops = set(params.stop_token_ids)
    if stats is not None:
        stats.vision_seconds, stats.prompt_tokens, stats.finish_reason = vision_s, n, "length"
    t_first = None
    for step in range(params.max_new_tokens):
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        tok = int(select(logits, params, gen)[0])
        if t_first is None:
            t_first = time.perf_counter()
            if stats is not None:
                stats.ttft_seconds = t_first - t_start
        if tok in stops:
            if stats is not None:
                stats.finish_reason = "stop"
            break
        yield tok
        if stats is not None:
            stats.decode_seconds = time.perf_counter() - t_first
        if step + 1 == params.max_new_tokens:
            break
        slot = n + step
        seen = torch.cat([seen, torch.tensor([[tok]], device=dev)], dim=1)
        x = model.embed(torch.tensor([[tok]], device=dev))
        hidden = model(x, _decode_position(inp, slot, dev), None, cache, slot, ntk_len=n)
        logits = model.logits(hidden[:, -1]).float()


def generate(model, inp: ModelInputs, params: SamplingParams) -> Generation:
    out = Generation(token_ids=[], finish_reason="length", prompt_tokens=len(inp.input_ids))
    out.token_ids = list(stream(model, inp, params, out))
    return out
