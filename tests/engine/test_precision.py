"""dtype="auto": bf16 only where the CPU computes it natively (the flags decide), fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch

from qwenvl.engine import cpu_kernels
from qwenvl.engine.precision import auto_dtype, cpu_flags
from qwenvl.pipeline import auto_storage


@pytest.mark.parametrize("flags, want", [
    ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"avx2", "amx_bf16", "amx_tile"}, torch.bfloat16),
    ({"avx2", "avx512f", "avx512_vnni"}, torch.float32),  # the Xeon where bf16 ran 3.5x slower than fp32
    (set(), torch.float32),
])
def test_auto_follows_native_bf16_flags(flags, want):
    dtype, why = auto_dtype("cpu", flags)
    assert dtype == want and why
    assert dtype != torch.float16  # never fp16 on CPU


def test_auto_on_this_machine_matches_its_flags():
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert auto_dtype("cpu")[0] == (torch.bfloat16 if native else torch.float32)


def test_load_accepts_auto_and_names_bad_dtypes(tiny_ckpt):
    import qwenvl

    folder, _ = tiny_ckpt("qwen2_5_vl")
    pipe = qwenvl.load(folder, dtype="auto")
    assert pipe.model.model.embed_tokens.weight.dtype == auto_dtype("cpu")[0]
    with pytest.raises(ValueError, match="auto"):
        qwenvl.load(folder, dtype="float8")


def test_load_defaults_to_auto_and_reports_the_choice():
    import qwenvl

    want, why = auto_dtype("cpu")
    pipe = qwenvl.load("qwenvl-tiny")
    assert pipe.dtype == want and pipe.dtype_reason.startswith(why) and why != "requested"
    assert pipe.model.model.embed_tokens.weight.dtype == want
    kept = auto_storage(pipe.folder, want) == "bf16"  # fp32 compute on the checkpoint's bf16 weights
    assert ("checkpoint's bf16" in pipe.dtype_reason) == kept
    assert (getattr(pipe.model, "quantized", None) or {}).get("mode") == ("bf16" if kept else None)


@pytest.mark.parametrize("flags, want", [({"amx_bf16"}, torch.bfloat16), ({"avx512_bf16"}, torch.bfloat16),
                                         (set(), torch.float32)])
def test_load_default_follows_the_cpu_flags(monkeypatch, flags, want):
    """Both branches of the default, whatever this machine's CPU has."""
    import qwenvl
    from qwenvl.engine import precision

    cpu_kernels.tiled_gemv()  # built (and cached) for the real CPU before its flags are faked
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
    pipe = qwenvl.load("qwenvl-tiny")
    assert pipe.dtype == want and pipe.dtype_reason.startswith(auto_dtype("cpu", flags)[1])
    assert pipe.model.model.embed_tokens.weight.dtype == want
    assert ("checkpoint's bf16" in pipe.dtype_reason) == (auto_storage(pipe.folder, want) == "bf16")


@pytest.mark.parametrize("dtype", ["float32", "bf16", torch.float32, torch.bfloat16])
def test_an_explicit_dtype_wins(dtype):
    import qwenvl
    from qwenvl.pipeline import DTYPES

    want = DTYPES.get(dtype, dtype)
    pipe = qwenvl.load("qwenvl-tiny", dtype=dtype)
    assert pipe.dtype == want and pipe.dtype_reason == "requested"
    assert pipe.model.model.embed_tokens.weight.dtype == want
