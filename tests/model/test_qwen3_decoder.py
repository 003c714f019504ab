"""Qwen3-VL text decoder (dense and MoE) and the sparse MoE block against transformers' own modules.

Reference modules: `Qwen3VLTextModel`, `Qwen3VLMoeTextModel`, `Qwen3VLMoeTextSparseMoeBlock`, built from
tiny configs (tests/model/qwen3_tiny.py) with spread-out random weights copied by state_dict (same key
names). Positions are 3-row and differ per axis, deepstack embeddings sit at scattered slots. Also: the
interleaved M-RoPE axis rule, KV-cached incremental decode == full forward, meta-device builds,
gradient checkpointing and bf16 autocast training through the MoE.
"""

from __future__ import annotations

import pytest
import torch

from qwenvl.model import moe as moe_mod
from qwenvl.model.decoder import KVCache, TextDecoder
from qwenvl.model.moe import SparseMoeBlock
from qwenvl.model.qwenvl import QwenVLModel
from qwenvl.model.rope import mrope_axis_map
from tests.model.hf_tiny import randomize_
from tests.model.qwen3_tiny import HIDDEN, SECTION, hf_text, ours_model, ours_text

B, T, K = 2, 13, 2  # batch, tokens, deepstack levels


def positions(seed: int = 0) -> torch.Tensor:
    """[3, B, T]: temporal ids ascending, height / width ids scattered and unequal to them."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T).expand(B, T) + torch.tensor([[0], [3]])
    return torch.stack([t, torch.randint(0, 40, (B, T), generator=g), torch.randint(0, 40, (B, T), generator=g)])


def visual_mask() -> torch.Tensor:
    m = torch.zeros(B, T, dtype=torch.bool)
    m[0, 3:7] = True
    m[1, [1, 2, 8, 9, 10]] = True
    return m


def decoder_pair(moe: bool):
    if moe:
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextModel as Ref
    else:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel as Ref
    torch.manual_seed(0)
    ref = Ref(hf_text(moe)).eval()
    randomize_(ref, 7)
    ours = TextDecoder(ours_text(moe)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def wide_inputs(ours: TextDecoder, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(input embeddings [B, T, D], the wide [B, T, D*(1+K)] form, the reference's per-level [n_vis, D] list)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (B, T), generator=g)
    with torch.no_grad():
        x = ours.embed_tokens(ids)
    mask = visual_mask()
    levels = [torch.randn(int(mask.sum()), HIDDEN, generator=g) for _ in range(K)]
    wide = torch.cat([x, x.new_zeros(B, T, HIDDEN * K)], -1)
    wide[mask] = torch.cat([x[mask], *levels], -1)
    return x, wide, levels


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@torch.no_grad()
def test_decoder_matches_reference_with_deepstack(moe):
    ref, ours = decoder_pair(moe)
    assert [type(layer.mlp).__name__ for layer in ours.layers] == (
        ["SparseMoeBlock", "GatedMLP", "SparseMoeBlock"] if moe else ["GatedMLP"] * 3)
    x, wide, levels = wide_inputs(ours)
    pos = positions()
    want = ref(inputs_embeds=x, position_ids=pos, visual_pos_masks=visual_mask(),
               deepstack_visual_embeds=levels).last_hidden_state
    got = ours(wide, pos)
    torch.testing.assert_close(got, want, atol=1e-5 if moe else 1e-4, rtol=0)
    # plain width-D embeds are the no-deepstack forward
    torch.testing.assert_close(ours(x, pos), ref(inputs_embeds=x, position_ids=pos).last_hidden_state,
                               atol=1e-4, rtol=0)


def test_interleaved_axis_map_is_the_reference_rule():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    for section in (SECTION, (24, 20, 20), (16, 24, 24), (8, 2, 6)):
        rope = Qwen3VLTextRotaryEmbedding.__new__(Qwen3VLTextRotaryEmbedding)
        rope.mrope_section = list(section)
        n = sum(section)
        freq = torch.arange(3.0)[:, None, None, None].expand(3, 1, 1, n).clone()  # value = axis id
        axis = rope.recomposition_frequencies(freq)[0, 0, :n].long()
        assert torch.equal(mrope_axis_map(section, interleaved=True), axis), section


@torch.no_grad()
def test_axis_map_bound_matters():
    """The old min(H, W) bound would send freq 10 of section (5, 4, 3) to T; the outputs must show it."""
    _, ours = decoder_pair(moe=False)
    x, _, _ = wide_inputs(ours)
    pos = positions()
    good = ours(x, pos)
    ours.axis_map = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 0])
    assert (ours(x, pos) - good).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(2, 7), (1, 1)], ids=["prefill", "decode"])
def test_moe_block_matches_reference_forward_and_backward(shape):
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextSparseMoeBlock

    torch.manual_seed(0)
    ref = Qwen3VLMoeTextSparseMoeBlock(hf_text(moe=True))
    randomize_(ref, 9)
    ours = SparseMoeBlock(ours_text(moe=True))
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.experts.gate_up_proj.shape == (8, 48, HIDDEN) and ours.experts.down_proj.shape == (8, HIDDEN, 24)
    x = torch.randn(*shape, HIDDEN, generator=torch.Generator().manual_seed(2))
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = ref(xr), ours(xo)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, atol=1e-5, rtol=0)
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-5, rtol=0, msg=name)


def test_moe_loop_fallback_equals_grouped_mm(monkeypatch):
    torch.manual_seed(0)
    block = SparseMoeBlock(ours_text(moe=True))
    randomize_(block, 4)
    x = torch.randn(3, 5, HIDDEN)
    with torch.no_grad():
        grouped = block(x)
        monkeypatch.setattr(moe_mod, "grouped_mm_supported", lambda *a: False)
        looped = block(x)
    torch.testing.assert_close(looped, grouped, atol=1e-6, rtol=0)


def test_moe_decoder_trains_under_bf16_autocast_with_checkpointing():
    _, ours = decoder_pair(moe=True)
    _, wide, _ = wide_inputs(ours)
    pos = positions()
    ours.train()

    def step(ckpt: bool) -> tuple[torch.Tensor, dict]:
        ours.zero_grad()
        ours.gradient_checkpointing = ckpt
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ours(wide, pos)
        out.float().square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}

    out_a, grads_a = step(False)
    out_b, grads_b = step(True)
    torch.testing.assert_close(out_b, out_a)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], msg=n)
    for n in ("layers.0.mlp.experts.gate_up_proj", "layers.2.mlp.experts.down_proj", "layers.0.mlp.gate.weight"):
        assert grads_a[n].dtype == torch.float32 and torch.isfinite(grads_a[n]).all() and grads_a[n].abs().sum() > 0
    with torch.no_grad():
        full = ours.eval()(wide, pos)
    assert ((out_a.float() - full).norm() / full.norm()) < 5e-2  # bf16 rounding only


@torch.no_grad()
def test_kv_cached_decode_equals_full_forward():
    """Prefill 8 tokens (wide, deepstack at 4..6), then decode 5 one at a time with width-D embeds."""
    _, ours = decoder_pair(moe=True)
    g = torch.Generator().manual_seed(5)
    x = ours.embed_tokens(torch.randint(0, 300, (1, T), generator=g))
    wide = torch.cat([x, x.new_zeros(1, T, HIDDEN * K)], -1)
    wide[0, 4:7, HIDDEN:] = torch.randn(3, HIDDEN * K, generator=g)
    pos = positions()[:, :1].clone()
    pos[:, :, 8:] = pos[0, :, 8:] + 20  # text after the image: T = H = W
    full = ours(wide, pos)
    cache = KVCache.allocate(ours.cfg, 1, T, torch.float32)
    p = 8
    steps = [ours(wide[:, :p], pos[:, :, :p], cache=cache, start=0)]
    for i in range(p, T):
        steps.append(ours(x[:, i:i + 1], pos[:, :, i:i + 1], cache=cache, start=i))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_meta_device_build_then_reset_buffers():
    cfg = ours_model(moe=True)
    torch.manual_seed(0)
    real = QwenVLModel(cfg).eval()
    with torch.device("meta"):
        meta = QwenVLModel(cfg)
    assert meta.model.axis_map.is_meta
    meta.to_empty(device="cpu")
    for mod in meta.modules():
        if hasattr(mod, "reset_buffers"):
            mod.reset_buffers("cpu")
    meta.load_state_dict(real.state_dict(), strict=True)
    meta.eval()
    assert torch.equal(meta.model.axis_map, mrope_axis_map(SECTION, interleaved=True))
    assert torch.equal(meta.model.inv_freq, real.model.inv_freq)
    ids = torch.tensor([[1, 2, 3, 4]])
    pos = torch.arange(4).view(1, 1, 4).expand(3, 1, 4)
    with torch.no_grad():
        torch.testing.assert_close(meta(meta.embed(ids), pos), real(real.embed(ids), pos), atol=0, rtol=0)


def test_decoder_rejects_a_bad_embed_width():
    ours = TextDecoder(ours_text(moe=False))
    with pytest.raises(ValueError, match="deepstack"):
        ours(torch.zeros(1, 2, HIDDEN + 5), torch.zeros(3, 1, 2, dtype=torch.long))
