"""TrainExamples -> one Batch: right padding, or greedy packing of several samples per row.

Packed rows (`packing=True`) put samples back to back; `segment_ids` (1, 2, ... per sample, 0 on pads)
make attention block-diagonal, each sample keeps its own positions (so they restart at 0, M-RoPE
[3, T] or 1-D), and the label at each sample's first token is IGNORE, so no target is predicted from
the previous sample. A packed row then computes exactly what the separate samples would, and the mean
loss over targets is unchanged (tests/train/test_collate.py).

Vision tensors are concatenated in the order the placeholders appear in the batch read row by row,
because QwenVLModel.embed scatters features into the [B, T] slots in that (row-major) order.

Must not: tokenize, load images, truncate samples, or know the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qwenvl.train.batch import IGNORE, Batch
from qwenvl.train.masks import TrainExample


def pack_rows(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Greedy first-fit packing: example indices per row, each row's total length <= max_len.

    Examples are taken in order and each goes into the first row with room, so the result is
    deterministic; an example longer than max_len is an error (the dataset filters those).
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(f"example {i} has {n} tokens, more than max_len {max_len}; filter it before collation")
        row = next((r for r, free in enumerate(room) if free >= n), None)
        if row is None:
            rows.append([])
            room.append(max_len)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= n
    return rows


def collate(examples: Sequence[TrainExample], pad_id: int, packing: bool = False,
            max_len: int | None = None) -> Batch:
    """Examples -> Batch with B rows of T tokens (T = longest row).

    packing=False: one example per row, right-padded (pad_id, labels IGNORE, key_valid False);
    max_len, if given, only checks lengths. packing=True: rows from `pack_rows(lengths, max_len)`.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    lengths = [len(ex) for ex in examples]
    if packing:
        if max_len is None:
            raise ValueError("packing needs max_len (the row length)")
        rows = pack_rows(lengths, max_len)
    else:
        if max_len is not None and max(lengths) > max_len:
            raise ValueError(f"an example has {max(lengths)} tokens, more than max_len {max_len}")
        rows = [[i] for i in range(len(examples))]

    mrope = examples[0].inputs.positions.dim() == 2
    if any((ex.inputs.positions.dim() == 2) != mrope for ex in examples):
        raise ValueError("cannot mix M-RoPE [3, T] and 1-D [T] positions in one batch")
    b, t = len(rows), max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    labels = torch.full((b, t), IGNORE, dtype=torch.long)
    key_valid = torch.zeros(b, t, dtype=torch.bool)
    segment_ids = torch.zeros(b, t, dtype=torch.long)
    positions = torch.zeros((3, b, t) if mrope else (b, t), dtype=torch.long)
    order: list[int] = []  # examples in row-major order: the order their vision placeholders are read
    for r, row in enumerate(rows):
        pos = 0
        for seg, i in enumerate(row, start=1):
            ex, n = examples[i], lengths[i]
            if len(ex.labels) != n:
                raise ValueError(f"example {i}: {len(ex.labels)} labels for {n} tokens")
            input_ids[r, pos:pos + n] = torch.as_tensor(ex.inputs.input_ids, dtype=torch.long)
            labels[r, pos:pos + n] = torch.as_tensor(ex.labels, dtype=torch.long)
            labels[r, pos] = IGNORE  # never predicted from the previous sample (or from nothing)
            key_valid[r, pos:pos + n] = True
            segment_ids[r, pos:pos + n] = seg
            positions[..., r, pos:pos + n] = ex.inputs.positions
            pos += n
            order.append(i)
    ordered = [examples[i].inputs for i in order]
    return Batch(
        input_ids=input_ids, labels=labels, positions=positions, key_valid=key_valid,
        segment_ids=segment_ids if packing else None,
        image_pixels=_cat([x.image_pixels for x in ordered]), image_grid=[g for x in ordered for g in x.image_grid],
        video_pixels=_cat([x.video_pixels for x in ordered]), video_grid=[g for x in ordered for g in x.video_grid],
        dense=_cat([examples[i].dense for i in order]),
        point=_cat([examples[i].point for i in order]),
    )


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [x for x in tensors if x is not None]
    return torch.cat(present) if present else None
