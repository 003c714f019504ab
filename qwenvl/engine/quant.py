"""Weight-only int8 / int4 quantization of the text decoder, for inference on CPU.

    report = quantize_model(model, "int8")             # or "int4" (group_size 32 | 64 (default) | 128 | 256)
    report["decoder"]["quant_bytes"]                   # vs report["decoder"]["float_bytes"]

What is replaced, in place: every nn.Linear under `model.model.layers` (q/k/v/o, dense gate/up/down) by a
QuantLinear, every MoE `mlp.experts` by a QuantExperts, and (lm_head="int8" by default) the lm_head, which
for tied embeddings is a new quantized copy of embed_tokens while the float table stays for lookups.
Untouched: the vision tower and adapter, norms, embed_tokens, and the MoE router (`mlp.gate`: its
logits pick the experts, fp32 softmax, and it is tiny).

Schemes: int8 symmetric per output row, q in [-127, 127], w = q * s. int4 asymmetric min/max per group
of G input channels, q in [0, 15], w = (q - 8) * s + z (the tinygemm convention of torch's kernel).

Kernels (torch 2.13 CPU; bench/bench_quant.py measures them):
    torch.ops.aten._weight_int8pack_mm(x [M, K], q [N, K] int8, s [N]) -> [M, N]
    torch.ops.aten._weight_int4pack_mm_for_cpu(x [M, K], packed [N, K/2] u8, G, sz [K/G, N, 2]) -> [M, N]
  x, s and sz must share one dtype; fp32 works but runs scalar code (4x slower than bf16 at M = 1, 30x
  at M = 256), so on CPU scales are bf16 and x is cast to bf16 for these kernels (the result back to x's
  dtype). Dequantize + GEMM (below) runs in the model's dtype instead: without native bf16 the bf16 GEMM
  is emulated (0.27 GFLOP/s against fp32's 100 on an AVX2 EPYC, 2026-12-02), and "auto" loads fp32 there.
  Shape rules: the int4 kernel wants N % 16 == 0, K % G == 0, G in {32, 64, 128, 256}; the bf16 int8
  kernel silently returns garbage or segfaults unless K % 16 == 0. Other shapes are zero-padded (weight
  rows / columns at quantize time, x columns per call) rather than refused, so tiny test models work; real
  Qwen sizes need no padding.
  Both kernels are GEMV-grade (~120 GFLOP/s from M = 16 on 2 cores, against ~0.8-1.5 TFLOP/s for the
  bf16 AMX GEMM), so from dequant_rows(mode, dtype) rows (prefill, big batches) the weight is dequantized
  block by block into a reused buffer and multiplied by the model dtype's GEMM instead.
  Off CPU, int8 always dequantizes (in the model dtype); int4's packed layout is CPU-only, so
  quantize_model refuses int4 there.

Measured (bench/bench_quant.py, 2 shared cores, two quiet runs 2026-12-01; ms per call, bf16 / int8 / int4 g64):
    decode  1 x 4096 x 11008     6.3-6.4 / 2.2-2.6 / 1.7-2.0      (bandwidth limit 20-22 GB/s)
    prefill 256 x 4096 x 4096    9.0-11.7 / 9.8-15 / 17-23        (the kernels alone: 75-88 / 68-78)
    MoE E 128 top-8, 1 token     7.4-8.1 / 4.5-5.1 / 2.2          (grouped_mm / loop over the hit experts)
    MoE, 256 tokens              102-112 / 225-275 / 200-225      (the loop's small GEMMs; see QuantExperts)
    Qwen2-VL-2B-shaped decoder   3.5-4.8 / 5.1-6.5 / 8.1 tok/s    (int8's kernel is compute-bound at K = 1536)

Inference only: buffers replace parameters, there is no backward and no state_dict format; weights.save_model
refuses a model with `model.quantized` set. This module must not read files or import processing / HTTP.
(Over 400 lines: each scheme's kernel quirks sit beside the code that works around them.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qwenvl.engine.cpu_kernels import tiled_gemv
from qwenvl.model.moe import MoeExperts

MODES = ("int8", "int4", "bf16")  # bf16: storage only (fp32 compute on bf16 weights, the tiled kernel)
INT4_GROUP_SIZES = (32, 64, 128, 256)
# int4 group: 64 beat 128 on the trained tiny models (rms logit error / std 0.050 vs 0.080 for Qwen-VL v1,
# 0.040 vs 0.045 for Qwen2.5-VL) for 6% more bytes (4.5 vs 4.25 bits / weight); 32 was no better than 64
DEFAULT_GROUP_SIZE = 64
# rows from which dequantize + GEMM beats the kernels, by the GEMM's dtype (x's: the model's). bf16, 2 cores
# with AMX, 4096^2: int8 kernel 5.3 vs 4.2 ms at M = 16; int4 kernel 18.4 vs 16.9 ms at M = 64, 5.0 vs 17.9
# at M = 16. fp32, 2-core AVX2 EPYC (no native bf16; small-M fp32 GEMMs there read weights at 2-5 GB/s),
# 8960x1536 / 1536x8960, 2026-12-02: int8 tiled kernel 42.7 / 41.0 vs 86.5 / 43.2 ms at M = 128; int4
# kernel 37.0 / 36.3 vs 74.2 / 59.3 at M = 64, 84.2 / 72.2 vs 75.4 / 68.4 at M = 128.
# bf16 weights, fp32 x, same machine and shapes (14:57 UTC): kernel 40.8 / 42.6 vs widen + GEMM 64.6 / 44.9 ms
# at M = 128, 63.5 / 61.4 vs 84.6 / 57.8 at M = 192; bf16 x: int8's value, not measured.
INT8_DEQUANT_ROWS = {torch.bfloat16: 16, torch.float32: 128}
INT4_DEQUANT_ROWS = {torch.bfloat16: 64, torch.float32: 96}
BF16_DEQUANT_ROWS = {torch.bfloat16: 16, torch.float32: 128}
_DEQUANT_ROWS = {"int8": INT8_DEQUANT_ROWS, "int4": INT4_DEQUANT_ROWS, "bf16": BF16_DEQUANT_ROWS}


def dequant_rows(mode: str, dtype: torch.dtype) -> int:
    """Rows of x (in `dtype`) from which `mode`'s matmul dequantizes and runs a GEMM instead of the kernel."""
    table = _DEQUANT_ROWS[mode]
    return table.get(dtype, table[torch.bfloat16])


# rows per tile of the tiled int8 layout (csrc/tiled_gemv.cpp)
TILE_ROWS = 4
# weights dequantized per block (into _scratch buffers: 32 MB bf16; int4 also 16 MB fp32)
_DEQUANT_ELEMS = 1 << 24
_DEQUANT_ELEMS_INT4 = 1 << 22
_SCRATCH: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}  # process-wide: not for concurrent threads
_INT8 = torch.ops.aten._weight_int8pack_mm
_INT4 = torch.ops.aten._weight_int4pack_mm_for_cpu
_INT4_PACK = torch.ops.aten._convert_weight_to_int4pack_for_cpu


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# ---------------------------------------------------------------------------------------------
# int8: symmetric per row


@torch.no_grad()
def quantize_int8(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] -> (q [..., N, Kp] int8, scales [..., N] in `dtype`), w ~= q[..., :K] * scales[..., None].

    Kp = K rounded up to 32 with zero columns: torch's bf16 kernel reads K in steps of 16 and, for other K,
    returns inf / nan or segfaults (torch 2.13 CPU, found by this module's tests; fp32 is fine); our tiled
    kernel (cpu_kernels) reads 32 at a time.
    q is rounded against the stored (dtype-rounded) scale, so the dequantized weight is what the kernel sees.
    """
    wf = w.float()
    s = (wf.abs().amax(-1) / 127).clamp_min(1e-12).to(dtype)
    q = (wf / s.float()[..., None]).round_().clamp_(-127, 127).to(torch.int8)
    k = w.shape[-1]
    return F.pad(q, (0, _round_up(k, 32) - k)), s


def _tiled_ext():
    """The tiled GEMV extension, or None (not built here: no AVX-512 / AVX2, no compiler, QWENVL_KERNELS=0)."""
    return tiled_gemv()[0]


def _gemv(name: str, *args: torch.Tensor) -> torch.Tensor:
    """The tiled kernel `name` ("int8_gemv" / "bf16_gemv") on args, fp32 out. Eager code calls the extension
    directly: the torch.ops.qwenvl custom op's Python dispatch costs ~70 us a call, more than the kernel itself
    on a small matrix (the tiny model's linears: 5.3 ms a token under cProfile, 1.2 of it the kernel;
    bench/RESULTS.md). The registered op stays for torch.compile, whose graphs need it; it was registered when
    the weights were tiled (use_tiled builds the kernel), and tracing must not enter _tiled_ext: dynamo breaks
    the graph on the cached builder's file reads (tests/engine/test_bf16_storage.py checks)."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.qwenvl, name)(*args)
    return getattr(_tiled_ext(), name)(*args)


def _tile(q: torch.Tensor) -> torch.Tensor:
    """[N, Kp] (Kp a multiple of 32) -> the tiled kernels' layout: rows padded with zeros to a multiple of
    TILE_ROWS, elements in [N/4, Kp/32, 4, 32] tile order (still shaped [Np, Kp])."""
    q = F.pad(q, (0, 0, 0, _round_up(q.shape[0], TILE_ROWS) - q.shape[0]))
    kp = q.shape[1]
    return q.view(-1, TILE_ROWS, kp // 32, 32).transpose(1, 2).contiguous().view(q.shape)


def tile_int8(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, Kp], s [N]) -> the same weight in the tiled kernel's layout (_tile), s padded alike."""
    return _tile(q), F.pad(s, (0, _round_up(s.shape[0], TILE_ROWS) - s.shape[0]))


def tile_bf16(w: torch.Tensor) -> torch.Tensor:
    """w [N, K] -> its bf16 values in the tiled layout [Np, Kp] (K padded with zeros to a multiple of 32)."""
    k = w.shape[1]
    return _tile(F.pad(w.detach().to(torch.bfloat16), (0, _round_up(k, 32) - k)))


def _row_order(q: torch.Tensor) -> torch.Tensor:
    """Tiled bytes [Np, Kp] (whole tiles) seen in row order: a [Np/4, 4, Kp/32, 32] view, no copy."""
    return q.view(-1, q.shape[1] // 32, TILE_ROWS, 32).transpose(1, 2)


def untile(q: torch.Tensor) -> torch.Tensor:
    """The inverse of _tile's element order: [Np, Kp] row-major (a new tensor)."""
    return _row_order(q).reshape(q.shape)


def int8_kernel_mm(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """x [M, K] @ (q[:, :K] * s[:, None]).T -> [M, N] in x's dtype through a CPU kernel (x padded to Kp): ours
    on tiled weights (fp32 accumulation), else torch's _weight_int8pack_mm on x cast to s's dtype."""
    k, kp = x.shape[1], q.shape[1]
    x = F.pad(x, (0, kp - k)) if kp != k else x.contiguous()
    if tiled:  # any float x: the kernel reads it as fp32
        return _gemv("int8_gemv", x, q, s).to(x.dtype)
    return _INT8(x.to(s.dtype), q, s)


def _scratch(name: str, dtype: torch.dtype, device: torch.device, numel: int) -> torch.Tensor:
    """A reusable 1-D buffer of >= numel elements per (name, dtype, device), grown on demand.

    Fresh buffers above glibc's mmap threshold page-fault on every call (measured 9.6 ms per 32 MB, more
    than the GEMM that follows); reusing one costs a copy only (2 ms per 16M int8 -> bf16). Calls run in
    order (CPU, or one CUDA stream), so a block is consumed before the next overwrites it.
    """
    key = (name, dtype, str(device))
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def _row_blocks(n: int, k: int, max_elems: int, multiple: int) -> int:
    """Rows per block: N split evenly into blocks of <= max_elems weights, a multiple of `multiple` rows."""
    blocks = -(-n * k // max_elems)
    return _round_up(-(-n // blocks), multiple)


def int8_dequant_mm(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor | None, tiled: bool = False) -> torch.Tensor:
    """The same product as a GEMM on the exact q (int8 fits bf16), output columns scaled after; blocks of
    <= _DEQUANT_ELEMS weights converted (and, for tiled weights, put back in row order) into a reused
    buffer. Any device. s None: q holds the weights themselves (bf16 storage, bf16_mm)."""
    k, (n, kp) = x.shape[1], q.shape
    x = F.pad(x, (0, kp - k)) if kp != k else x  # zero columns meet q's zero columns
    rows = _row_blocks(n, kp, _DEQUANT_ELEMS, 16)
    buf = _scratch("weight", x.dtype, x.device, min(rows, n) * kp)
    outs = []
    for r in range(0, n, rows):
        c = min(rows, n - r)
        w = buf[:c * kp].view(c, kp)
        if tiled:  # c is a multiple of 16 or the last block: a whole number of 4-row tiles either way
            w.view(-1, TILE_ROWS, kp // 32, 32).copy_(_row_order(q[r:r + c]))
        else:
            w.copy_(q[r:r + c])
        outs.append(F.linear(x, w))
    y = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    return y if s is None else y * s


def int8_mm(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, n: int, tiled: bool = False) -> torch.Tensor:
    """x [M, K] @ w.T -> [M, n]: a kernel below dequant_rows("int8", x.dtype) rows on CPU, else dequantize
    + GEMM."""
    if x.device.type == "cpu" and x.shape[0] < dequant_rows("int8", x.dtype):
        y = int8_kernel_mm(x, q, s, tiled)
    else:
        y = int8_dequant_mm(x, q, s, tiled)
    return y[:, :n] if y.shape[1] != n else y


def bf16_mm(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """x [M, K] @ w.T -> [M, n] in x's dtype for tiled bf16 weights w [Np, Kp] (tile_bf16): our kernel below
    dequant_rows("bf16", x.dtype) rows, else blocks widened to x's dtype and a GEMM (prefill)."""
    k, kp = x.shape[1], w.shape[1]
    x = F.pad(x, (0, kp - k)) if kp != k else x.contiguous()
    if x.shape[0] < dequant_rows("bf16", x.dtype):
        y = _gemv("bf16_gemv", x, w).to(x.dtype)
    else:
        y = int8_dequant_mm(x, w, None, tiled=True)
    return y[:, :n] if y.shape[1] != n else y


# ---------------------------------------------------------------------------------------------
# int4: asymmetric per group, in the CPU kernel's packed layout


@torch.no_grad()
def quantize_int4(w: torch.Tensor, group: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (packed [Np, Kp/2] uint8, scales_zeros [Kp/G, Np, 2] in `dtype`).

    Np = N rounded up to 16 and Kp = K rounded up to G, padded with zeros (int4_mm pads x with zero
    columns and drops the extra output rows, so the padding never reaches a result).
    Per group of G consecutive inputs of one row: s = (max - min) / 15, z = min + 8 s, q = round((w - z) / s + 8).
    """
    if group not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size {group} is not one the CPU kernel takes: {INT4_GROUP_SIZES}")
    n, k = w.shape
    np_, kp = _round_up(n, 16), _round_up(k, group)
    wf = F.pad(w.float(), (0, kp - k, 0, np_ - n)).view(np_, kp // group, group)
    lo, hi = wf.amin(-1), wf.amax(-1)
    s = ((hi - lo) / 15).clamp_min(1e-12).to(dtype)
    z = (lo + 8 * s.float()).to(dtype)
    q = ((wf - z.float()[..., None]) / s.float()[..., None] + 8).round_().clamp_(0, 15)
    packed = _INT4_PACK(q.view(np_, kp).to(torch.int32).contiguous(), 1)
    return packed, torch.stack([s, z], -1).transpose(0, 1).contiguous()


@functools.cache
def _int4_block_n() -> int | None:
    """Rows per packed block of this torch build's CPU int4 layout (64 AVX-512, 32 AVX2), checked by a
    round trip; None when unpack_int4 would not invert the packing (then int4 always uses the kernel)."""
    block = {"AVX512": 64, "AVX2": 32}.get(torch.backends.cpu.get_cpu_capability())
    if block is None:
        return None
    q = torch.randint(0, 16, (block + 48, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    ok = torch.equal(unpack_int4(_INT4_PACK(q, 1), q.shape[0], block), q.T.to(torch.uint8))
    return block if ok else None


def unpack_int4(packed: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """packed [N, K/2] (the CPU kernel's layout) -> q [K, N] uint8 (transposed: what the kernel reads).

    The layout (aten/src/ATen/native/cpu/int4mm_kernel.cpp, weight_to_int4pack_kernel): rows in blocks of
    `block`, each block stored k-major as [K, block/2] bytes. A full block holds row j in the low nibble of
    byte j and row block/2 + j in the high nibble; the tail block (16, 32 or 48 rows) pairs rows 2j, 2j+1.
    Example, block 64, one k: byte 3 = (row 35 << 4) | row 3.
    """
    k = packed.numel() * 2 // n
    flat = packed.reshape(-1)
    full = n // block * block
    head = flat[: full * k // 2].view(-1, k, block // 2)  # [blocks, K, block/2]
    head = torch.cat([head & 15, head >> 4], -1).transpose(0, 1).reshape(k, full)
    if full == n:
        return head
    tail = flat[full * k // 2:].view(k, (n - full) // 2)
    tail = torch.stack([tail & 15, tail >> 4], -1).view(k, n - full)
    return torch.cat([head, tail], 1)


def _int4_dequantize_rows(packed: torch.Tensor, sz: torch.Tensor, group: int, block: int,
                          out: torch.Tensor) -> torch.Tensor:
    """Rows [r0, r0 + c) of the packed matrix (r0 a multiple of `block`) and their sz [Kp/G, c, 2] -> w.T
    [Kp, c], written into out."""
    c = sz.shape[1]
    q = unpack_int4(packed, c, block).view(-1, group, c)
    s, z = sz[..., 0].unsqueeze(1).float(), sz[..., 1].unsqueeze(1).float()  # [Kp/G, 1, c]
    w = _scratch("int4 fp32", torch.float32, q.device, q.numel()).view(q.shape)
    w.copy_(q)
    torch.addcmul(z - 8 * s, w, s, out=w)  # (q - 8) s + z; fp32 elementwise is ~2x faster than bf16 here
    return out.copy_(w.view(-1, c))


def int4_dequantize(packed: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor | None:
    """-> w.T [Kp, Np] in sz's dtype (a new tensor), or None where this build's packed layout is unknown."""
    block = _int4_block_n()
    if block is None:
        return None
    kp, np_ = sz.shape[0] * group, sz.shape[1]
    out = torch.empty(kp, np_, dtype=sz.dtype, device=packed.device)
    rows = _row_blocks(np_, kp, _DEQUANT_ELEMS_INT4, block)
    for r in range(0, np_, rows):
        _int4_dequantize_rows(packed[r:r + rows], sz[:, r:r + rows], group, block, out[:, r:r + rows])
    return out


def int4_kernel_mm(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor:
    """x [M, K] @ w.T -> [M, Np] through the CPU kernel (x cast to sz's dtype and padded to Kp)."""
    k, kp = x.shape[1], sz.shape[0] * group
    x = x.to(sz.dtype)
    return _INT4(F.pad(x, (0, kp - k)) if kp != k else x.contiguous(), packed, group, sz)


def int4_dequant_mm(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor:
    """The same product, dequantizing blocks of <= _DEQUANT_ELEMS_INT4 weights (a multiple of the packed row
    block) into a reused buffer for a GEMM in x's dtype. Needs a known packed layout (_int4_block_n() not None)."""
    k, kp, np_ = x.shape[1], sz.shape[0] * group, sz.shape[1]
    block = _int4_block_n()
    rows = _row_blocks(np_, kp, _DEQUANT_ELEMS_INT4, block)
    buf = _scratch("weight", x.dtype, x.device, min(rows, np_) * kp)
    outs = []
    for r in range(0, np_, rows):
        c = min(rows, np_ - r)
        wt = _int4_dequantize_rows(packed[r:r + c], sz[:, r:r + c], group, block, buf[:kp * c].view(kp, c))
        outs.append(x @ wt[:k])
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


def int4_mm(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, group: int, n: int) -> torch.Tensor:
    """x [M, K] @ w.T -> [M, n], w the [n, K] matrix quantize_int4 packed: kernel below dequant_rows("int4")
    rows (or when the packed layout is unknown), else dequantize + GEMM."""
    if x.shape[0] < dequant_rows("int4", x.dtype) or _int4_block_n() is None:
        y = int4_kernel_mm(x, packed, sz, group)
    else:
        y = int4_dequant_mm(x, packed, sz, group)
    return y[:, :n] if y.shape[1] != n else y


def use_tiled(mode: str, device: torch.device) -> bool:
    """Whether int8 / bf16 weights on `device` go in the tiled layout of our CPU kernels (built and usable
    here). bf16 storage exists only for that kernel (quantize_model refuses it elsewhere)."""
    return mode in ("int8", "bf16") and device.type == "cpu" and _tiled_ext() is not None


def _quantize(w: torch.Tensor, mode: str, group: int, dtype: torch.dtype,
              tiled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [N, K] matrix, 1024 rows at a time: the fp32 / int32 temporaries of a 151936-row lm_head would
    take GBs. Packing row blocks that are multiples of the kernel's 32 / 64-row blocks and concatenating
    them gives the same bytes as packing the whole (each packed block is contiguous, in row order).
    bf16: (tiled bf16 weights, None)."""
    if mode == "bf16":
        return tile_bf16(w), None
    parts = [quantize_int8(c, dtype) if mode == "int8" else quantize_int4(c, group, dtype) for c in w.split(1024)]
    if len(parts) == 1:
        q, s = parts[0]
    else:
        q = torch.cat([q for q, _ in parts])
        s = torch.cat([s for _, s in parts]) if mode == "int8" else torch.cat([s for _, s in parts], 1)
    return tile_int8(q, s) if tiled else (q, s)


def _qmm(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor | None, mode: str, group: int, n: int,
         tiled: bool = False) -> torch.Tensor:
    if mode == "bf16":
        return bf16_mm(x, q, n)
    return int8_mm(x, q, s, n, tiled) if mode == "int8" else int4_mm(x, q, s, group, n)


def _dequantize(q: torch.Tensor, s: torch.Tensor, mode: str, group: int, n: int, k: int,
                tiled: bool = False) -> torch.Tensor:
    """The [n, k] weight one quantized matrix stands for, in the compute dtype (bf16 storage: fp32)."""
    if mode == "bf16":
        return untile(q)[:n, :k].float()
    if mode == "int8":
        return ((untile(q) if tiled else q)[:n, :k].to(s.dtype) * s[:n, None])
    wt = int4_dequantize(q, s, group)
    if wt is None:  # unknown packed layout: let the kernel dequantize (x = identity)
        wt = _INT4(torch.eye(s.shape[0] * group, dtype=s.dtype), q, group, s)
    return wt[:k, :n].T


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


# ---------------------------------------------------------------------------------------------
# modules


class QuantLinear(nn.Module):
    """Stand-in for nn.Linear with a weight-only quantized weight: x [..., K] -> [..., N] in x's dtype.

    Buffers: int8 qweight [N, Kp] int8 (Kp: K rounded up to 32), scales [N] (tiled: [Np, Kp] in tile
    order, Np = N rounded up to 4, when our CPU kernel is built: see tile_int8); int4 qweight [Np, Kp/2]
    uint8 (kernel layout), scales [Kp/G, Np, 2] (scale, zero); bf16 qweight [Np, Kp] bf16 in tile order, no
    scales (None). scales.dtype is the kernels' dtype; bias keeps the model dtype.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: str, group_size: int,
                 compute_dtype: torch.dtype, tiled: bool | None = None) -> None:
        """tiled: None = the tiled int8 layout wherever our kernel is usable (use_tiled); False = torch's."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.mode, self.group_size = mode, group_size
        self.tiled = use_tiled(mode, weight.device) if tiled is None else tiled
        q, s = _quantize(weight.detach(), mode, group_size, compute_dtype, self.tiled)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", s)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        kp = s.shape[0] * group_size if mode == "int4" else q.shape[1]
        # zero rows / columns added for the kernels' shape rules (quantize_int8 / quantize_int4)
        self.padded = q.shape[0] != self.out_features or kp != self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x keeps its dtype: the kernels cast what they need, dequantize + GEMM runs in the model's dtype
        y = _qmm(x.reshape(-1, x.shape[-1]), self.qweight, self.scales, self.mode, self.group_size,
                 self.out_features, self.tiled).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] this module computes with (the compute dtype)."""
        return _dequantize(self.qweight, self.scales, self.mode, self.group_size, self.out_features,
                           self.in_features, self.tiled)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.mode == "int4" else ""
        t = ", tiled" if self.tiled else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.mode}{g}{t}"


class QuantExperts(nn.Module):
    """Stand-in for moe.MoeExperts: the same routing, each expert's gate_up [2I, H] and down [H, I] quantized.

    Buffers stack the per-expert quantized weights on a leading E axis (gate_up_q / gate_up_s, down_q /
    down_s, laid out as in QuantLinear). The slots are sorted by expert as in MoeExperts; then a loop over
    the experts that got tokens runs each block through int8_mm / int4_mm (kernel for a few rows, dequantize
    + GEMM for many), so a decode step reads only the k hit experts' bytes: 1.6x (int8) / 3.7x (int4)
    faster than bf16 grouped_mm at one token. At prefill sizes (~16 rows per expert) the loop's many
    small GEMMs make int8 ~2x slower than bf16 grouped_mm (a grouped int8 kernel would fix it); gathering
    the hit experts' dequantized weights for grouped_mm was 10x slower still (GBs of fresh bf16 copies).
    The loop needs the per-expert counts on the host (one sync per layer).
    """

    def __init__(self, experts: MoeExperts, mode: str, group_size: int, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.num_experts, self.act = experts.num_experts, experts.act
        self.mode, self.group_size = mode, group_size
        self.inter, self.hidden = experts.down_proj.shape[2], experts.down_proj.shape[1]
        self.tiled = use_tiled(mode, experts.down_proj.device)
        for name in ("gate_up", "down"):
            w = getattr(experts, name + "_proj").detach()
            # expert by expert: one expert's fp32 temporaries at a time
            qs = [_quantize(w[e], mode, group_size, compute_dtype, self.tiled) for e in range(w.shape[0])]
            self.register_buffer(name + "_q", torch.stack([q for q, _ in qs]))
            self.register_buffer(name + "_s", torch.stack([s for _, s in qs]))

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [S, H], experts / weights [S, k] -> sum_j weights[:, j] * expert_{experts[:, j]}(x)  [S, H]."""
        k = experts.shape[1]
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        token = order // k
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = x[token]
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n:
                gu = _qmm(xs[start:start + n], self.gate_up_q[e], self.gate_up_s[e], self.mode, self.group_size,
                          2 * self.inter, self.tiled)
                gate, up = gu.chunk(2, dim=-1)
                outs.append(_qmm(self.act(gate) * up, self.down_q[e], self.down_s[e], self.mode, self.group_size,
                                 self.hidden, self.tiled))
                start += n
        y = torch.cat(outs) * weights.reshape(-1)[order, None]
        return x.new_zeros(x.shape).index_add(0, token, y.to(x.dtype))

    def dequantize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_up [E, 2I, H], down [E, H, I]) as MoeExperts holds them, in the compute dtype."""
        m, g = self.mode, self.group_size
        t = self.tiled
        gate_up = [_dequantize(q, s, m, g, 2 * self.inter, self.hidden, t)
                   for q, s in zip(self.gate_up_q, self.gate_up_s, strict=True)]
        down = [_dequantize(q, s, m, g, self.hidden, self.inter, t)
                for q, s in zip(self.down_q, self.down_s, strict=True)]
        return torch.stack(gate_up), torch.stack(down)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.mode == "int4" else ""
        return f"num_experts={self.num_experts}, hidden={self.hidden}, inter={self.inter}, {self.mode}{g}"


def weight_counts(model: nn.Module) -> Iterator[tuple[str, int]]:
    """(name, numel) of every weight the model stands for, quantized or not: its parameters, plus each
    QuantLinear's [N, K] weight (and bias) and each QuantExperts' two stacks under the float model's names.
    A quantized copy of tied embeddings (lm_head) is not counted twice. For parameter counts (qwenvl info)."""
    yield from ((n, p.numel()) for n, p in model.named_parameters())
    rep = getattr(model, "quantized", None) or {}
    tied = bool((rep.get("lm_head") or {}).get("tied"))
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear) and not (tied and name == "lm_head"):
            yield f"{name}.weight", mod.out_features * mod.in_features
            if mod.bias is not None:
                yield f"{name}.bias", mod.bias.numel()
        elif isinstance(mod, QuantExperts):
            e, h, i = mod.num_experts, mod.hidden, mod.inter
            yield from ((f"{name}.gate_up_proj", e * 2 * i * h), (f"{name}.down_proj", e * h * i))


# ---------------------------------------------------------------------------------------------
# the model transform


def _targets(decoder: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """(qualified name, parent, attribute, module) of every nn.Linear / MoeExperts under decoder.layers."""
    out = []
    for pname, parent in decoder.layers.named_modules(prefix="model.layers"):
        for attr, child in parent.named_children():
            if isinstance(child, (nn.Linear, MoeExperts)):
                out.append((f"{pname}.{attr}", parent, attr, child))
    return out


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "int8", group_size: int = DEFAULT_GROUP_SIZE,
                   lm_head: str | None = "auto") -> dict:
    """Quantize a QwenVLModel's text decoder in place (weight-only); returns a report of what changed.

    mode: "int8" | "int4" for the decoder layers' linears and MoE experts; "bf16" stores the linears' weights
    in bf16 for our tiled CPU kernel, computing in the model's dtype (fp32 on CPUs without native bf16, where
    it halves the bytes a decode step reads; MoE experts stay float). group_size: int4 only (32, 64, 128 or
    256 input channels per scale / zero). lm_head: "int8" | "int4" | "bf16" | None (keep float) | "auto"
    (bf16 for mode bf16, else int8); with tied embeddings a quantized copy becomes model.lm_head and
    embed_tokens stays float for the lookups.
    Works on fp32 or bf16 models, in train or eval mode. The result is for inference only: no gradients
    reach the quantized weights, and weights.save_model refuses it (model.quantized is set to the report).

    Report: {"mode", "group_size", "compute_dtype", "linears", "experts", "padded": [names],
    "decoder": {"numel", "float_bytes", "quant_bytes"}, "lm_head": {"mode", "tied", ...bytes} or None}.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {list(MODES)}")
    if lm_head == "auto":
        lm_head = "bf16" if mode == "bf16" else "int8"
    if lm_head not in (None, *MODES):
        raise ValueError(f"unknown lm_head quantization {lm_head!r}; choose one of {[None, *MODES]}")
    if getattr(model, "quantized", None):
        raise ValueError("model is already quantized")
    emb = model.model.embed_tokens.weight
    if "bf16" in (mode, lm_head) and not use_tiled("bf16", emb.device):
        why = tiled_gemv()[1] if emb.device.type == "cpu" else f"the model is on {emb.device}"
        raise ValueError(f"bf16 weight storage runs only on our tiled CPU kernel, unusable here: {why}")
    uses_int4 = "int4" in (mode, lm_head)
    if uses_int4 and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size {group_size} is not one the CPU kernel takes: {INT4_GROUP_SIZES}")
    if uses_int4 and emb.device.type != "cpu":
        raise ValueError(f"int4 uses torch's CPU kernel and its packed layout; the model is on {emb.device}. "
                         "Use int8 there.")
    # CPU: torch's kernels' fp32 paths are scalar code, so their scales are bf16 (module docstring)
    compute = torch.bfloat16 if emb.device.type == "cpu" else emb.dtype
    report: dict = {"mode": mode, "group_size": group_size if uses_int4 else None,
                    "compute_dtype": str(compute).removeprefix("torch."), "linears": 0, "experts": 0,
                    "padded": [], "decoder": {"numel": 0, "float_bytes": 0, "quant_bytes": 0}, "lm_head": None}
    dec = report["decoder"]
    for name, parent, attr, child in _targets(model.model):
        if mode == "bf16" and isinstance(child, MoeExperts):
            continue  # grouped_mm over float experts: the tiled kernel has no grouped form
        before = list(child.parameters()) if isinstance(child, MoeExperts) else [child.weight]
        if isinstance(child, MoeExperts):
            new = QuantExperts(child, mode, group_size, compute)
            report["experts"] += 1
            after = [new.gate_up_q, new.gate_up_s, new.down_q, new.down_s]
        else:
            new = QuantLinear(child.weight, child.bias, mode, group_size, compute)
            report["linears"] += 1
            after = [new.qweight] + ([new.scales] if new.scales is not None else [])
            if new.padded:
                report["padded"].append(name)
        dec["numel"] += sum(p.numel() for p in before)
        dec["float_bytes"] += _nbytes(*before)
        dec["quant_bytes"] += _nbytes(*after)
        setattr(parent, attr, new)
    if lm_head is not None:
        tied = model.lm_head is None
        w = emb if tied else model.lm_head.weight
        model.lm_head = QuantLinear(w, None, lm_head, group_size, compute)
        report["lm_head"] = {"mode": lm_head, "tied": tied, "numel": w.numel(), "float_bytes": _nbytes(w),
                             "quant_bytes": _nbytes(*(t for t in (model.lm_head.qweight, model.lm_head.scales)
                                                      if t is not None))}
    model.quantized = report
    return report
