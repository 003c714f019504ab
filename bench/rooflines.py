"""Machine facts and rooflines for the benchmarks: memory bandwidth, bf16 GEMM rate, FLOP and byte counts,
and a measure of the CPU other processes take meanwhile (the bench machine may be shared).

Used by bench/bench_core.py; imports torch only (the model objects are passed in).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from load_meter import QUIET, OtherLoad, QuietWaiter  # noqa: F401 (re-exported for the benchmarks)

GiB = 1024**3


def machine_info() -> dict:
    cpu, flags = "?", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "?":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            have = line.split(":", 1)[1].split()
            flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    import transformers

    return {"cpu": cpu, "isa": flags, "logical_cpus": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _best(fn, n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def measure_bandwidth() -> dict:
    """Memory bandwidth (GB/s, 1e9) over 1 GiB buffers, best of 7 each.

    sum / dot: fp32 reductions (read only); copy: read + write bytes; gemv: bf16 x @ W.T over a stack of
    [8960, 1536] matrices totalling 1 GiB (the decode access pattern). At 2 threads the reductions
    are partly compute-bound, so the roofline takes the best of all four.
    """
    src = torch.ones(GiB // 4, dtype=torch.float32)
    out = {"sum": GiB / _best(src.sum, 7) / 1e9, "dot": GiB / _best(lambda: torch.dot(src, src), 7) / 1e9}
    dst = torch.empty_like(src)
    out["copy"] = 2 * GiB / _best(lambda: dst.copy_(src), 7) / 1e9
    src = dst = None
    ws = [torch.full((8960, 1536), 0.01, dtype=torch.bfloat16) for _ in range(GiB // (8960 * 1536 * 2))]
    v = torch.ones(1, 1536, dtype=torch.bfloat16)
    nbytes = sum(w.numel() * w.element_size() for w in ws)
    out["gemv"] = nbytes / _best(lambda: [F.linear(v, w) for w in ws], 7) / 1e9
    out["roofline"] = max(out.values())
    return out


def measure_gemm(n: int = 4096, dtype: torch.dtype = torch.bfloat16) -> float:
    """GEMM GFLOP/s in `dtype` on an n x n x n matmul, best of 5."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return 2 * n**3 / _best(lambda: a @ b, 5) / 1e9


def lm_decode_bytes(model) -> int:
    """Bytes of weights one decode token reads: decoder layers + final norm + the lm_head matrix."""
    lm = model.model
    total = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if not n.startswith("embed_tokens"))
    head = model.lm_head.weight if model.lm_head is not None else lm.embed_tokens.weight
    return total + head.numel() * head.element_size()


def vit_flops(cfg, grid: tuple[int, int, int], win_lens: list[int]) -> float:
    """Matmul + attention FLOPs of the Qwen2.5-VL ViT and merger for one image (elementwise ops ignored)."""
    v = cfg.vision
    t, h, w = grid
    n, d, i = t * h * w, v.hidden_size, v.intermediate_size
    per_patch_block = 2 * (d * 3 * d + d * d + 3 * d * i)  # qkv, proj, gate/up/down
    full_attn = 4 * n * n * d  # QK^T + AV over one frame (one image, t = 1)
    win_attn = 4 * sum(L * L for L in win_lens) * d
    n_full = len(v.fullatt_block_indexes)
    blocks = v.depth * n * per_patch_block + n_full * full_attn + (v.depth - n_full) * win_attn
    u = d * v.spatial_merge_size**2
    merger = 2 * (n // v.spatial_merge_size**2) * (u * u + u * v.out_hidden_size)
    embed = 2 * n * v.in_channels * v.temporal_patch_size * v.patch_size**2 * d
    return float(embed + blocks + merger)


def prefill_flops(cfg, tokens: int) -> float:
    """Decoder matmul + causal attention FLOPs for a prompt of `tokens`, logits for the last token only."""
    t = cfg.text
    d, kvd, i = t.hidden_size, t.num_key_value_heads * t.head_dim, t.intermediate_size
    per_tok = 2 * (d * d + 2 * d * kvd + d * d + 3 * d * i)
    attn = 2 * 2 * (tokens * (tokens + 1) // 2) * d  # causal QK^T + AV
    return float(t.num_hidden_layers * (tokens * per_tok + attn) + 2 * d * t.vocab_size)
