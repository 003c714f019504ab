"""bf16 weight storage (quantize mode "bf16"): fp32 compute on bf16 weights through the tiled CPU kernel, what
qwenvl.load(dtype="auto") does on a CPU without native bf16 when the checkpoint is stored in bf16.

The shipped models are stored in bf16, so loading them in fp32 gives exactly the values the bf16 storage
keeps: the two may differ only by fp32 summation order (kernel and GEMM against F.linear), measured below
at 3e-6 of the logits' std; the tolerance 1e-4 fails any wrong tile, padding or row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import qwenvl
from qwenvl.engine import precision
from qwenvl.engine import quant as Q
from qwenvl.pipeline import resolve_model
from qwenvl.weights import load_model, stored_dtype
from tests.engine.test_quant import require_tiled_kernel

LOGIT_TOL = 1e-4  # max |d logits| / std(logits)


def messages() -> list[dict]:
    """One picture and a long question: >= 128 prompt positions (checked), so the prefill runs the dequantize
    + GEMM path (>= dequant_rows("bf16", fp32) rows) and each decode step the kernel."""
    rng = np.random.default_rng(0)
    pic = Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    question = "What colour is the shape in the middle, and how many shapes are there? " * 6
    return [{"role": "user", "content": [{"type": "image", "image": pic}, {"type": "text", "text": question}]}]


TEXT = [{"role": "user", "content": "Describe the weather in a short sentence."}]


def max_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.std()).item()


def test_tiled_bf16_kernel_is_exact_fp32_over_the_tile_layout():
    """The kernel (M < 128 rows: every x-block width) and the dequantize + GEMM path (M >= 128) against the
    fp32 product of the same bf16 weight, over ragged shapes; the tile order round-trips."""
    require_tiled_kernel()
    g = torch.Generator().manual_seed(3)
    for n, k, m in [(4, 32, 1), (17, 24, 3), (130, 272, 15), (1536, 1536, 1), (44, 96, 6), (40, 128, 11),
                    (36, 64, 130)]:
        w = torch.randn(n, k, generator=g).bfloat16()
        wt = Q.tile_bf16(w)
        assert wt.dtype == torch.bfloat16 and wt.shape[0] % Q.TILE_ROWS == 0 and wt.shape[1] % 32 == 0
        assert torch.equal(Q.untile(wt)[:n, :k], w) and not Q.untile(wt)[n:].any() and not Q.untile(wt)[:, k:].any()
        x = torch.randn(m, k, generator=g)
        want = x @ w.float().T
        got = Q.bf16_mm(x, wt, n)
        assert got.shape == (m, n) and got.dtype == torch.float32
        # exact bf16 -> fp32 widening and fp32 accumulation: only summation order differs
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5, (n, k, m)


def test_bf16_storage_keeps_the_fp32_logits_of_a_bf16_checkpoint():
    require_tiled_kernel()
    folder = resolve_model("qwenvl-tiny")
    assert stored_dtype(folder) == torch.bfloat16
    ref_pipe = qwenvl.load(folder, dtype="float32")
    assert not getattr(ref_pipe.model, "quantized", None)  # an explicit dtype keeps plain fp32 weights
    refs = [ref_pipe.logits(messages()), ref_pipe.logits(TEXT)]
    assert refs[0].shape[0] >= Q.dequant_rows("bf16", torch.float32) > refs[1].shape[0]
    fp32_bytes = sum(m.weight.numel() * 4 for m in ref_pipe.model.model.layers.modules() if isinstance(m, nn.Linear))
    n_params = sum(p.numel() for p in ref_pipe.model.parameters())
    report = Q.quantize_model(ref_pipe.model, "bf16")
    assert sum(n for _, n in Q.weight_counts(ref_pipe.model)) == n_params  # what `qwenvl info` counts
    assert report["lm_head"]["mode"] == "bf16" and report["linears"] == 4 * 7
    assert report["decoder"]["quant_bytes"] <= 0.5 * fp32_bytes * 1.01  # bf16 + tile padding (none here)
    for msgs, ref in zip([messages(), TEXT], refs, strict=True):
        got = ref_pipe.logits(msgs)
        assert max_error(got, ref) < LOGIT_TOL


def test_auto_keeps_bf16_weights_where_the_cpu_lacks_native_bf16(monkeypatch):
    """On a CPU without avx512_bf16 / AMX (simulated: the flags are patched), "auto" computes in fp32 and keeps
    the checkpoint's bf16 weights, says so, and gives the tokens of a plain fp32 load; with native bf16 it
    stays a plain bf16 model."""
    require_tiled_kernel()  # also builds (and caches) it for the real CPU before its flags are faked
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    pipe = qwenvl.load("qwenvl-tiny")
    assert pipe.dtype == torch.float32 and "checkpoint's bf16" in pipe.dtype_reason
    assert pipe.model.quantized["mode"] == "bf16"
    assert all(isinstance(m, Q.QuantLinear) and m.qweight.dtype == torch.bfloat16
               for m in pipe.model.model.layers.modules() if isinstance(m, (nn.Linear, Q.QuantLinear)))
    ref = qwenvl.load("qwenvl-tiny", dtype="float32")
    assert max_error(pipe.logits(messages()), ref.logits(messages())) < LOGIT_TOL
    want = ref.chat(messages(), max_new_tokens=16, temperature=0.0).token_ids
    assert pipe.chat(messages(), max_new_tokens=16, temperature=0.0).token_ids == want
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512bw", "avx512_bf16"})
    native = qwenvl.load("qwenvl-tiny")
    assert native.dtype == torch.bfloat16 and not getattr(native.model, "quantized", None)


def test_bf16_storage_is_refused_without_the_kernel(monkeypatch):
    model = load_model(resolve_model("qwenvl-tiny"))
    monkeypatch.setattr(Q, "_tiled_ext", lambda: None)
    with pytest.raises(ValueError, match="bf16 weight storage runs only on our tiled CPU kernel"):
        Q.quantize_model(model, "bf16")
    assert not getattr(model, "quantized", None)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_compiled_linears_trace_the_registered_kernel_op(mode):
    """Eager code calls the kernel extension directly (quant._gemv skips the custom op's dispatch); under
    torch.compile (Engine compile=True) the same module must trace whole, through torch.ops.qwenvl.*:
    fullgraph=True raises on any graph break (one per linear before _gemv stopped entering the kernel
    builder while tracing). backend="eager": dynamo's tracing without inductor's minute of codegen."""
    require_tiled_kernel()
    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(96, 40, bias=True)
    layer = Q.QuantLinear(lin.weight.data, lin.bias.data, mode, 64, torch.float32)
    assert layer.tiled
    x = torch.randn(1, 3, 96, generator=g)  # 3 rows: the kernel's side of dequant_rows
    with torch.no_grad():
        want = layer(x)
        torch._dynamo.reset()
        got = torch.compile(layer, backend="eager", fullgraph=True)(x)
    assert torch.equal(got, want)
