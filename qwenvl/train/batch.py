"""The training batch contract and the loss: what collation produces and the loop consumes.

Packed rows hold several samples back to back; `segment_ids` keeps their attention block-diagonal
and each sample's positions restart at 0, so a packed row computes exactly what the separate
samples would (tests/train check the loss equality).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qwenvl.model.attention import build_causal_mask

IGNORE = -100


@dataclass
class Batch:
    """input_ids / labels / key_valid / segment_ids: [B, T]; positions: [3, B, T] (M-RoPE) or [B, T].

    labels are already aligned with input_ids (label[t] is the target for the token AT t, i.e. the
    loss compares logits[t-1] with labels[t]); IGNORE marks unsupervised tokens.
    Vision tensors are packed over the whole batch in prompt order (what QwenVLModel.encode_images takes).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    key_valid: torch.Tensor
    segment_ids: torch.Tensor | None = None
    image_pixels: torch.Tensor | None = None
    image_grid: list[tuple[int, int, int]] = field(default_factory=list)
    video_pixels: torch.Tensor | None = None
    video_grid: list[tuple[int, int, int]] = field(default_factory=list)
    dense: torch.Tensor | None = None  # [N_image_tokens, sub*sub, K] vision targets, image-token order
    point: torch.Tensor | None = None  # [N_image_tokens] 1 / 0 / -1: the question's object (train/point.py)

    def to(self, device: torch.device | str) -> Batch:
        mv = lambda t: t.to(device) if t is not None else None
        return Batch(mv(self.input_ids), mv(self.labels), mv(self.positions), mv(self.key_valid),
                     mv(self.segment_ids), mv(self.image_pixels), self.image_grid, mv(self.video_pixels),
                     self.video_grid, mv(self.dense), mv(self.point))

    @property
    def num_targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def forward_loss(model, batch: Batch, reduction: str = "mean", img: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy over supervised positions (mean over targets, or the sum).
    img: the batch's image features when the caller already encoded them."""
    if img is None and batch.image_pixels is not None:
        img = model.encode_images(batch.image_pixels, batch.image_grid)
    vid = model.encode_images(batch.video_pixels, batch.video_grid) if batch.video_pixels is not None else None
    embeds = model.embed(batch.input_ids, img, vid)
    b, t = batch.input_ids.shape
    mask = build_causal_mask(batch.key_valid, 0, t, b, batch.input_ids.device, batch.segment_ids)
    hidden = model(embeds, batch.positions, mask)
    # The LM head only runs where there is a target: answers are a few tokens of a long prompt, and
    # the head is ~25% of a tiny decoder's FLOPs.
    labels = batch.labels[:, 1:]
    keep = labels != IGNORE
    logits = model.logits(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, labels[keep], reduction=reduction)
