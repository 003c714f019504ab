"""Dense auxiliary targets for the vision side: what the generator knows about every image, per cell.

A from-scratch ViT learns nothing from the answer tokens alone at this scale: the answer-only loss
leaves the model on the "ignore the image" plateau (bench/RESULTS.md, the learnability ladder). The
generator knows every object's colour, shape, size and centre and every glyph's position, so the
vision features can be taught directly, as token labelling / CenterNet do. The head reads the features
the language model receives (`QwenVLModel.encode_images`): a merged token (Qwen2/2.5/3-VL) or a
resampler query (v1, laid out on its side x side sin-cos grid), each predicting `sub` x `sub` cells of
the image, so a 2x2-merged token still answers for each of its four ViT patches.

Targets per cell (IGNORE where a target does not apply):
  cover    what fills most of the cell: 0 background, 1..C an object's colour, C+1 text
  centres  how many object centres lie in the cell (0, 1, 2, 3 = 3 or more)
  colour / shape / size / offset   of the first object whose centre is in the cell (offset: where the
           centre sits inside the cell, on a 4x4 grid, so boxes can be read off the features)
  glyph    the character whose ink covers the cell centre (OCR images, near-upright text only)

The head is training-only (DenseHead lives beside the model, never in the exported checkpoint).
Must not: touch the model's own parameters or change what is exported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qwenvl.data.scenes import COLOURS, SHAPES, SIZES

IGNORE = -100
COLOUR_IDS = {c: i + 1 for i, c in enumerate(COLOURS)}
TEXT_CLASS = len(COLOURS) + 1
GLYPHS = "".join(chr(c) for c in range(33, 127))  # printable ASCII; 0 = no glyph
# (name, number of classes) in target column order
TARGETS: tuple[tuple[str, int], ...] = (("cover", len(COLOURS) + 2), ("centres", 4), ("colour", len(COLOURS) + 1),
                                        ("shape", len(SHAPES)), ("size", len(SIZES)), ("offset", 16),
                                        ("glyph", len(GLYPHS) + 1))
MAX_UPRIGHT = 8.0  # degrees: glyph targets only for text this close to horizontal


def token_grid(vision_cfg, grid_thw: Sequence[int]) -> tuple[int, int, int]:
    """(t, rows, cols) of the feature tokens encode_images returns for one item (row-major)."""
    if vision_cfg.tower == "resampler":
        side = math.isqrt(vision_cfg.n_queries)
        return 1, side, side
    t, h, w = (int(x) for x in grid_thw)
    m = vision_cfg.spatial_merge_size
    return t, h // m, w // m


@lru_cache(maxsize=256)
def _glyph_edges(text: str, font_name: str, size: int) -> tuple[float, ...]:
    """Left edge of each character and the right edge of the last, as fractions of the ink width."""
    from qwenvl.data.render import font

    f = font(font_name, size)
    x0, _, x1, _ = f.getbbox(text)
    width = max(1, x1 - x0)
    edges = [(f.getlength(text[:i]) - x0) / width for i in range(len(text))] + [1.0]
    return tuple(min(1.0, max(0.0, e)) for e in edges)


def box_overlap(box: Sequence[float], x1: np.ndarray, y1: np.ndarray, cw: float, ch: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(overlap area of box with each cell [x1, x1 + cw) x [y1, y1 + ch), whether that is a fair share): a box
    counts for a cell when it fills a fair share (15%) of the cell or of itself."""
    ox = np.clip(np.minimum(x1 + cw, box[2]) - np.maximum(x1, box[0]), 0, None)
    oy = np.clip(np.minimum(y1 + ch, box[3]) - np.maximum(y1, box[1]), 0, None)
    area = ox * oy
    return area, area >= 0.15 * min(cw * ch, (box[2] - box[0]) * (box[3] - box[1]))


def image_grids(inputs, vision_cfg) -> list[tuple[int, int, int]]:
    """(t, rows, cols) of the feature tokens of each image of a record's ModelInputs ([] without images)."""
    pixels = inputs.image_pixels
    # v1 has no grids: one fixed-size image per row of pixels (token_grid reads its query grid)
    grids = list(inputs.image_grid) or [(1, 0, 0)] * (0 if pixels is None else pixels.shape[0])
    return [token_grid(vision_cfg, g) for g in grids]


def image_targets(meta: dict, rows: int, cols: int) -> np.ndarray:
    """[rows * cols, len(TARGETS)] int64 targets for one image of a synth record (row-major cells).

    meta: the record's "meta" (objects with boxes, or ocr_text / text_box / font / angle) and its
    "image_size" [W, H] in original pixels. Cells without a known answer get IGNORE; a record the
    generator gave no geometry for gets IGNORE everywhere.
    """
    out = np.full((rows * cols, len(TARGETS)), IGNORE, dtype=np.int64)
    objects, text_box = meta.get("objects"), meta.get("text_box")
    if not objects and not text_box:
        return out
    w, h = meta["image_size"]
    cw, ch = w / cols, h / rows
    ys, xs = np.divmod(np.arange(rows * cols), cols)
    cx1, cy1 = xs * cw, ys * ch
    cx2, cy2 = cx1 + cw, cy1 + ch
    best = np.zeros(rows * cols)  # largest overlap seen per cell
    out[:, 0] = 0
    out[:, 1] = 0

    def cover(box: Sequence[float], cls: int) -> None:
        area, fair = box_overlap(box, cx1, cy1, cw, ch)
        take = (area > best) & fair
        out[take, 0] = cls
        best[take] = area[take]

    for o in objects or []:
        cover(o["box"], COLOUR_IDS[o["colour"]])
        col, row = min(cols - 1, int(o["cx"] / cw)), min(rows - 1, int(o["cy"] / ch))
        i = row * cols + col
        if out[i, 1] == 0:
            out[i, 2] = COLOUR_IDS[o["colour"]]
            out[i, 3] = SHAPES.index(o["shape"])
            out[i, 4] = list(SIZES).index(o["size"])
            fx, fy = o["cx"] / cw - col, o["cy"] / ch - row
            out[i, 5] = min(3, int(fy * 4)) * 4 + min(3, int(fx * 4))
        out[i, 1] = min(3, out[i, 1] + 1)
    if text_box:
        cover(text_box, TEXT_CLASS)
        text = meta.get("ocr_text") or ""
        if text and abs(float(meta.get("angle", 0.0))) <= MAX_UPRIGHT and meta.get("font"):
            x1, y1, x2, y2 = text_box
            mx, my = (cx1 + cx2) / 2, (cy1 + cy2) / 2
            inside = (mx >= x1) & (mx < x2) & (my >= y1) & (my < y2)
            edges = np.asarray(_glyph_edges(text, meta["font"], int(meta.get("font_size", 12))))
            pos = (mx - x1) / max(1, x2 - x1)
            k = np.clip(np.searchsorted(edges, pos, side="right") - 1, 0, len(text) - 1)
            glyph = np.array([GLYPHS.find(c) + 1 for c in text])[k]
            out[:, 6] = 0
            out[inside, 6] = np.where(glyph[inside] > 0, glyph[inside], IGNORE)
    return out


def record_targets(meta: dict, inputs, vision_cfg, sub: int) -> torch.Tensor | None:
    """Targets for every image of one record's ModelInputs, [N_image_tokens, sub*sub, len(TARGETS)] in
    feature order (None without images). Only a single-image record with known geometry gets real
    targets; the images of any other (multi-image, documents, no meta) are all IGNORE, so batches still
    line up."""
    grids = image_grids(inputs, vision_cfg)
    if not grids:
        return None
    parts = []
    known = len(grids) == 1 and bool(meta.get("objects") or meta.get("text_box")) and "image_size" in meta
    for t, rows, cols in grids:
        if known and t == 1:
            cells = image_targets(meta, rows * sub, cols * sub)  # [rows*sub * cols*sub, K]
        else:
            cells = np.full((t * rows * sub * cols * sub, len(TARGETS)), IGNORE, dtype=np.int64)
        k = cells.shape[1]
        # cell (r*sub + i, c*sub + j) -> token r*cols + c, slot i*sub + j
        cells = cells.reshape(t * rows, sub, cols, sub, k).transpose(0, 2, 1, 3, 4)
        parts.append(cells.reshape(t * rows * cols, sub * sub, k))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))


class DenseHead(nn.Module):
    """Linear read-out of every feature token: sub*sub cells x all targets' classes."""

    def __init__(self, dim: int, sub: int) -> None:
        super().__init__()
        self.sub = sub
        self.sizes = [n for _, n in TARGETS]
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, sub * sub * sum(self.sizes))

    def forward(self, feats: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """feats [N, D] (the first D channels: DeepStack levels are left out), targets [N, sub*sub, K]
        -> (mean over targets of each target's mean cross-entropy, per-target accuracies)."""
        n = targets.shape[0]
        logits = self.proj(self.norm(feats[:, : self.norm.normalized_shape[0]].float()))
        logits = logits.view(n * self.sub * self.sub, sum(self.sizes))
        flat = targets.reshape(-1, len(self.sizes))
        losses, acc = [], {}
        for (name, _), part, y in zip(TARGETS, logits.split(self.sizes, dim=-1), flat.unbind(-1), strict=True):
            keep = y != IGNORE
            if keep.any():
                losses.append(F.cross_entropy(part[keep], y[keep]))
                acc[name] = float((part[keep].argmax(-1) == y[keep]).float().mean())
        if not losses:
            return feats.sum() * 0.0, acc
        return torch.stack(losses).mean(), acc
