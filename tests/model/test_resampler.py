"""Qwen-VL v1 resampler: the MAE sin-cos table, the bicubic position resize, and the cross-attention
checked against torch.nn.MultiheadAttention loaded with the same weights (architecture-facts A.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qwenvl.model.resampler import Resampler, resize_pos_table, sincos_2d


def mae_sincos_numpy(dim: int, grid: int) -> np.ndarray:
    """The recipe as facts A.3 state it: meshgrid(w, h), first half from grid[0], float32 numpy."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, -1)

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(d // 2, dtype=np.float32) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


def test_sincos_shape_range_and_origin():
    t = sincos_2d(64, 5)
    assert t.shape == (25, 64) and t.dtype == torch.float32
    assert float(t.abs().max()) <= 1.0
    q = 64 // 4  # each half is [sin | cos] of q frequencies
    origin = torch.cat([torch.zeros(q), torch.ones(q), torch.zeros(q), torch.ones(q)])
    assert torch.equal(t[0], origin)


def test_sincos_halves_encode_column_then_row():
    dim, g = 32, 4
    t = sincos_2d(dim, g).view(g, g, dim)  # [row, col, dim]
    first, second = t[..., : dim // 2], t[..., dim // 2:]
    # first half depends on the column only, second half on the row only
    assert torch.equal(first, first[:1].expand(g, g, -1))
    assert torch.equal(second, second[:, :1].expand(g, g, -1))
    # sin / cos quarters: sin^2 + cos^2 = 1 per frequency, and column 1 gives sin(1 * omega_0) = sin(1)
    q = dim // 4
    assert torch.allclose(first[..., :q] ** 2 + first[..., q:] ** 2, torch.ones(g, g, q), atol=1e-6)
    assert math.isclose(float(t[0, 1, 0]), math.sin(1.0), rel_tol=1e-6)
    assert float(t[1, 0, 0]) == 0.0 and math.isclose(float(t[1, 0, dim // 2]), math.sin(1.0), rel_tol=1e-6)


def test_sincos_matches_the_numpy_recipe():
    ref = torch.from_numpy(mae_sincos_numpy(256, 16))
    torch.testing.assert_close(sincos_2d(256, 16), ref, atol=2e-6, rtol=0)


def test_resize_16_to_32_is_bicubic_in_fp32():
    torch.manual_seed(0)
    table = torch.randn(256, 24)
    out = resize_pos_table(table, 32)
    ref = F.interpolate(table.reshape(1, 16, 16, 24).permute(0, 3, 1, 2), size=(32, 32), mode="bicubic",
                        align_corners=False).permute(0, 2, 3, 1).reshape(1024, 24)
    assert out.shape == (1024, 24)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    # a bf16 table is resized in fp32 and cast back
    got = resize_pos_table(table.bfloat16(), 32)
    assert got.dtype == torch.bfloat16
    ref16 = resize_pos_table(table.bfloat16().float(), 32).bfloat16()
    assert torch.equal(got, ref16)


def test_resize_is_a_no_op_on_the_same_grid():
    table = torch.randn(64, 8)
    assert resize_pos_table(table, 8) is table
    with pytest.raises(ValueError, match="not a square"):
        resize_pos_table(torch.randn(10, 8), 3)


def _randomize(mod: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            base = 1.0 if name.startswith(("ln_q.weight", "ln_kv.weight")) else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("n_patches", [16, 36])  # key grid equal to (4x4) and larger than (6x6) the query grid
def test_resampler_matches_torch_multihead_attention(n_patches):
    torch.manual_seed(0)
    dim, kv_dim, nq = 256, 48, 16
    res = Resampler(nq, dim, kv_dim).eval()
    _randomize(res, 1)
    assert res.attn.num_heads == 2  # dim // 128
    assert not any(n == "pos_embed" for n, _ in res.named_parameters()) and "pos_embed" in res.state_dict()

    mha = nn.MultiheadAttention(dim, dim // 128).eval()  # seq-first, as the reference code uses it
    mha.load_state_dict({k.removeprefix("attn."): v for k, v in res.state_dict().items() if k.startswith("attn.")})

    x = torch.randn(3, n_patches, kv_dim)
    # reference forward, written from the facts
    kv = F.layer_norm(x @ res.kv_proj.weight.t(), (dim,), res.ln_kv.weight, res.ln_kv.bias, 1e-6)
    q = F.layer_norm(res.query, (dim,), res.ln_q.weight, res.ln_q.bias, 1e-6)
    side = math.isqrt(n_patches)
    pos_k = F.interpolate(res.pos_embed.reshape(1, 4, 4, dim).permute(0, 3, 1, 2), size=(side, side),
                          mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(n_patches, dim)
    query = (q + res.pos_embed)[:, None].expand(nq, 3, dim)
    with torch.no_grad():
        ref, _ = mha(query, (kv + pos_k).transpose(0, 1), kv.transpose(0, 1), need_weights=False)
        out = res(x)
    assert out.shape == (3, nq, dim)
    # fp32 with outputs up to ~40: BLAS summation order (AVX-512 vs AVX2 kernels) moves them by ~1.5e-6 of
    # that scale (measured on both), so the tolerance is relative to the scale; a wrong layout errs by O(1)
    ref = ref.transpose(0, 1)
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)


def test_resampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 128"):
        Resampler(16, 96, 32)
    with pytest.raises(ValueError, match="square"):
        Resampler(12, 128, 32)
    with pytest.raises(ValueError, match="square grid"):
        Resampler(16, 128, 32)(torch.randn(1, 10, 32))
