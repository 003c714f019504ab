"""Log-likelihood of candidate continuations after a prompt (multiple choice scored by likelihood)."""

from __future__ import annotations

import torch

from qwenvl.engine.generate import vision_features
from qwenvl.inputs import ModelInputs


@torch.no_grad()
def continuation_logprobs(model, inp: ModelInputs, continuations: list[list[int]]) -> list[float]:
    """Sum of log p(continuation tokens | prompt) for each candidate (one forward per candidate).

    The candidate tokens follow the prompt as plain text tokens: position = slot + rope_delta on every
    M-RoPE axis (what decoding would use), or the slot itself for 1-D RoPE.
    """
    dev = model.model.embed_tokens.weight.device
    img, vid = vision_features(model, inp)  # vision encoded once, reused for every candidate
    t = len(inp.input_ids)
    scores = []
    for cont in continuations:
        ids = torch.tensor([cont], device=dev)
        slots = torch.arange(t, t + len(cont), device=dev) + inp.rope_delta
        extra = slots.expand(3, -1) if inp.positions.dim() == 2 else slots
        pos = torch.cat([inp.positions.to(dev), extra], dim=-1).unsqueeze(-2)
        x = model.embed(torch.tensor([inp.input_ids + cont], device=dev), img, vid)
        logp = model.logits(model(x, pos)[0, t - 1:-1]).float().log_softmax(-1)
        scores.append(float(logp.gather(1, ids[0][:, None]).sum()))
    return scores
