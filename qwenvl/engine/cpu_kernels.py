"""Optional C++ CPU kernels, compiled on first use for this machine (torch.utils.cpp_extension + ninja).

    ext, why = tiled_gemv()         # the module, or None and the reason in words

Only one so far: csrc/tiled_gemv.cpp, the weight-only int8 and bf16 GEMVs of decode on AVX-512 or AVX2 CPUs
(torch's own int8 kernel is compute-bound on AVX-512 and scalar code for fp32 activations; fp32 F.linear
reads weights at 2-8 GB/s at 1-16 rows on an AVX2 EPYC; bench/RESULTS.md), as torch.ops.qwenvl.int8_gemv
and torch.ops.qwenvl.bf16_gemv. Built with -march=native into ~/.cache/qwenvl/kernels/<key> (or
$QWENVL_KERNEL_CACHE), the key hashing the source, torch's version and the CPU's flags, so a copied home
directory never runs code built for another CPU.
Everything works without it: quant.py falls back to torch's kernel. QWENVL_KERNELS=0 turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from qwenvl.engine.precision import cpu_flags

SOURCE = Path(__file__).with_name("csrc") / "tiled_gemv.cpp"
# what the source's intrinsics need, per body: AVX512F for the converts / FMAs and BW for the byte loads'
# widening; or AVX2 (the widening) with FMA
NEEDED_FLAGS = (("avx512f", "avx512bw"), ("avx2", "fma"))


def _cache_dir(key: str) -> Path:
    root = os.environ.get("QWENVL_KERNEL_CACHE") or Path.home() / ".cache" / "qwenvl" / "kernels"
    return Path(root) / key


def unavailable_reason(flags: set[str] | None = None) -> str | None:
    """Why the kernel cannot be built here (None when it can be tried)."""
    if os.environ.get("QWENVL_KERNELS", "1") == "0":
        return "QWENVL_KERNELS=0"
    have = cpu_flags() if flags is None else flags
    if not any(all(f in have for f in isa) for isa in NEEDED_FLAGS):
        return "the CPU lacks " + " and ".join("+".join(isa) for isa in NEEDED_FLAGS)
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler on PATH"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install ninja)"
    return None


@functools.cache
def tiled_gemv() -> tuple[ModuleType | None, str]:
    """(the compiled module, "built" / "cached") or (None, why not). Compiles once per machine (~35 s on 2
    cores); a failed build is reported, never raised."""
    why = unavailable_reason()
    if why:
        return None, why
    flags = sorted(cpu_flags())
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()).hexdigest()[:16]
    build = _cache_dir(key)
    cached = (build / f"qwenvl_tiled_gemv_{key}.so").exists()
    if not cached:
        print("qwenvl: compiling the decode kernels for this CPU (once, ~30 s)", file=sys.stderr, flush=True)
    build.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils.cpp_extension import load

        ext = load(f"qwenvl_tiled_gemv_{key}", [str(SOURCE)], build_directory=str(build),
                   extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # a compiler error must not stop inference: torch's kernel still works
        return None, f"build failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
    _register(ext)
    return ext, "cached" if cached else "built"


def _register(ext: ModuleType) -> None:
    """Expose the kernels as torch.ops.qwenvl.int8_gemv / bf16_gemv, so a torch.compile'd decode step (Engine
    compile=True) calls them inside its graph instead of breaking the graph at an unknown Python call."""

    @torch.library.custom_op("qwenvl::int8_gemv", mutates_args=())
    def int8_gemv_op(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return ext.int8_gemv(x, q, s)

    @torch.library.custom_op("qwenvl::bf16_gemv", mutates_args=())
    def bf16_gemv_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ext.bf16_gemv(x, w)

    @int8_gemv_op.register_fake
    def _(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], q.shape[0]), dtype=torch.float32)

    @bf16_gemv_op.register_fake
    def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)
