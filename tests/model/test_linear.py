"""qwenvl.model.layers.linear: the one-row bf16 CPU path (torch.mv) gives F.linear's result, keeps the
shape, adds the bias, and leaves fp32, several rows and autograd to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwenvl.model.layers import Linear, linear


@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (96,)])
@pytest.mark.parametrize("bias", [False, True])
def test_one_row_bf16_matches_f_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 96, generator=g).bfloat16()
    b = torch.randn(40, generator=g).bfloat16() if bias else None
    x = torch.randn(shape, generator=g).bfloat16()
    with torch.no_grad():
        got, want = linear(x, w, b), F.linear(x, w, b)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    # bf16 outputs: both accumulate in fp32, then round; allow two bf16 ulps of the largest value
    torch.testing.assert_close(got.float(), want.float(), atol=2 * 2**-7 * want.abs().max().item(), rtol=0)


def test_other_calls_are_f_linear_exactly(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "mv", lambda *a: calls.append(a) or torch.zeros(()))
    w, x32 = torch.randn(8, 16), torch.randn(1, 16)
    with torch.no_grad():
        assert torch.equal(linear(x32, w), F.linear(x32, w))  # fp32
        xb, wb = torch.randn(3, 16).bfloat16(), w.bfloat16()
        assert torch.equal(linear(xb, wb), F.linear(xb, wb))  # several rows
    xg = torch.randn(1, 16).bfloat16().requires_grad_()
    out = linear(xg, w.bfloat16())  # autograd on: F.linear
    out.sum().backward()
    assert calls == [] and xg.grad is not None


def test_linear_module_keeps_nn_linear_keys():
    m = Linear(16, 8)
    assert isinstance(m, torch.nn.Linear) and set(m.state_dict()) == {"weight", "bias"}
