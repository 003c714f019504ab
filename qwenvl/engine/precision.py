"""CPU-aware compute precision: bf16 where the hardware runs it natively, fp32 elsewhere.

bf16 matmul measured 1536 GFLOP/s with AMX, ~400 with avx512_bf16 and 48-59 on a Xeon with neither,
where fp32 ran at 183-285, and 0.27 on an AVX2 EPYC where fp32 ran at 100 (bench/RESULTS.md): on such a CPU
bf16 is 3-370x slower, so "auto" picks fp32 there. fp16 is never chosen on CPU (~1000x slower). Reads
/proc/cpuinfo when asked, never at import.
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_dtype(device: str | torch.device = "cpu", flags: set[str] | None = None) -> tuple[torch.dtype, str]:
    """(compute dtype, the reason, in words) for `device`."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "cuda with native bf16"
        return torch.float32, "cuda without bf16"
    if dev.type != "cpu":
        return torch.float32, f"{dev.type}: fp32 (no native-bf16 check for this device)"
    have = [f for f in NATIVE_BF16_FLAGS if f in (cpu_flags() if flags is None else flags)]
    if have:
        return torch.bfloat16, f"cpu with native bf16 ({', '.join(have)})"
    return torch.float32, "cpu without avx512_bf16 / amx_bf16: bf16 matmul would be emulated (3-370x slower)"
