"""Per-row cache offsets (the engine's slot pool): each row writes at its own start, reads only its own
prefix, and gets its own v1 dynamic-NTK base; results equal each row run alone with one int start."""

from __future__ import annotations

import pytest
import torch

from qwenvl.model.attention import LayerCache, build_causal_mask, causal_attention, ragged_causal_mask
from qwenvl.model.decoder import KVCache, TextDecoder
from tests.families.test_qwen_vl_keys import tiny_text
from tests.model.qwen3_tiny import ours_text


def test_ragged_mask_example():
    m = ragged_causal_mask(torch.tensor([3, 1]), 1)
    assert m.shape == (2, 1, 1, 4)
    assert m[:, 0, 0].int().tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    m2 = ragged_causal_mask(torch.tensor([0, 2]), 2)  # two new tokens per row
    assert m2[1, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert m2[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize("t", [1, 3])
def test_per_row_write_and_read_equals_each_row_alone(t):
    g = torch.Generator().manual_seed(0)
    pool_k, pool_v = torch.randn(2, 4, 2, 12, 8, generator=g).unbind(0)  # stale contents everywhere
    rows, starts = torch.tensor([2, 0]), torch.tensor([5, 2])
    q = torch.randn(2, 4, t, 8, generator=g)
    k, v = torch.randn(2, 2, 2, t, 8, generator=g).unbind(0)
    ref_k, ref_v = pool_k.clone(), pool_v.clone()
    want = []
    for b in range(2):
        r, s = int(rows[b]), int(starts[b])
        lc = LayerCache(ref_k[r:r + 1], ref_v[r:r + 1], s)
        want.append(causal_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], build_causal_mask(None, s, t, 1, "cpu"), lc))
    got = causal_attention(q, k, v, ragged_causal_mask(starts, t), LayerCache(pool_k, pool_v, starts, rows))
    torch.testing.assert_close(got, torch.cat(want), atol=1e-6, rtol=0)
    assert torch.equal(pool_k, ref_k) and torch.equal(pool_v, ref_v)  # same slots written, others untouched


def test_per_row_ntk_lengths():
    dec = TextDecoder(tiny_text(16, True, False)).eval()
    rows = dec.rope_freqs([20, 6, 40])
    assert rows.shape == (3, 1, dec.cfg.head_dim // 2)
    for i, n in enumerate([20, 6, 40]):
        torch.testing.assert_close(rows[i, 0], dec.rope_freqs(n), atol=0, rtol=0)
    assert dec.rope_freqs(torch.tensor([3, 16])) is dec.inv_freq  # nobody past seq_length: the shared table


def _alone(dec, x, pos, steps):
    """Prefill x [1, n, D] then decode `steps` [1, 1, D] embeddings with one int start; hidden per call."""
    n = x.shape[1]
    cache = KVCache.allocate(dec.cfg, 1, n + len(steps), torch.float32)
    out = [dec(x, pos(0, n), cache=cache, start=0, ntk_len=n)[:, -1:]]
    for i, s in enumerate(steps):
        out.append(dec(s, pos(n + i, n + i + 1), cache=cache, start=n + i, ntk_len=n))
    return torch.cat(out, 1)


@pytest.mark.parametrize("kind", ["v1_ntk_logn", "qwen3_mrope"])
@torch.no_grad()
def test_decoder_rows_at_different_lengths_equal_alone(kind):
    """v1: one prompt past seq_length (NTK alpha 3, log-n), one short; Qwen3: M-RoPE, q/k-norm, GQA.
    Right-padded joint prefill into pool slots (2, 0), then joint decode steps at per-row starts."""
    cfg = tiny_text(16, True, True) if kind == "v1_ntk_logn" else ours_text(moe=False)
    torch.manual_seed(1)
    dec = TextDecoder(cfg).eval()
    mrope = cfg.mrope_section is not None
    pos = (lambda a, b: torch.arange(a, b)[None, None].expand(3, 1, -1)) if mrope else \
        (lambda a, b: torch.arange(a, b)[None])
    lens, n_steps = [20, 6], 3
    xs = [torch.randn(1, n, cfg.hidden_size) for n in lens]
    steps = [[torch.randn(1, 1, cfg.hidden_size) for _ in range(n_steps)] for _ in lens]
    want = [_alone(dec, x, pos, s) for x, s in zip(xs, steps, strict=True)]
    pool = KVCache.allocate(cfg, 3, 32, torch.float32)
    pool.k.normal_(), pool.v.normal_()  # stale entries must never be seen
    rows = torch.tensor([2, 0])
    view = KVCache(pool.k, pool.v, rows)
    t = max(lens)
    x = torch.zeros(2, t, cfg.hidden_size)
    for b, xb in enumerate(xs):
        x[b, :lens[b]] = xb[0]
    p = torch.cat([pos(0, t)] * 2, -2)
    h = dec(x, p, cache=view, start=0, ntk_len=lens)
    got = [h[torch.arange(2), torch.tensor(lens) - 1][:, None]]
    for i in range(n_steps):
        starts = torch.tensor(lens) + i
        p = torch.stack([pos(int(s), int(s) + 1)[..., 0, :] for s in starts], -2)
        got.append(dec(torch.cat([s[i] for s in steps]), p, cache=view, start=starts, ntk_len=lens))
    got = torch.cat(got, 1)
    for b in range(2):
        torch.testing.assert_close(got[b:b + 1], want[b], atol=2e-5, rtol=0)
