"""model/attention.sdpa: in CPU training a bf16 attention runs in float32 (the bf16 kernel's backward is slow),
returning bf16 and passing gradients; inference and float32 inputs go straight to the kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwenvl.model.attention import sdpa


def _qkv(dtype, grad):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 10, 16, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


def test_training_bf16_runs_in_fp32_under_autocast():
    q, k, v = _qkv(torch.bfloat16, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa(q, k, v, is_causal=True)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.equal(out, ref.to(torch.bfloat16))  # computed in fp32, rounded once
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_inference_and_fp32_take_the_kernel_as_is():
    q, k, v = _qkv(torch.bfloat16, False)
    assert torch.equal(sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v))
    q, k, v = _qkv(torch.float32, True)
    assert torch.equal(sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v))
