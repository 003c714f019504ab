"""Qwen3-VL vision tower and assembled model against transformers' own modules (tiny random weights).

The tower is compared with `Qwen3VLVisionModel` on two images of different sizes (merged grids 3x5 and
7x2, neither a multiple of the 5x5 position table) plus a 2-frame video, main merger and every deepstack
level, atol 1e-5 fp32. The whole model is compared with `Qwen3VLForConditionalGeneration` on a prompt
with an image and a 2-frame video, which checks embed()'s wide deepstack scatter end to end.
"""

from __future__ import annotations

import pytest
import torch

from qwenvl.families.base import hf_to_legacy
from qwenvl.model.qwenvl import QwenVLModel
from qwenvl.model.vision_qwen3 import DeepstackVisionTransformer, pos_embed_taps
from tests.model import qwen3_tiny as tiny
from tests.model.hf_tiny import randomize_
from tests.model.qwen3_tiny import HIDDEN, PATCH_DIM

GRID = [(1, 6, 10), (1, 14, 4), (2, 8, 6)]
IMG, VID, VS, VE = 151655, 151656, 151652, 151653


def patches(grid, seed: int) -> torch.Tensor:
    n = sum(t * h * w for t, h, w in grid)
    return torch.randn(n, PATCH_DIM, generator=torch.Generator().manual_seed(seed))


def spread_(model: torch.nn.Module, seed: int) -> None:
    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed.weight"):  # as large as the patch embedding, so its order shows
                p.copy_(torch.randn(p.shape, generator=g))


def tower_pair(deepstack=(0, 2)):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    torch.manual_seed(0)
    ref = Qwen3VLVisionModel(tiny.hf_vision(deepstack)).eval()
    spread_(ref, 3)
    ours = DeepstackVisionTransformer(tiny.ours_vision(deepstack)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes, no renames
    return ref, ours


@pytest.mark.parametrize("deepstack", [(0, 2), (2, 1)])  # (2, 1): levels come out in block order
@torch.no_grad()
def test_tower_matches_reference(deepstack):
    ref, ours = tower_pair(deepstack)
    px = patches(GRID, 1)
    out = ref(hidden_states=px, grid_thw=torch.tensor(GRID))
    got = ours(px, GRID)
    n = sum(t * h * w for t, h, w in GRID) // 4
    assert got.shape == (n, HIDDEN * 3)
    main, *levels = got.split(HIDDEN, dim=-1)
    torch.testing.assert_close(main, out.pooler_output, atol=1e-5, rtol=0)
    assert len(out.deepstack_features) == len(levels) == 2
    for mine, theirs in zip(levels, out.deepstack_features, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # items are independent: the video alone gives the same rows as inside the batch
    alone = ours(patches(GRID, 1)[-2 * 8 * 6:], GRID[-1:])
    torch.testing.assert_close(alone, got[-2 * 8 * 6 // 4:], atol=1e-5, rtol=0)


def test_position_taps_match_bilinear_interpolate():
    """pos_embed_taps == F.interpolate(bilinear, align_corners=True), read in merge-block order."""
    side, (h, w) = 5, (6, 4)
    table = torch.randn(side * side, 3)
    idx, wts = pos_embed_taps([(1, h, w)], side, merge=2)
    got = (table[idx] * wts[..., None]).sum(1)  # [h*w, 3] in merge-block order
    img = table.T.reshape(1, 3, side, side)
    ref = torch.nn.functional.interpolate(img, size=(h, w), mode="bilinear", align_corners=True)[0]
    ref = ref.reshape(3, h // 2, 2, w // 2, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 3)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert torch.allclose(wts.sum(1), torch.ones(h * w))


def test_tower_bf16_autocast_and_gradient_checkpointing():
    _, ours = tower_pair()
    px = patches(GRID, 2)
    with torch.no_grad():
        ref = ours(px, GRID)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ours(px, GRID)
    assert ((low.float() - ref).norm() / ref.norm()) < 3e-2
    ours.train()
    a = ours(px, GRID)
    a.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.gradient_checkpointing = True
    b = ours(px, GRID)
    b.square().mean().backward()
    torch.testing.assert_close(a, b)
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    assert grads["pos_embed.weight"].abs().sum() > 0 and grads["deepstack_merger_list.1.norm.weight"].abs().sum() > 0


def test_tower_rejects_knobs_it_does_not_implement():
    import dataclasses

    with pytest.raises(ValueError, match="layernorm"):
        DeepstackVisionTransformer(dataclasses.replace(tiny.ours_vision(), norm="rmsnorm"))


# -- the assembled model ---------------------------------------------------------------------------------


def prompt(img_grid, vid_grid) -> list[int]:
    """text <vs> img <ve> text, then every video frame as `<t> <vs> frame <ve>` (Qwen3-VL's timestamps)."""
    ids = [1, 2, 3, VS] + [IMG] * (img_grid[1] * img_grid[2] // 4) + [VE, 7, 8]
    for f in range(vid_grid[0]):
        ids += [20 + f, VS] + [VID] * (vid_grid[1] * vid_grid[2] // 4) + [VE]
    return ids + [9, 10, 11]


@pytest.fixture(scope="module")
def model_pair():
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    hf = Qwen3VLForConditionalGeneration(tiny.hf_model_config()).eval()
    spread_(hf, 5)
    ours = QwenVLModel(tiny.ours_model()).eval()
    ours.load_state_dict({hf_to_legacy(k): v for k, v in hf.state_dict().items()}, strict=True)
    return hf, ours


@torch.no_grad()
def test_model_logits_match_reference_with_image_and_video(model_pair):
    hf, ours = model_pair
    img_grid, vid_grid = (1, 6, 10), (2, 8, 6)
    ids = torch.tensor([prompt(img_grid, vid_grid)])
    types = (ids == IMG).int() + 2 * (ids == VID).int()
    img_px, vid_px = patches([img_grid], 3), patches([vid_grid], 4)
    ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types, pixel_values=img_px,
             image_grid_thw=torch.tensor([img_grid]), pixel_values_videos=vid_px,
             video_grid_thw=torch.tensor([vid_grid])).logits
    pos, _ = hf.model.get_rope_index(ids, types, torch.tensor([img_grid]), torch.tensor([vid_grid]))
    embeds = ours.embed(ids, ours.encode_images(img_px, [img_grid]), ours.encode_images(vid_px, [vid_grid]))
    assert embeds.shape == (1, ids.shape[1], HIDDEN * 3)
    text = ~((ids == IMG) | (ids == VID))
    assert embeds[..., HIDDEN:][text].abs().max() == 0  # deepstack channels are zero at text slots
    got = ours.logits(ours(embeds, pos))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # without the deepstack levels the logits move: the injection is live
    plain = ours.logits(ours(embeds[..., :HIDDEN], pos))
    assert (plain - ref).abs().max() > 1e-2


@torch.no_grad()
def test_embed_width_and_errors(model_pair):
    _, ours = model_pair
    text = ours.embed(torch.tensor([[1, 2, 3]]))
    assert text.shape == (1, 3, HIDDEN)  # text only (and decode steps): plain width
    ids = torch.tensor([[1, VS] + [IMG] * 15 + [VE]])
    feats = ours.encode_images(patches([(1, 6, 10)], 0), [(1, 6, 10)])
    with pytest.raises(ValueError, match="wide"):
        ours.embed(ids, feats[:, :HIDDEN])
    with pytest.raises(ValueError, match="do not match"):
        ours.embed(ids, feats[:3])


def test_moe_model_trains_a_few_steps_under_bf16_autocast():
    """Vision tower -> wide embed -> MoE decoder -> loss, backprop and SGD steps: the loss falls."""
    torch.manual_seed(0)
    model = QwenVLModel(tiny.ours_model(moe=True)).train()
    model.model.gradient_checkpointing = model.visual.gradient_checkpointing = True
    grid = (1, 6, 10)
    ids = torch.tensor([prompt(grid, (1, 4, 4))])
    types = (ids == IMG) | (ids == VID)
    n = ids.shape[1]
    pos = torch.arange(n).view(1, 1, n).expand(3, 1, n)
    img_px, vid_px = patches([grid], 6), patches([(1, 4, 4)], 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeds = model.embed(ids, model.encode_images(img_px, [grid]), model.encode_images(vid_px, [(1, 4, 4)]))
            logits = model.logits(model(embeds, pos))[0, :-1].float()
        target = ids[0, 1:].masked_fill(types[0, 1:], -100)
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
        loss.backward()
        losses.append(loss.item())
        grads = [model.visual.deepstack_merger_list[1].linear_fc2.weight.grad,
                 model.model.layers[0].mlp.experts.gate_up_proj.grad, model.model.layers[2].mlp.gate.weight.grad]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        opt.step()
    assert losses[-1] < losses[0], losses
