"""Static-batch generation: several prompts, left-padded into one KV cache, decoded together.

Each row keeps its own positions (its M-RoPE delta, its left-pad offset), so a row's tokens do not
depend on what else is in the batch (pain point 3: results must not change with batch size or
padding side). Rows that hit a stop token keep stepping with their output ignored. A scheduled,
continuously batched engine is a later step; this one is for evaluation and offline jobs.
"""

from __future__ import annotations

import torch

from qwenvl.engine.generate import Generation
from qwenvl.engine.sampling import SamplingParams, apply_repetition_penalty, select
from qwenvl.inputs import ModelInputs
from qwenvl.model.attention import build_causal_mask
from qwenvl.model.decoder import KVCache


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


@torch.no_grad()
def generate_batch(model, inputs: list[ModelInputs], params: SamplingParams) -> list[Generation]:
    dev = model.model.embed_tokens.weight.device
    dtype = model.model.embed_tokens.weight.dtype
    b, lens = len(inputs), [len(i.input_ids) for i in inputs]
    t = max(lens)
    pad = [t - n for n in lens]
    ids = torch.zeros(b, t, dtype=torch.long, device=dev)
    valid = torch.zeros(b, t + params.max_new_tokens, dtype=torch.bool, device=dev)
    mrope = inputs[0].positions.dim() == 2
    pos = torch.zeros((3, b, t) if mrope else (b, t), dtype=torch.long, device=dev)
    for r, inp in enumerate(inputs):
        ids[r, pad[r]:] = torch.tensor(inp.input_ids, device=dev)
        valid[r, pad[r]:t] = True
        pos[..., r, pad[r]:] = inp.positions.to(dev)
    img = _cat([i.image_pixels for i in inputs])
    vid = _cat([i.video_pixels for i in inputs])
    img_f = model.encode_images(img.to(dev), [g for i in inputs for g in i.image_grid]) if img is not None else None
    vid_f = model.encode_images(vid.to(dev), [g for i in inputs for g in i.video_grid]) if vid is not None else None
    embeds = model.embed(ids, img_f, vid_f)  # rows in order, so features scatter in prompt order
    cache = KVCache.allocate(model.cfg.text, b, t + params.max_new_tokens, dtype, dev)
    hidden = model(embeds, pos, build_causal_mask(valid[:, :t], 0, t, b, dev), cache, 0)
    logits = model.logits(hidden[:, -1]).float()
    gen = torch.Generator(device=dev).manual_seed(params.seed) if params.seed is not None else None
    stops = torch.tensor(list(params.stop_token_ids) or [-1], device=dev)
    out = [Generation([], "length", n) for n in lens]
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    seen = ids.clone()
    delta = torch.tensor([i.rope_delta for i in inputs], device=dev)
    offset = torch.tensor(pad, device=dev)
    for step in range(params.max_new_tokens):
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        tok = select(logits, params, gen)
        hit = torch.isin(tok, stops) & ~done
        for r in range(b):
            if done[r]:
                continue
            if hit[r]:
                out[r].finish_reason = "stop"
            else:
                out[r].token_ids.append(int(tok[r]))
        done |= hit
        if bool(done.all()) or step + 1 == params.max_new_tokens:
            break
        slot = t + step
        valid[:, slot] = True
        seen = torch.cat([seen, tok[:, None]], dim=1)
        p = (slot - offset + delta)[:, None]  # [B, 1]: each row's own logical position
        p = p[None].expand(3, b, 1) if mrope else p
        mask = valid[:, None, None, :slot + 1]
        hidden = model(model.embed(tok[:, None]), p, mask, cache, slot, ntk_len=t)
        logits = model.logits(hidden[:, -1]).float()
    return out
