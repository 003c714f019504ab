"""Qwen-VL v1 vision tower: the per-head interleaved qkv layout and the whole tower against a reference
forward written here from architecture-facts A.2-A.3 (seq-first layout, explicit softmax, torch MHA)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qwenvl.config import VisionConfig
from qwenvl.model.vision_v1 import InterleavedAttention, VisionTransformerV1

CFG = VisionConfig(tower="resampler", window_size=0, depth=2, hidden_size=48, num_heads=4, intermediate_size=96,
                   out_hidden_size=256, hidden_act="gelu", patch_size=14, image_size=84, n_queries=16)


def randomize_(mod: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            is_norm = ".ln_" in f".{name}" and name.endswith("weight")
            p.copy_((1.0 if is_norm else 0.0) + 0.1 * torch.randn(p.shape, generator=g))


def interleaved_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor,
                          heads: int) -> torch.Tensor:
    """x [L, N, D] (seq-first). in_proj rows are grouped per head as [q_h; k_h; v_h] of head_dim each."""
    seq, n, d = x.shape
    hd = d // heads
    w = w.view(heads, 3, hd, d)
    b = b.view(heads, 3, hd)
    outs = []
    for h in range(heads):
        q = x @ w[h, 0].t() + b[h, 0]
        k = x @ w[h, 1].t() + b[h, 1]
        v = x @ w[h, 2].t() + b[h, 2]
        att = torch.einsum("lnd,mnd->nlm", q, k) / math.sqrt(hd)
        outs.append(torch.einsum("nlm,mnd->lnd", att.softmax(-1), v))
    return torch.cat(outs, -1) @ wo.t() + bo


def test_block_attention_uses_the_interleaved_in_proj():
    torch.manual_seed(0)
    attn = InterleavedAttention(48, 4)
    randomize_(attn, 3)
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        ours = attn(x)
        ref = interleaved_reference(x.transpose(0, 1), attn.in_proj.weight, attn.in_proj.bias,
                                    attn.out_proj.weight, attn.out_proj.bias, 4).transpose(0, 1)
        # the same weights read in torch MHA's [all q | all k | all v] layout give something else
        mha = nn.MultiheadAttention(48, 4, batch_first=True)
        mha.load_state_dict({"in_proj_weight": attn.in_proj.weight, "in_proj_bias": attn.in_proj.bias,
                             "out_proj.weight": attn.out_proj.weight, "out_proj.bias": attn.out_proj.bias})
        wrong, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - wrong).abs().max() > 1e-2


def tower_reference(m: VisionTransformerV1, px: torch.Tensor) -> torch.Tensor:
    """pixels [n, 3, S, S] -> [n, n_queries, D], straight from the facts (LND layout as the original)."""
    cfg, p = m.cfg, m.cfg.patch_size
    n, g = px.shape[0], px.shape[-1] // p
    patches = F.unfold(px, kernel_size=p, stride=p)  # [n, 3*p*p, g*g]
    x = (m.conv1.weight.flatten(1) @ patches).transpose(1, 2)  # [n, g*g, W]
    src = math.isqrt(m.positional_embedding.shape[0])
    pos = F.interpolate(m.positional_embedding.reshape(1, src, src, -1).permute(0, 3, 1, 2), size=(g, g),
                        mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(g * g, -1)
    x = F.layer_norm(x + pos, (cfg.hidden_size,), m.ln_pre.weight, m.ln_pre.bias, 1e-6).transpose(0, 1)
    for blk in m.transformer.resblocks:
        h = F.layer_norm(x, (cfg.hidden_size,), blk.ln_1.weight, blk.ln_1.bias, 1e-6)
        a = blk.attn
        x = x + interleaved_reference(h, a.in_proj.weight, a.in_proj.bias, a.out_proj.weight, a.out_proj.bias,
                                      cfg.num_heads)
        h = F.layer_norm(x, (cfg.hidden_size,), blk.ln_2.weight, blk.ln_2.bias, 1e-6)
        x = x + F.gelu(h @ blk.mlp.fc1.weight.t() + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.t() + blk.mlp.fc2.bias
    r, d = m.attn_pool, cfg.out_hidden_size
    kv = F.layer_norm(x @ r.kv_proj.weight.t(), (d,), r.ln_kv.weight, r.ln_kv.bias, 1e-6)  # [L, n, D]
    q = F.layer_norm(r.query, (d,), r.ln_q.weight, r.ln_q.bias, 1e-6)
    qs = math.isqrt(cfg.n_queries)
    pos_k = F.interpolate(r.pos_embed.reshape(1, qs, qs, d).permute(0, 3, 1, 2), size=(g, g), mode="bicubic",
                          align_corners=False).permute(0, 2, 3, 1).reshape(g * g, d)
    mha = nn.MultiheadAttention(d, d // 128)
    mha.load_state_dict({k.removeprefix("attn."): v for k, v in r.state_dict().items() if k.startswith("attn.")})
    out, _ = mha((q + r.pos_embed)[:, None].expand(-1, n, -1), kv + pos_k[:, None], kv, need_weights=False)
    out = F.layer_norm(out.transpose(0, 1), (d,), m.ln_post.weight, m.ln_post.bias, 1e-6)
    return out @ m.proj


@pytest.mark.parametrize("size", [84, 224])  # 6x6 grid (both tables resized) and 16x16 (ViT table as is)
def test_tower_matches_reference(size):
    torch.manual_seed(0)
    m = VisionTransformerV1(CFG).eval()
    randomize_(m, 5)
    px = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = m(px)
        ref = tower_reference(m, px)
        alone = m(px[1:])
    assert out.shape == (2 * CFG.n_queries, CFG.out_hidden_size)
    torch.testing.assert_close(out.view(2, CFG.n_queries, -1), ref, atol=1e-5, rtol=1e-5)
    # image-major: the second image's tokens are rows n_queries.. and do not depend on the first image
    torch.testing.assert_close(out[CFG.n_queries:], alone, atol=1e-5, rtol=1e-5)


def test_parameter_names_follow_the_official_checkpoint():
    names = set(VisionTransformerV1(CFG).state_dict())
    for key in ("conv1.weight", "positional_embedding", "ln_pre.weight", "proj", "ln_post.bias",
                "transformer.resblocks.1.attn.in_proj.weight", "transformer.resblocks.0.attn.out_proj.bias",
                "attn_pool.query", "attn_pool.pos_embed", "attn_pool.kv_proj.weight", "attn_pool.attn.in_proj_weight",
                "attn_pool.attn.in_proj_bias", "attn_pool.attn.out_proj.weight", "attn_pool.ln_q.weight",
                "attn_pool.ln_kv.bias"):
        assert key in names, key
    assert "conv1.bias" not in names and "attn_pool.kv_proj.bias" not in names
    m = VisionTransformerV1(CFG)
    assert m.positional_embedding.shape == (256, 48) and m.proj.shape == (256, 256)


def test_gradient_checkpointing_gives_the_same_output_and_grads():
    torch.manual_seed(0)
    m = VisionTransformerV1(CFG).train()
    px = torch.randn(1, 3, 84, 84)
    a = m(px)
    a.square().sum().backward()
    g0 = m.transformer.resblocks[0].attn.in_proj.weight.grad.clone()
    m.zero_grad()
    m.transformer.gradient_checkpointing = True
    b = m(px)
    b.square().sum().backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(m.transformer.resblocks[0].attn.in_proj.weight.grad, g0)


def test_rejects_non_square_or_misaligned_images():
    m = VisionTransformerV1(CFG)
    with pytest.raises(ValueError, match="square"):
        m(torch.randn(1, 3, 84, 70))
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(1, 3, 80, 80))
