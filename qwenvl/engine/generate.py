"""One prompt at a time, over the engine's step loop: generate() / stream() for callers with a bare model.

    gen = generate(model, inputs, SamplingParams(max_new_tokens=32))   # Generation
    for tok in stream(model, inputs, params): ...                      # token ids as they come

Each call builds a one-slot Engine sized for the request (prompt + max_new_tokens), so nothing here
has its own decode loop. Long-lived callers (the pipeline, a server) keep one Engine instead.
vision_features / prefill_embeds serve prompt scoring (pipeline.logits, eval.likelihood).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from qwenvl.engine.engine import Engine, encode_vision, model_device
from qwenvl.engine.sampling import SamplingParams
from qwenvl.engine.scheduler import Generation
from qwenvl.inputs import ModelInputs

__all__ = ["Generation", "generate", "prefill_embeds", "stream", "vision_features"]


@torch.no_grad()
def vision_features(model, inp: ModelInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(image features, video features) of one prompt, each [N_tokens, D'] or None (D' > D with DeepStack)."""
    return encode_vision(model, [inp], model_device(model))


@torch.no_grad()
def prefill_embeds(model, inp: ModelInputs) -> tuple[torch.Tensor, float]:
    """Token embeddings with vision features scattered in: [1, T, D] (wider with DeepStack), plus vision seconds."""
    t0 = time.perf_counter()
    img, vid = vision_features(model, inp)
    vision_s = time.perf_counter() - t0
    ids = torch.tensor([inp.input_ids], device=model_device(model))
    return model.embed(ids, img, vid), vision_s


def _engine(model, inp: ModelInputs, params: SamplingParams) -> Engine:
    return Engine(model, n_slots=1, max_len=len(inp.input_ids) + max(params.max_new_tokens, 1))


def generate(model, inp: ModelInputs, params: SamplingParams) -> Generation:
    return _engine(model, inp, params).generate(inp, params)


def stream(model, inp: ModelInputs, params: SamplingParams) -> Iterator[int]:
    """Yield generated token ids one by one (stop tokens are not yielded)."""
    for ev in _engine(model, inp, params).stream(inp, params):
        yield from ev.token_ids
