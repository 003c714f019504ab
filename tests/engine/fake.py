"""A fake model with QwenVLModel's phased API and a byte tokenizer, for engine scheduling tests.

The fake's next token is a function of the row's WHOLE cached prefix, read back through the real
model.attention.causal_attention on the engine's KV pool: with q = k = 0 attention is a plain mean of
v over the keys the row may see, v = (embedding, 1 at slot 0), so the output gives the prefix sum and
its length. Next token = (prefix sum + position) % 95 + 32 (printable ASCII). A wrong slot, a wrong
per-row offset, a missing mask over another request's stale entries, or image features scattered
into the wrong request all change the tokens; `expected` computes them in plain Python.
Embeddings are float64 so sums of a few hundred small ints are exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from qwenvl.inputs import ModelInputs
from qwenvl.model.attention import causal_attention, ragged_causal_mask

VOCAB = 300
STOP = 256  # never produced by the fake (it only emits 32..126)
IMG = 257
VID = 258


def decode(ids: list[int]) -> str:
    """The byte-level stand-in tokenizer: token i < 256 is byte i."""
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def encode(text: str) -> list[int]:
    return list(text.encode())


def inputs(text: str, images: list[list[float]] = (), videos: list[list[float]] = (), delta: int = 0) -> ModelInputs:
    """A prompt: text bytes, then per image / video a run of placeholders, one per feature value."""
    ids = encode(text)
    for feats in images:
        ids += [IMG] * len(feats)
    for feats in videos:
        ids += [VID] * len(feats)
    px = lambda items: torch.tensor([v for f in items for v in f], dtype=torch.float64)[:, None] if items else None
    return ModelInputs(ids, torch.arange(len(ids)) + delta, delta, image_pixels=px(images),
                       image_grid=[(1, 1, len(f)) for f in images], video_pixels=px(videos),
                       video_grid=[(1, 1, len(f)) for f in videos])


def next_token(prefix_sum: float, position: int) -> int:
    return int(round(prefix_sum) + position) % 95 + 32


def expected(inp: ModelInputs, n: int) -> list[int]:
    """The fake's greedy continuation of inp, n tokens, computed without the engine."""
    vals = [float(i) for i in inp.input_ids]
    feats = [float(v) for px in (inp.image_pixels, inp.video_pixels) if px is not None for v in px[:, 0]]
    slots = [k for k, i in enumerate(inp.input_ids) if i in (IMG, VID)]
    img_n = 0 if inp.image_pixels is None else inp.image_pixels.shape[0]
    order = [k for k in slots if inp.input_ids[k] == IMG] + [k for k in slots if inp.input_ids[k] == VID]
    for k, v in zip(order, feats[:img_n] + feats[img_n:], strict=True):
        vals[k] = v
    out = []
    for _ in range(n):
        tok = next_token(sum(vals), len(vals) - 1 + inp.rope_delta)
        out.append(tok)
        vals.append(float(tok))
    return out


class FakeModel(nn.Module):
    """encode_images / embed / forward / logits over a 1-layer, 1-head, head_dim-2 'decoder'."""

    def __init__(self, max_position_embeddings: int = 4096) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(text=SimpleNamespace(num_hidden_layers=1, num_key_value_heads=1, head_dim=2,
                                                        max_position_embeddings=max_position_embeddings))
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # gives the engine a device
        self.calls: list[tuple] = []

    def encode_images(self, pixels: torch.Tensor, grid) -> torch.Tensor:
        self.calls.append(("vision", pixels.shape[0]))
        return pixels.to(torch.float64)

    def embed(self, input_ids: torch.Tensor, image_feats=None, video_feats=None, *, placeholders=True) -> torch.Tensor:
        x = input_ids.to(torch.float64)[..., None]
        if not placeholders:
            return x
        for tok, feats in ((IMG, image_feats), (VID, video_feats)):
            mask = input_ids == tok
            if int(mask.sum()) != (0 if feats is None else feats.shape[0]):
                raise ValueError("placeholders and features do not match")
            if feats is not None:
                x = x.masked_scatter(mask[..., None], feats)
        return x

    def forward(self, embeds, positions, mask=None, cache=None, start=0, ntk_len=None) -> torch.Tensor:
        b, t, _ = embeds.shape
        self.calls.append(("forward", b, t, "rows" if isinstance(start, torch.Tensor) else "one"))
        starts = start if isinstance(start, torch.Tensor) else torch.full((b,), start)
        slot = starts[:, None] + torch.arange(t)  # [B, T]
        v = torch.stack([embeds[..., 0], (slot == 0).to(embeds.dtype)], -1)[:, None]  # [B, 1, T, 2]
        q = torch.zeros_like(v)
        if isinstance(start, torch.Tensor) and mask is None:
            mask = ragged_causal_mask(start, t)
        o = causal_attention(q, torch.zeros_like(v), v, mask, cache.layer(0, start) if cache is not None else None)
        o = o[:, 0]  # [B, T, 2]: (mean of the visible embeddings, 1 / number visible)
        total = o[..., 0] / o[..., 1]
        return torch.stack([total, positions.to(embeds.dtype)], -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        target = (hidden[..., 0].round() + hidden[..., 1]).long() % 95 + 32
        vocab = torch.arange(VOCAB)
        out = -(vocab - target[..., None]).abs().to(torch.float64) * 0.7
        return out.masked_fill((vocab < 32) | (vocab > 126), -50.0)
