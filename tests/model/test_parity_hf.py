"""Logit parity with transformers' Qwen2-VL / Qwen2.5-VL on tiny random checkpoints.

The reference model is saved by transformers and loaded here through our production loader.
Inputs exercise the hard parts: two images of different sizes whose merged grids are not multiples
of the 4x4-unit window, a video, and a left-padded batch of two prompts of different lengths.
Tolerance: max |delta logits| <= 1e-4 in fp32.
"""

from __future__ import annotations

import pytest
import torch

from qwenvl.processing.positions import RopeSpec, batch_positions, mrope_positions
from qwenvl.weights import load_model
from tests.model.hf_tiny import make_hf_checkpoint

IMG, VID, VS, VE = 151655, 151656, 151652, 151653
ATOL = 1e-4
FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_hf_checkpoint(request.param, folder)
    return request.param, hf, load_model(folder)


def spec_for(model) -> RopeSpec:
    cfg = model.cfg
    return RopeSpec(cfg.image_token_id, cfg.video_token_id, cfg.vision.spatial_merge_size,
                    absolute_time=cfg.model_type == "qwen2_5_vl", tokens_per_second=cfg.vision.tokens_per_second)


def prompt(text_ids, items):
    """ids: text, then for each (kind, grid) <vs> pad*n <ve> followed by more text."""
    ids = list(text_ids)
    for k, (t, h, w) in items:
        ids += [VS] + [IMG if k == "image" else VID] * (t * h * w // 4) + [VE] + [100 + len(ids) % 50, 13, 42]
    return ids


def token_types(ids: torch.Tensor) -> torch.Tensor:
    return (ids == IMG).int() + 2 * (ids == VID).int()


def ours_logits(model, ids, img_px=None, img_grid=(), vid_px=None, vid_grid=(), spg=None):
    pos, _ = mrope_positions(ids, spec_for(model), list(img_grid), list(vid_grid), spg)
    ids_t = torch.tensor([ids])
    img = model.encode_images(img_px, list(img_grid)) if img_px is not None else None
    vid = model.encode_images(vid_px, list(vid_grid)) if vid_px is not None else None
    h = model(model.embed(ids_t, img, vid), pos[:, None])
    return model.logits(h)[0]


def hf_logits(hf, ids, img_px=None, img_grid=(), vid_px=None, vid_grid=(), spg=None, position_ids=None):
    ids_t = torch.tensor([ids])
    kw = dict(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), mm_token_type_ids=token_types(ids_t))
    if img_px is not None:
        kw.update(pixel_values=img_px, image_grid_thw=torch.tensor(img_grid))
    if vid_px is not None:
        kw.update(pixel_values_videos=vid_px, video_grid_thw=torch.tensor(vid_grid))
        if spg is not None and "2_5" in type(hf).__name__:
            kw["second_per_grid_ts"] = torch.tensor(spg)
    if position_ids is not None:
        kw["position_ids"] = position_ids
    with torch.no_grad():
        return hf(**kw).logits[0]


def patches(grid, seed):
    n = sum(t * h * w for t, h, w in grid)
    return torch.randn(n, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_text_only(pair):
    _, hf, ours = pair
    ids = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 9707, 1879, 0, 42, 7]
    ref = hf_logits(hf, ids)
    assert (ours_logits(ours, ids) - ref).abs().max() <= ATOL


@torch.no_grad()
def test_one_image(pair):
    _, hf, ours = pair
    grid = [(1, 10, 14)]
    ids, px = prompt([1, 2, 3], [("image", g) for g in grid]), patches(grid, 1)
    ref = hf_logits(hf, ids, px, grid)
    torch.testing.assert_close(ours_logits(ours, ids, px, grid), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_two_images_of_different_sizes(pair):
    """Merged grids 5x7 and 3x11: neither is a multiple of the 4x4 window, windows are ragged."""
    _, hf, ours = pair
    grid = [(1, 10, 14), (1, 6, 22)]
    ids, px = prompt([5, 6], [("image", g) for g in grid]), patches(grid, 2)
    ref = hf_logits(hf, ids, px, grid)
    torch.testing.assert_close(ours_logits(ours, ids, px, grid), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_video(pair):
    """A 4-frame-pair video: where transformers 5.x and the released models agree on positions."""
    _, hf, ours = pair
    grid, spg = [(2, 10, 12)], [1.0]
    ids, px = prompt([9, 8, 7], [("video", g) for g in grid]), patches(grid, 3)
    ref = hf_logits(hf, ids, vid_px=px, vid_grid=grid, spg=spg)
    torch.testing.assert_close(ours_logits(ours, ids, vid_px=px, vid_grid=grid, spg=spg), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_long_video_with_original_positions(pair):
    """8 temporal grids on a 3x3 merged grid: temporal ids outrun the spatial extent, where transformers 5.x
    positions diverge from the released models'. Feed it our positions; everything else must match."""
    _, hf, ours = pair
    grid, spg = [(8, 6, 6)], [1.0]
    ids, px = prompt([4], [("video", g) for g in grid]) + [77, 78], patches(grid, 4)
    pos, _ = mrope_positions(ids, spec_for(ours), [], grid, spg)
    ref = hf_logits(hf, ids, vid_px=px, vid_grid=grid, spg=spg, position_ids=pos[:, None])
    torch.testing.assert_close(ours_logits(ours, ids, vid_px=px, vid_grid=grid, spg=spg), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_batch_of_two_left_padded(pair):
    _, hf, ours = pair
    g1, g2 = [(1, 4, 4)], [(1, 6, 8)]
    a = prompt([11, 12, 13, 14, 15, 16, 17], [("image", g) for g in g1])
    b = prompt([21], [("image", g) for g in g2])
    grid = g1 + g2
    px = torch.cat([patches(g1, 5), patches(g2, 6)])
    t = max(len(a), len(b))
    ids = torch.tensor([[151643] * (t - len(a)) + a, [151643] * (t - len(b)) + b])
    valid = torch.tensor([[0] * (t - len(a)) + [1] * len(a), [0] * (t - len(b)) + [1] * len(b)]).bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=valid.long(), pixel_values=px, image_grid_thw=torch.tensor(grid),
                 mm_token_type_ids=token_types(ids)).logits
    from qwenvl.model.attention import build_causal_mask

    spec = spec_for(ours)
    pos = batch_positions([mrope_positions(a, spec, g1)[0], mrope_positions(b, spec, g2)[0]], t)
    mask = build_causal_mask(valid, 0, t, 2, ids.device)
    h = ours(ours.embed(ids, ours.encode_images(px, grid)), pos, mask)
    got = ours.logits(h)
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=0)
