"""Decoder position ids: M-RoPE (T, H, W) for Qwen2-VL / Qwen2.5-VL / Qwen3-VL, plain 1-D for v1.

Computed here, once per request, from token ids and vision grids; the model never rebuilds them.
Semantics follow the released models' reference code (transformers 4.51, vLLM): text after a vision
item continues at max(previous positions) + 1, and Qwen2.5-VL's temporal id is
long(t * second_per_grid * tokens_per_second) in float. Later references drift, each pinned by
tests/processing/test_video_reference.py: transformers 5.x continues text at start + max(h, w)/merge
(differs for videos whose temporal ids outrun the spatial extent), and 4.57 truncates second_per_grid
to an int first (all temporal ids 0 when a grid spans under a second, e.g. 2 frames at 3 fps).
Qwen3-VL (`split_video_groups`): each temporal patch of a video is its own (1, h, w) item with its own
placeholder run, separated by timestamp text, so its T ids all equal its start and the semantics agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeSpec:
    """What position ids depend on: token ids of the placeholders and the vision geometry."""

    image_token_id: int
    video_token_id: int
    spatial_merge_size: int = 2
    absolute_time: bool = False  # Qwen2.5-VL: temporal id = t * second_per_grid * tokens_per_second
    tokens_per_second: float = 2.0
    split_video_groups: bool = False  # Qwen3-VL: video (t, h, w) -> t items (1, h, w), one run each


def mrope_positions(ids: list[int] | torch.Tensor, spec: RopeSpec, image_grids: list[tuple[int, int, int]] = (),
                    video_grids: list[tuple[int, int, int]] = (),
                    second_per_grid: list[float] | None = None) -> tuple[torch.Tensor, int]:
    """One unpadded sequence -> (positions [3, T] long, delta) where decode position = slot + delta.

    Example (Qwen2-VL, merge 2): "a b <vs> [image 1x4x6 patches -> 2x3 tokens] <ve> c":
      T: 0 1 2 | 3 3 3 3 3 3 | 6 7     (text resumes at max + 1 = 6)
      H: 0 1 2 | 3 3 3 4 4 4 | 6 7
      W: 0 1 2 | 3 4 5 3 4 5 | 6 7
    With spec.split_video_groups a video grid (t, h, w) is read as t grids (1, h, w), each with its own
    placeholder run (and second_per_grid entry), as Qwen3-VL's processor lays them out.
    """
    if spec.split_video_groups:
        second_per_grid = [s for (t, _, _), s in zip(video_grids, second_per_grid or [1.0] * len(video_grids),
                                                      strict=False) for _ in range(t)]
        video_grids = [(1, h, w) for t, h, w in video_grids for _ in range(t)]
    ids_t = torch.as_tensor(ids).long()
    n, m = ids_t.numel(), spec.spatial_merge_size
    kind = torch.zeros(n, dtype=torch.long)
    kind[ids_t == spec.image_token_id] = 1
    kind[ids_t == spec.video_token_id] = 2
    grids = {1: iter(image_grids), 2: iter(video_grids)}
    seconds = iter(second_per_grid or [])
    pieces: list[torch.Tensor] = []
    nxt, i = 0, 0  # next free position id, cursor in ids
    vis = torch.nonzero(kind).flatten().tolist()
    vi = 0
    while i < n:
        while vi < len(vis) and vis[vi] < i:
            vi += 1
        j = vis[vi] if vi < len(vis) else n  # next vision token (or end)
        if j > i:  # text run
            pieces.append(torch.arange(nxt, nxt + j - i).expand(3, -1))
            nxt += j - i
            i = j
            continue
        k = int(kind[i])
        try:
            t, h, w = next(grids[k])
        except StopIteration:
            raise ValueError(f"more {'image' if k == 1 else 'video'} placeholders than grids") from None
        gh, gw = h // m, w // m
        count = t * gh * gw
        if not bool((kind[i:i + count] == k).all()) or i + count > n:
            raise ValueError(f"placeholder run at {i} shorter than its grid {(t, h, w)} needs ({count} tokens)")
        tt = torch.arange(t)
        if spec.absolute_time:
            step = (next(seconds, 1.0) if k == 2 else 0.0) * spec.tokens_per_second
            tt = (tt * step).long()
        pos = torch.stack([
            tt.view(t, 1, 1).expand(t, gh, gw),
            torch.arange(gh).view(1, gh, 1).expand(t, gh, gw),
            torch.arange(gw).view(1, 1, gw).expand(t, gh, gw),
        ]).reshape(3, -1) + nxt
        pieces.append(pos)
        nxt = int(pos.max()) + 1
        i += count
    for k, it in grids.items():
        if next(it, None) is not None:
            raise ValueError(f"more {'image' if k == 1 else 'video'} grids than placeholders in the prompt")
    pos = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
    return pos, nxt - n


def batch_positions(rows: list[torch.Tensor], left_pad_to: int) -> torch.Tensor:
    """Stack per-row [3, T_i] positions into [3, B, T] with left padding (pad positions = 1, ignored)."""
    out = torch.ones(3, len(rows), left_pad_to, dtype=torch.long)
    for b, p in enumerate(rows):
        out[:, b, left_pad_to - p.shape[1]:] = p
    return out
