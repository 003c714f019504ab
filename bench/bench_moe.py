"""Qwen3-VL-MoE expert block: grouped matmul (what qwenvl.model.moe runs) beside a loop over the experts
hit, beside the machine's limits, in one run.

    python bench/bench_moe.py [--dtype bf16|fp32] [--small]

Decode (S = 1..8 tokens) reads k of E experts' weights per token: its limit is those weight bytes over
the measured memory bandwidth. Prefill (S = 512) is compute: 3 * 2 * S * k * H * I FLOPs over the
measured GEMM rate. Sizes: Qwen3-VL-30B-A3B's E 128, H 2048, I 768, k 8 (1.2 GB of bf16 experts, beyond
the L3 cache; --small: E 64, H 1024, I 512, which a large L3 holds, so its decode beats "the limit").
Every call gets a fresh input (a pool of 16), so the experts hit change as in real decoding.
Give it the CPU to itself.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rooflines import machine_info, measure_bandwidth, measure_gemm  # bench/ is on sys.path for a script

from qwenvl.config import TextConfig
from qwenvl.model import moe


def timed(fn, args: list, n: int = 20) -> float:
    """Median seconds of n calls (after two warm-ups), cycling through args."""
    fn(args[0]), fn(args[1 % len(args)])
    ts = []
    for j in range(n):
        x = args[j % len(args)]
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    e, h, i, k = (64, 1024, 512, 8) if args.small else (128, 2048, 768, 8)
    cfg = TextConfig(vocab_size=16, hidden_size=h, intermediate_size=4 * i, num_hidden_layers=1,
                     num_attention_heads=h // 128, num_key_value_heads=h // 128, mrope_section=None,
                     num_experts=e, num_experts_per_tok=k, moe_intermediate_size=i)
    block = moe.SparseMoeBlock(cfg).to(dtype).eval()
    bw = measure_bandwidth()["roofline"]
    a = torch.randn(2048, 2048)
    gemm = measure_gemm() if dtype == torch.bfloat16 else 2 * 2048**3 / timed(lambda m: m @ m, [a], 5) / 1e9
    print(json.dumps({**machine_info(), "bandwidth_GBps": round(bw, 1), "gemm_GFLOPs": round(gemm, 1),
                      "dtype": args.dtype, "E": e, "H": h, "I": i, "k": k}))
    per_expert = 3 * h * i * block.experts.gate_up_proj.element_size()
    print("| S | grouped_mm ms | loop ms | limit ms | grouped / limit |\n|---|---|---|---|---|")
    for s in (1, 8, 64, 512):
        xs = [torch.randn(1, s, h, dtype=dtype) for _ in range(16)]
        with torch.no_grad():
            hit = sum(int(block.gate(x[0])[1].unique().numel()) for x in xs) / len(xs)
            grouped = timed(block, xs)
            real = moe.grouped_mm_supported
            moe.grouped_mm_supported = lambda *_: False  # the fallback loop over experts that got tokens
            try:
                loop = timed(block, xs)
            finally:
                moe.grouped_mm_supported = real
        limit = max(hit * per_expert / (bw * 1e9), 3 * 2 * s * k * h * i / (gemm * 1e9))
        print(f"| {s} | {grouped * 1e3:.2f} | {loop * 1e3:.2f} | {limit * 1e3:.2f} | {grouped / limit:.1f}x |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
