"""Log-likelihood of candidate continuations after a prompt (multiple choice scored by likelihood).

`continuation_token_logprobs` runs the model; `choose` turns the per-token log-probabilities into a choice,
either by the summed log-probability (lm-eval's "acc"; what the runner uses) or by the mean per token, which is
Qwen-VL's eval_mm/evaluate_multiple_choice.py rule (argmin over the options of the mean cross-entropy of the
option's tokens) and keeps options with more tokens from losing for their length alone.

Must not: tokenise text or know about records; the caller passes token ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from qwenvl.engine.generate import vision_features
from qwenvl.inputs import ModelInputs


@torch.no_grad()
def _token_logprobs(model, inp: ModelInputs, continuations: list[list[int]]) -> list[torch.Tensor]:
    """log p(token k of a candidate | prompt, tokens < k), [len(candidate)] float32 per candidate."""
    dev = model.model.embed_tokens.weight.device
    img, vid = vision_features(model, inp)  # vision encoded once, reused for every candidate
    t = len(inp.input_ids)
    out = []
    for cont in continuations:
        ids = torch.tensor([cont], device=dev)
        slots = torch.arange(t, t + len(cont), device=dev) + inp.rope_delta
        extra = slots.expand(3, -1) if inp.positions.dim() == 2 else slots
        pos = torch.cat([inp.positions.to(dev), extra], dim=-1).unsqueeze(-2)
        x = model.embed(torch.tensor([inp.input_ids + cont], device=dev), img, vid)
        logp = model.logits(model(x, pos)[0, t - 1:-1]).float().log_softmax(-1)
        out.append(logp.gather(1, ids[0][:, None])[:, 0])
    return out


def continuation_token_logprobs(model, inp: ModelInputs, continuations: list[list[int]]) -> list[list[float]]:
    """Per-token log p(continuation tokens | prompt) for each candidate (one forward per candidate).

    The candidate tokens follow the prompt as plain text tokens: position = slot + rope_delta on every
    M-RoPE axis (what decoding would use), or the slot itself for 1-D RoPE.
    """
    return [lp.tolist() for lp in _token_logprobs(model, inp, continuations)]


def continuation_logprobs(model, inp: ModelInputs, continuations: list[list[int]]) -> list[float]:
    """Sum of log p(continuation tokens | prompt) for each candidate (see `continuation_token_logprobs`)."""
    return [float(lp.sum()) for lp in _token_logprobs(model, inp, continuations)]


def choose(token_logprobs: Sequence[Sequence[float]], normalize: str = "sum") -> int:
    """Index of the likeliest candidate (ties: the first, like argmax/argmin in the references).

    normalize="sum": the largest summed log-probability. normalize="mean": the largest mean per token, i.e.
    the smallest mean cross-entropy (Qwen-VL's eval_mm). E.g. [[log 1/4], [log 1/8, log 1/2, log 1/2]]:
    sums -1.386 vs -3.466 pick 0; means -1.386 vs -1.155 pick 1.
    """
    if not token_logprobs:
        raise ValueError("choose needs at least one candidate")
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
    scores = []
    for lps in token_logprobs:
        if normalize == "mean" and not lps:
            raise ValueError("a candidate with no tokens has no mean log-probability")
        total = math.fsum(lps)
        scores.append(total / len(lps) if normalize == "mean" else total)
    return max(range(len(scores)), key=lambda k: (scores[k], -k))
