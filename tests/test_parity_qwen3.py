"""Qwen3-VL (dense and MoE) against transformers on tiny random checkpoints, through our production loader.

The reference model is saved by transformers (its own layout: model.visual.*, model.language_model.*,
experts as [E, 2I, H]) and loaded with qwenvl.weights.load_model. Inputs exercise the hard parts:
two images whose merged grids are not multiples of anything and differ from the 6x6 position table,
a video split into per-frame groups with text (timestamps) between them, a left-padded batch, and
DeepStack features on every vision slot. Tolerance: max |delta logits| <= 1e-4 in fp32; greedy
24-token continuations identical.
"""

from __future__ import annotations

import pytest
import torch

from qwenvl import families
from qwenvl.engine.generate import generate
from qwenvl.engine.sampling import SamplingParams
from qwenvl.inputs import ModelInputs
from qwenvl.model.attention import build_causal_mask
from qwenvl.processing.positions import batch_positions, mrope_positions
from qwenvl.weights import load_model
from tests.fixtures.hf_tiny_qwen3 import PATCH, make_hf_checkpoint

IMG, VID, VS, VE = 151655, 151656, 151652, 151653
ATOL = 1e-4


@pytest.fixture(scope="module", params=["dense", "moe"])
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_" + request.param)
    hf = make_hf_checkpoint(folder, moe=request.param == "moe", seed=3)
    return hf, load_model(folder)


def frames(grid):
    """A video grid (t, h, w) as Qwen3-VL places it in the prompt: one (1, h, w) group per temporal patch."""
    return [(1, h, w) for t, h, w in grid for _ in range(t)]


def prompt(text_ids, items):
    """text, then per (kind, grid): <vs> pad*n <ve> (a video: one such block per frame group, with a
    stand-in timestamp text between groups) followed by more text."""
    ids = list(text_ids)
    for kind, grid in items:
        groups = frames([grid]) if kind == "video" else [grid]
        for k, (t, h, w) in enumerate(groups):
            if kind == "video":
                ids += [27, 15 + k, 13, 20, 6486, 29]  # "<k.0 seconds>"-like text
            ids += [VS] + [IMG if kind == "image" else VID] * (t * h * w // 4) + [VE]
        ids += [100 + len(ids) % 50, 13, 42]
    return ids


def patches(grid, seed):
    n = sum(t * h * w for t, h, w in grid)
    return torch.randn(n, 3 * 2 * PATCH * PATCH, generator=torch.Generator().manual_seed(seed))


def positions(model, ids, img_grid=(), vid_grid=()):
    spec = families.of(model.cfg).rope_spec(model.cfg)
    return mrope_positions(ids, spec, list(img_grid), list(vid_grid))  # the spec splits videos into groups


def ours_logits(model, ids, img_px=None, img_grid=(), vid_px=None, vid_grid=()):
    pos, _ = positions(model, ids, img_grid, vid_grid)
    img = model.encode_images(img_px, list(img_grid)) if img_px is not None else None
    vid = model.encode_images(vid_px, list(vid_grid)) if vid_px is not None else None
    return model.logits(model(model.embed(torch.tensor([ids]), img, vid), pos[:, None]))[0]


def token_types(ids: torch.Tensor) -> torch.Tensor:
    return (ids == IMG).int() + 2 * (ids == VID).int()


def hf_logits(hf, ids, img_px=None, img_grid=(), vid_px=None, vid_grid=()):
    t = torch.tensor([ids])
    kw = dict(input_ids=t, attention_mask=torch.ones_like(t), mm_token_type_ids=token_types(t))
    if img_px is not None:
        kw.update(pixel_values=img_px, image_grid_thw=torch.tensor(img_grid))
    if vid_px is not None:
        kw.update(pixel_values_videos=vid_px, video_grid_thw=torch.tensor(vid_grid))
    with torch.no_grad():
        return hf(**kw).logits[0]


@torch.no_grad()
def test_text_only(pair):
    hf, ours = pair
    ids = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 9707, 1879, 0, 42, 7]
    torch.testing.assert_close(ours_logits(ours, ids), hf_logits(hf, ids), atol=ATOL, rtol=0)


@torch.no_grad()
def test_one_image(pair):
    hf, ours = pair
    grid = [(1, 10, 14)]
    ids, px = prompt([1, 2, 3], [("image", g) for g in grid]), patches(grid, 1)
    torch.testing.assert_close(ours_logits(ours, ids, px, grid), hf_logits(hf, ids, px, grid), atol=ATOL, rtol=0)


@torch.no_grad()
def test_two_images_of_different_sizes(pair):
    """Merged grids 5x7 and 3x11 (patch grids 10x14, 6x22), both resampled from the 6x6 position table."""
    hf, ours = pair
    grid = [(1, 10, 14), (1, 6, 22)]
    ids, px = prompt([5, 6], [("image", g) for g in grid]), patches(grid, 2)
    torch.testing.assert_close(ours_logits(ours, ids, px, grid), hf_logits(hf, ids, px, grid), atol=ATOL, rtol=0)


@torch.no_grad()
def test_video_in_timestamped_frame_groups(pair):
    """3 temporal patches of 4x6 merge units: temporal extent beyond the spatial one, and an image after it."""
    hf, ours = pair
    vgrid, igrid = [(3, 8, 12)], [(1, 4, 6)]
    ids = prompt([9, 8, 7], [("video", vgrid[0]), ("image", igrid[0])])
    vpx, ipx = patches(vgrid, 3), patches(igrid, 4)
    ref = hf_logits(hf, ids, ipx, igrid, vpx, vgrid)
    torch.testing.assert_close(ours_logits(ours, ids, ipx, igrid, vpx, vgrid), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_batch_of_two_left_padded(pair):
    hf, ours = pair
    g1, g2 = [(1, 4, 4)], [(1, 6, 8)]
    a = prompt([11, 12, 13, 14, 15, 16, 17], [("image", g) for g in g1])
    b = prompt([21], [("image", g) for g in g2])
    grid, t = g1 + g2, max(len(a), len(b))
    px = torch.cat([patches(g1, 5), patches(g2, 6)])
    ids = torch.tensor([[151643] * (t - len(a)) + a, [151643] * (t - len(b)) + b])
    valid = torch.tensor([[0] * (t - len(a)) + [1] * len(a), [0] * (t - len(b)) + [1] * len(b)]).bool()
    ref = hf(input_ids=ids, attention_mask=valid.long(), pixel_values=px, image_grid_thw=torch.tensor(grid),
             mm_token_type_ids=token_types(ids)).logits
    pos = batch_positions([positions(ours, a, g1)[0], positions(ours, b, g2)[0]], t)
    h = ours(ours.embed(ids, ours.encode_images(px, grid)), pos, build_causal_mask(valid, 0, t, 2, ids.device))
    torch.testing.assert_close(ours.logits(h)[valid], ref[valid], atol=ATOL, rtol=0)


@torch.no_grad()
def test_greedy_24_tokens_with_an_image_match_generate(pair):
    """Our KV-cached decode (DeepStack only in the prefill, M-RoPE delta after the image) vs hf.generate."""
    hf, ours = pair
    grid = [(1, 6, 10)]
    ids, px = prompt([151644, 872, 198], [("image", g) for g in grid]), patches(grid, 7)
    pos, delta = positions(ours, ids, grid)
    inp = ModelInputs(input_ids=ids, positions=pos, rope_delta=delta, image_pixels=px, image_grid=grid)
    got = generate(ours, inp, SamplingParams(max_new_tokens=24, temperature=0.0)).token_ids
    t = torch.tensor([ids])
    ref = hf.generate(input_ids=t, attention_mask=torch.ones_like(t), mm_token_type_ids=token_types(t),
                      pixel_values=px, image_grid_thw=torch.tensor(grid), max_new_tokens=24, do_sample=False,
                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert got == ref


def test_checkpoint_round_trip_in_the_released_layout(pair, tmp_path):
    """We save the released layout (model.visual.* / model.language_model.*, experts [E, H, 2I] / [E, I, H]);
    it loads back bit-exact,
    and transformers loads it (its loader transposes released-layout experts) to the same logits."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from qwenvl.weights import save_model

    hf, ours = pair
    save_model(ours, tmp_path)
    back = load_model(tmp_path)
    for (k, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    t = ours.cfg.text
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        if t.num_experts:
            assert tuple(f.get_slice("model.language_model.layers.0.mlp.experts.gate_up_proj").get_shape()) == \
                (t.num_experts, t.hidden_size, 2 * t.moe_intermediate_size)
            assert tuple(f.get_slice("model.language_model.layers.0.mlp.experts.down_proj").get_shape()) == \
                (t.num_experts, t.moe_intermediate_size, t.hidden_size)
    assert {"model.visual.deepstack_merger_list.1.norm.weight",
            "model.language_model.layers.0.self_attn.q_norm.weight"} <= keys
    ref = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    grid = [(1, 6, 10)]
    ids, px = prompt([1, 2], [("image", g) for g in grid]), patches(grid, 8)
    torch.testing.assert_close(hf_logits(ref, ids, px, grid), hf_logits(hf, ids, px, grid), atol=1e-5, rtol=0)


def test_wrong_keys_are_refused_by_name(pair, tmp_path):
    from safetensors.torch import load_file, save_file

    hf, ours = pair
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("model.visual.deepstack_merger_list.1.linear_fc2.weight")
    state["model.language_model.layers.0.self_attn.q_norm.weight"] = torch.ones(7)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        load_model(tmp_path)
    assert "model.visual.deepstack_merger_list.1.linear_fc2.weight" in str(e.value)
    assert "model.language_model.layers.0.self_attn.q_norm.weight" in str(e.value)


def test_legacy_key_layout_loads_too(pair, tmp_path):
    """visual.* / model.* names (the Qwen2-VL-era layout some converters write) load to the same weights."""
    from safetensors.torch import load_file, save_file

    from qwenvl.families.base import hf_to_legacy

    hf, ours = pair
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file({hf_to_legacy(k): v for k, v in state.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    back = load_model(tmp_path)
    for (k, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
