"""Pointing loss: the decoder's attention from the answer toward the object the question names.

The learnability ladder (bench/RESULTS.md) found that dense vision targets make the features rich, and
that tasks pooling over the whole image (caption, count, motion) then learn to read them, while tasks that
must first find one named object (colour / shape / position VQA, grounding, reading one string) stay at
their blank-image level: the tiny decoder never learns the lookup. The generator knows where that object
is, so the lookup can be taught directly, as attention supervision: at every position that predicts an
answer token, one decoder layer's attention over the image tokens of its own sample (averaged over heads,
renormalised over image tokens only, so the heads stay free to read text) should put its mass on the
tokens covering the object. Loss = -log(that mass).

Targets per record (`record_point`): VQA meta.target (the object asked about), grounding meta.box, OCR
meta.text_box, counting the objects that match meta.target; anything else (captions, dialogues,
multi-image) has none. A feature token is a target when the box covers a fair share of its cell (the rule
train/dense.py uses for `cover`).

Training-only: a forward hook reads the layer's input; nothing is added to the model or its export.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qwenvl.model.rope import apply_rope
from qwenvl.train.dense import box_overlap, image_grids


def target_boxes(meta: dict) -> list[Sequence[float]]:
    """The boxes (original pixels) of what a synth record's question is about; [] when it names nothing."""
    target = meta.get("target")
    if isinstance(target, (list, tuple)) and len(target) == 4:
        return [target]
    if isinstance(target, dict):  # counting: every object of the named shape / colour
        return [o["box"] for o in meta.get("objects") or []
                if all(target.get(k) in (None, o.get(k)) for k in ("shape", "colour"))]
    for key in ("box", "text_box"):
        if isinstance(meta.get(key), (list, tuple)) and len(meta[key]) == 4:
            return [meta[key]]
    return []


def box_cells(boxes: Sequence[Sequence[float]], image_size: Sequence[int], rows: int, cols: int) -> np.ndarray:
    """[rows * cols] bool: cells (row-major) that a box covers by a fair share (dense.box_overlap)."""
    w, h = image_size
    cw, ch = w / cols, h / rows
    ys, xs = np.divmod(np.arange(rows * cols), cols)
    hit = np.zeros(rows * cols, dtype=bool)
    for b in boxes:
        area, fair = box_overlap(b, xs * cw, ys * ch, cw, ch)
        hit |= (area > 0) & fair
    return hit


def record_point(meta: dict, inputs, vision_cfg) -> torch.Tensor | None:
    """[N_image_tokens] float for one record: 1 = covers the question's object, 0 = another cell of the
    same image, -1 = no target known (any other record: multi-image, video, no geometry). None without
    images, so batches line up with their image tokens."""
    cells = image_grids(inputs, vision_cfg)
    if not cells:
        return None
    n = sum(t * r * c for t, r, c in cells)
    boxes = target_boxes(meta) if len(cells) == 1 and "image_size" in meta else []
    t, rows, cols = cells[0]
    if not boxes or t != 1:
        return torch.full((n,), -1.0)
    hit = box_cells(boxes, meta["image_size"], rows, cols)
    return torch.from_numpy(hit.astype(np.float32)) if hit.any() else torch.full((n,), -1.0)


class PointTap:
    """A forward hook on one decoder layer's attention that keeps its inputs (x, cos, sin) for the loss."""

    def __init__(self, attn: torch.nn.Module) -> None:
        self.attn = attn
        self.saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.handle = attn.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        x, cos, sin = args[:3]
        self.saved = (x, cos, sin)

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        saved, self.saved = self.saved, None
        if saved is None:
            raise RuntimeError("the pointing tap saw no forward pass of its layer")
        return saved


def point_loss(attn: torch.nn.Module, saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
               image_slots: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None,
               point: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """(mean over answer positions of -log(attention mass on the target tokens), that mass's mean).

    saved: the layer's (x [B, T, D], cos, sin [B, T, d]); image_slots [B, T] bool; labels [B, T] aligned
    with the inputs (label[t] is predicted at t-1); point [N_image_tokens] in image-slot order (row-major),
    from record_point. None when no answer position belongs to a sample with a target.
    """
    x, cos, sin = saved
    b, t, _ = x.shape
    seg = segment_ids if segment_ids is not None else torch.ones(b, t, dtype=torch.long, device=x.device)
    ir, ic = image_slots.nonzero(as_tuple=True)  # image tokens, in the order point is in
    known = point >= 0
    if not bool(known.any()):
        return None, 0.0
    ir, ic, tgt = ir[known], ic[known], point[known] > 0
    # answer positions: p predicts labels[p + 1]; keep those whose sample (row, segment) has a known target
    qr, qc = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    sample = lambda r, c: r * (t + 1) + seg[r, c]  # segment ids are <= t
    keep = torch.isin(sample(qr, qc), sample(ir, ic))
    if not bool(keep.any()):
        return None, 0.0
    qr, qc = qr[keep], qc[keep]
    h, kv, d = attn.h, attn.kv, attn.d
    q = attn.q_proj(x[qr, qc]).view(-1, h, d)
    k = attn.k_proj(x[ir, ic]).view(-1, kv, d)
    if getattr(attn, "qk_norm", False):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = apply_rope(q.float(), cos[qr, qc][:, None].float(), sin[qr, qc][:, None].float())
    k = apply_rope(k.float(), cos[ir, ic][:, None].float(), sin[ir, ic][:, None].float())
    k = k.repeat_interleave(h // kv, dim=1)  # GQA: each query head reads its group's key head
    scores = torch.einsum("qhd,khd->hqk", q, k) / d ** 0.5  # [H, Q, K]
    same = sample(qr, qc)[:, None] == sample(ir, ic)[None]  # [Q, K]: its own image
    probs = scores.masked_fill(~same, float("-inf")).softmax(-1).mean(0)  # [Q, K], mean over heads
    mass = (probs * tgt[None].float()).sum(-1)
    return -(mass.clamp_min(1e-6).log()).mean(), float(mass.detach().mean())
