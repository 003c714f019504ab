"""Weight-only int8 / int4 matmuls on CPU beside fp32 / bf16 and the measured memory-bandwidth limit.

    python bench/bench_quant.py [--threads N] [--model | --only-model]   # ~2.5 min on 2 quiet cores,
                                                                         # --model +1.5 min; ~5 GB RAM peak

Prints the machine (date, CPU model, ISA flags, torch and its CPU capability, threads), the bandwidth
limit (best of a 1 GiB fp32 sum and dot), then per shape M x K x N (x [M, K] @ W.T, W [N, K]): ms per
call, weight bytes read per call, GB/s of those bytes, % of the bandwidth limit, GFLOP/s, and the CPU
other processes used meanwhile ("load", cores; the bench machine is shared, each section first waits up
to 20 s for a quiet second). A variant fast enough for caches to matter at M = 1 rotates through copies
of its weight totalling > 600 MiB (L3 is 300 MiB); the others are compute-bound and use one copy.
Variants:
    fp32 / bf16              F.linear on the float weight (bf16 activations for all but fp32)
    int8 kernel              torch.ops.aten._weight_int8pack_mm; "(fp32 x)": fp32 activations and scales
    int4 gG kernel           torch.ops.aten._weight_int4pack_mm_for_cpu, group size G
    int8 / int4 dequant      quant.int8_dequant_mm / int4_dequant_mm: block-wise dequantize + bf16 GEMM
    ours                     QuantLinear.forward: kernel below quant.dequant_rows(mode, dtype) rows,
                             else dequant; int8's kernel is our tiled one (engine/csrc/tiled_gemv.cpp) where
                             it builds, "torch's kernel" the same module on _weight_int8pack_mm
Then the MoE experts (Qwen3-VL-30B-A3B sizes: E 128, H 2048, I 768, top-8, random routing per call):
bf16 MoeExperts (grouped_mm), QuantExperts int8 / int4 (loop over the hit experts), and the alternative
"dequantize the hit experts' int8 weights, then grouped_mm". Last, the relative output error of each
scheme on a Gaussian 4096 x 4096 weight (fp32 reference) and its bits per weight.
--rows sweeps the rows M of a batched decode step (1-128) on the 2B decoder's MLP shapes: F.linear, our
tiled int8 kernel called at every M (whatever quant.dequant_rows says), torch's int8 kernel and dequantize +
GEMM: where the kernel stops beating the GEMM is where quant.INT8_DEQUANT_ROWS belongs (for that dtype).
--model adds a whole Qwen2-VL-2B-shaped decoder (random weights built in memory): 256-token prefill and
decode tok/s in the float dtype / bf16 storage (fp32 only) / int8 (tiled, and torch's kernel) / int4.
--dtype (default bf16; auto: fp32 on a CPU without native bf16, where bf16 GEMMs are emulated) sets x and the
float weights of both. torchao is timed only if installed (it is not a dependency).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rooflines import OtherLoad, QuietWaiter  # bench/rooflines.py (a script's folder is on sys.path)

from qwenvl.engine import quant as Q
from qwenvl.model.moe import MoeExperts, grouped_linear

MiB = 2**20
FOOTPRINT = 640 * MiB  # rotating copies of a decode-shaped weight, > the 300 MiB L3
BF16 = torch.bfloat16


def machine_line() -> str:
    cpu, flags = "?", []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "?":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            have = set(line.split(":", 1)[1].split())
            flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in have]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cap = torch.backends.cpu.get_cpu_capability()
    return (f"{date} | {cpu} | flags: {' '.join(flags)} | torch {torch.__version__} ({cap}), "
            f"{torch.get_num_threads()} threads | python {platform.python_version()}")


def best_per_call(calls: list, min_passes: int = 5, budget_s: float = 1.0) -> float:
    """Seconds per call: the best pass (each function called once) after a warm-up pass."""
    for f in calls:
        f()
    best, passes, t_end = float("inf"), 0, time.perf_counter() + budget_s
    while passes < min_passes or (time.perf_counter() < t_end and passes < 30):
        t0 = time.perf_counter()
        for f in calls:
            f()
        best = min(best, (time.perf_counter() - t0) / len(calls))
        passes += 1
    return best


def bandwidth() -> float:
    """GB/s (1e9) of the faster of a 1 GiB fp32 sum and dot, best of 5 each."""
    x = torch.ones(2**28, dtype=torch.float32)
    t = min(best_per_call([x.sum]), best_per_call([lambda: torch.dot(x, x)]))
    return 2**30 / t / 1e9


def variants(w: torch.Tensor, m: int) -> list[tuple[str, int, object]]:
    """(name, weight bytes read per call, make: () -> a fresh copy as a callable x [M, K] bf16 -> y)."""
    q8, s8 = Q.quantize_int8(w, BF16)
    q4 = {g: Q.quantize_int4(w, g, BF16) for g in (32, 64, 128)}
    g0 = Q.DEFAULT_GROUP_SIZE
    lin8, lin4 = (Q.QuantLinear(w, None, mode, g0, BF16) for mode in ("int8", "int4"))
    lin8_torch = Q.QuantLinear(w, None, "int8", g0, BF16, tiled=False)

    def kernel8(scale_dtype):
        def make():
            q, s = q8.clone(), s8.to(scale_dtype)
            return lambda x: Q._INT8(x.to(scale_dtype), q, s)
        return make

    def kernel4(g, scale_dtype=BF16):
        def make():
            p, sz = q4[g][0].clone(), q4[g][1].to(scale_dtype)
            return lambda x: Q._INT4(x.to(scale_dtype), p, g, sz)
        return make

    def dense(dtype):
        def make():
            ww = w.to(dtype)
            return lambda x: F.linear(x.to(dtype), ww)
        return make

    def dequant(mode):
        def make():
            if mode == "int8":
                q, s = q8.clone(), s8
                return lambda x: Q.int8_dequant_mm(x, q, s)
            p, sz = q4[g0][0].clone(), q4[g0][1]
            return lambda x: Q.int4_dequant_mm(x, p, sz, g0)
        return make

    out = [("fp32", w.numel() * 4, dense(torch.float32)), ("bf16", w.numel() * 2, dense(BF16)),
           ("int8 kernel", Q._nbytes(q8, s8), kernel8(BF16))]
    if m == 1:  # fp32 activations run scalar code (30x slower than bf16 at M = 256): shown at M = 1 only
        out.append(("int8 kernel (fp32 x)", q8.numel() + 4 * s8.numel(), kernel8(torch.float32)))
    out += [(f"int4 g{g} kernel", Q._nbytes(*q4[g]), kernel4(g)) for g in q4]
    if m == 1:
        out.append((f"int4 g{g0} kernel (fp32 x)", q4[g0][0].numel() + 4 * q4[g0][1].numel(),
                    kernel4(g0, torch.float32)))
    out += [("int8 dequant + bf16 GEMM", Q._nbytes(q8, s8), dequant("int8")),
            (f"int4 g{g0} dequant + bf16 GEMM", Q._nbytes(*q4[g0]), dequant("int4")),
            (f"ours int8 (QuantLinear{', tiled' if lin8.tiled else ''})", Q._nbytes(q8, s8),
             lambda: copy.deepcopy(lin8)),
            ("ours int8, torch's kernel", Q._nbytes(q8, s8), lambda: copy.deepcopy(lin8_torch)),
            (f"ours int4 g{g0} (QuantLinear)", Q._nbytes(*q4[g0]), lambda: copy.deepcopy(lin4))]
    return out


def bench_linear(m: int, k: int, n: int, bw: float, wait: QuietWaiter) -> None:
    w = torch.randn(n, k) * 0.02
    x = torch.randn(m, k).to(BF16)
    flops = 2 * m * n * k
    wait()
    print(f"\n{m} x {k} x {n}" + ("  (decode-shaped)" if m == 1 else ""))
    for name, nbytes, make in variants(w, m):
        first = make()
        t1 = best_per_call([lambda f=first: f(x)], min_passes=2, budget_s=0.0)
        fast = nbytes / t1 > 0.2 * bw * 1e9  # caches would flatter it: rotate copies
        fns = [first] + [make() for _ in range(FOOTPRINT // nbytes - 1 if m == 1 and fast else 0)]
        with OtherLoad() as load:
            t = best_per_call([lambda f=f: f(x) for f in fns])
        print(f"  {name:32s} {t * 1e3:8.2f} ms {nbytes / MiB:6.1f} MiB {nbytes / t / 1e9:6.1f} GB/s "
              f"{100 * nbytes / t / 1e9 / bw:4.0f}% {flops / t / 1e9:7.1f} GFLOP/s  copies {len(fns):3d}  "
              f"load {load.cores:.1f}")
        del fns, first


def bench_moe(bw: float, wait: QuietWaiter) -> None:
    e, h, i, k = 128, 2048, 768, 8
    gen = torch.Generator().manual_seed(0)
    ref = MoeExperts(h, i, e).to(BF16)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02, generator=gen)
    g0 = Q.DEFAULT_GROUP_SIZE
    q8, q4 = Q.QuantExperts(ref, "int8", g0, BF16), Q.QuantExperts(ref, "int4", g0, BF16)

    def dequant_grouped(x, experts, weights):
        """The alternative: dequantize the hit experts (compacted), then the float path's grouped_mm."""
        hit, inv = experts.reshape(-1).unique(return_inverse=True)
        order = inv.argsort(stable=True)
        token, counts = order // k, torch.bincount(inv, minlength=len(hit))
        gu = q8.gate_up_q[hit].to(BF16) * q8.gate_up_s[hit][..., None]
        dn = q8.down_q[hit][..., :i].to(BF16) * q8.down_s[hit][..., None]
        gate, up = grouped_linear(x[token], gu, counts).chunk(2, dim=-1)
        y = grouped_linear(F.silu(gate) * up, dn, counts) * weights.reshape(-1)[order, None]
        return x.new_zeros(x.shape).index_add(0, token, y.to(x.dtype))

    per_expert = {"bf16 MoeExperts (grouped_mm)": Q._nbytes(ref.gate_up_proj[0], ref.down_proj[0]),
                  "int8 QuantExperts (ours)": Q._nbytes(q8.gate_up_q[0], q8.gate_up_s[0], q8.down_q[0], q8.down_s[0]),
                  "int8 dequant hit + grouped_mm": Q._nbytes(q8.gate_up_q[0], q8.gate_up_s[0], q8.down_q[0],
                                                             q8.down_s[0]),
                  f"int4 g{g0} QuantExperts (ours)": Q._nbytes(q4.gate_up_q[0], q4.gate_up_s[0], q4.down_q[0],
                                                            q4.down_s[0])}
    mods = dict(zip(per_expert, (ref, q8, dequant_grouped, q4), strict=True))
    print(f"\nMoE experts E {e}, H {h}, I {i}, top-{k} (bf16 {3 * e * h * i * 2 / 2**30:.2f} GiB), "
          "random routing: 8 routings per pass (2 at S = 256)")
    for s in (1, 8, 256):
        x = torch.randn(s, h, generator=gen).to(BF16)
        n_routes = 8 if s < 256 else 2
        routes = [torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(s)]) for _ in range(n_routes)]
        weights = torch.rand(s, k, generator=gen).to(BF16)
        hit = sum(len(r.unique()) for r in routes) / len(routes)
        wait()
        for name, mod in mods.items():
            if s == 256 and mod is dequant_grouped:  # seconds per call: page faults on GBs of fresh bf16 copies
                continue
            with torch.no_grad(), OtherLoad() as load:
                t = best_per_call([lambda mod=mod, r=r, x=x, w=weights: mod(x, r, w) for r in routes], min_passes=3)
            nbytes = hit * per_expert[name]
            print(f"  S={s:<4d} {name:32s} {t * 1e3:8.2f} ms  {hit:5.1f} experts hit {nbytes / t / 1e9:6.1f} GB/s "
                  f"{100 * nbytes / t / 1e9 / bw:4.0f}%  load {load.cores:.1f}")


def accuracy() -> None:
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(4096, 4096, generator=gen), torch.randn(64, 4096, generator=gen)
    ref = x @ w.T
    print("\nrelative output error ||y - y_fp32|| / ||y_fp32||, Gaussian W 4096 x 4096, x 64 rows, via QuantLinear")
    print(f"  bf16 weight + activations       16.00 bits/weight  "
          f"{((x.to(BF16) @ w.to(BF16).T).float() - ref).norm() / ref.norm():.4f}")
    for mode, g in (("int8", 0), ("int4", 32), ("int4", 64), ("int4", 128), ("int4", 256)):
        lin = Q.QuantLinear(w, None, mode, g or 128, BF16)
        err = (lin(x) - ref).norm() / ref.norm()
        bits = 8 * Q._nbytes(lin.qweight, lin.scales) / w.numel()
        print(f"  {mode + (f' g{g}' if g else ''):30s} {bits:5.2f} bits/weight  {err:.4f}")


def bench_gemv(bw: float, wait: QuietWaiter) -> None:
    """One-row bf16 matmuls of the Qwen2-VL-2B decoder's shapes: F.linear against torch.mv (what
    qwenvl.model.layers.linear takes for a decode step), over > 700 MB of weight copies, interleaved rounds."""
    import statistics

    print("\none-row bf16 GEMV (x [1, K] @ W.T, W [N, K]), median of 6 interleaved rounds:")
    for n, k in ((1536, 1536), (8960, 1536), (1536, 8960), (1536, 1536), (256, 1536), (151936, 1536), (11008, 4096)):
        # the first shape is timed twice: the first timings of a process run slow (threads, page faults)
        copies = min(40, max(2, int(700e6 // (n * k * 2)) + 1))
        ws = [torch.randn(n, k).to(BF16) for _ in range(copies)]
        x = torch.randn(1, k).to(BF16)
        fns = {"F.linear": lambda w, x=x: F.linear(x, w), "torch.mv": lambda w, x=x: torch.mv(w, x[0])}
        times: dict[str, list[float]] = {name: [] for name in fns}
        wait()
        for _ in range(7):
            for name, fn in fns.items():
                reps = max(10, copies)
                t0 = time.perf_counter()
                for i in range(reps):
                    fn(ws[i % copies])
                times[name].append((time.perf_counter() - t0) / reps)
        cells = []
        for name, v in times.items():
            dt = statistics.median(v[1:])
            gbs = n * k * 2 / dt / 1e9
            cells.append(f"{name} {dt * 1e3:7.3f} ms {gbs:5.1f} GB/s ({100 * gbs / bw:.0f}%)")
        print(f"  {n:6d} x {k:5d}: " + " | ".join(cells))
        del ws


def bench_rows(bw: float, wait: QuietWaiter, dtype: torch.dtype = BF16) -> None:
    """ms per call against the rows M of one step, on 8960 x 1536 and 1536 x 8960 (interleaved rounds, median);
    x and the float baseline / dequantized GEMM in `dtype`."""
    import statistics

    tiled = Q.use_tiled("int8", torch.device("cpu"))
    from qwenvl.engine.cpu_kernels import tiled_gemv

    print(f"\nbatched decode rows (x [M, K] @ W.T), median of 5 interleaved rounds; tiled kernel: "
          f"{'yes' if tiled else 'no (' + tiled_gemv()[1] + ')'}; x in {str(dtype).removeprefix('torch.')}")
    for n, k in ((8960, 1536), (1536, 8960)):
        w = torch.randn(n, k) * 0.02
        wb = w.to(dtype)
        q8, s8 = Q.quantize_int8(w, BF16)
        qt, st = Q.tile_int8(q8, s8) if tiled else (None, None)
        fns = {f"{str(dtype).removeprefix('torch.')} F.linear": lambda x, wb=wb: F.linear(x, wb),
               "int8 torch kernel": lambda x, q=q8, s=s8: Q.int8_kernel_mm(x, q, s),
               "int8 dequant + GEMM": lambda x, q=q8, s=s8: Q.int8_dequant_mm(x, q, s)}
        if tiled:
            fns["int8 ours (tiled)"] = lambda x, q=qt, s=st: Q.int8_kernel_mm(x, q, s, tiled=True)
        print(f"  {n} x {k} (W [N, K]), ms per call:")
        print("    " + "M".rjust(4) + "".join(name.rjust(22) for name in fns))
        for m in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128):
            x = torch.randn(m, k).to(dtype)
            times: dict[str, list[float]] = {name: [] for name in fns}
            wait()
            for _ in range(6):
                for name, fn in fns.items():
                    reps = 10
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fn(x)
                    times[name].append((time.perf_counter() - t0) / reps)
            print("    " + f"{m:4d}" + "".join(f"{statistics.median(v[1:]) * 1e3:22.3f}" for v in times.values()))


def bench_model(bw: float, wait: QuietWaiter, prompt: int = 256, steps: int = 24, dtype: torch.dtype = BF16) -> None:
    """Prefill + greedy decode of a Qwen2-VL-2B-shaped decoder (bench/make_bench_checkpoint.py's config,
    random N(0, 0.02) weights in `dtype` built in memory, vision tower left on the meta device): float / int8 /
    int4."""
    from make_bench_checkpoint import bench_config

    from qwenvl import families
    from qwenvl.model.decoder import KVCache
    from qwenvl.model.qwenvl import QwenVLModel
    from qwenvl.weights import init_buffers

    cfg = families.from_hf_dict(bench_config().to_dict())
    t = cfg.text
    print(f"\nwhole decoder: Qwen2-VL-2B-shaped LM ({t.num_hidden_layers} layers, hidden {t.hidden_size}, MLP "
          f"{t.intermediate_size}, tied vocab {t.vocab_size}), {prompt}-token prefill, {steps} decode steps")
    import qwenvl.model.layers as layers
    import qwenvl.model.qwenvl as qmodel

    fast, tiled = layers.linear, Q.use_tiled
    dname = str(dtype).removeprefix("torch.")
    for mode in (None, "F.linear", "bf16", "int8", "int8 torch", "int4"):
        if mode == "F.linear" and dtype != BF16:
            continue  # the one-row torch.mv path is bf16-only: F.linear is what the float row runs
        if mode == "bf16" and (dtype == BF16 or not tiled("bf16", torch.device("cpu"))):
            continue  # bf16 storage under fp32 compute (what "auto" keeps of a bf16 checkpoint on such a CPU)
        # "int8 torch": int8 through torch's _weight_int8pack_mm instead of our tiled kernel
        Q.use_tiled = (lambda m, d: False) if mode == "int8 torch" else tiled
        # "F.linear": the bf16 decoder with the one-row torch.mv path switched off (what it was before)
        layers.linear = qmodel.linear = (lambda x, w, b=None: F.linear(x, w, b)) if mode == "F.linear" else fast
        with torch.device("meta"):
            model = QwenVLModel(cfg).eval()
        gen = torch.Generator().manual_seed(0)
        for name, p in list(model.model.named_parameters()):
            mod_name, _, attr = name.rpartition(".")
            t = torch.ones(p.shape, dtype=dtype) if "norm" in name else torch.empty(p.shape, dtype=dtype).normal_(
                0, 0.02, generator=gen)
            setattr(model.model.get_submodule(mod_name), attr, torch.nn.Parameter(t, requires_grad=False))
        init_buffers(model.model, "cpu")
        lm = model.model
        nbytes = sum(Q._nbytes(p) for n, p in lm.named_parameters() if not n.startswith("embed_tokens")) + \
            Q._nbytes(lm.embed_tokens.weight)
        n_linear = sum(m.weight.numel() for m in lm.layers.modules() if isinstance(m, torch.nn.Linear))
        flops = 2 * prompt * n_linear + 2 * lm.embed_tokens.weight.numel()  # matmuls; logits of the last token
        if mode in ("bf16", "int8", "int8 torch", "int4"):
            rep = Q.quantize_model(model, mode.split()[0])
            nbytes += rep["decoder"]["quant_bytes"] - rep["decoder"]["float_bytes"]
            nbytes += rep["lm_head"]["quant_bytes"] - rep["lm_head"]["float_bytes"]
        ids = torch.randint(0, cfg.text.vocab_size, (1, prompt), generator=gen)
        wait()
        with torch.no_grad(), OtherLoad() as load:
            cache = KVCache.allocate(cfg.text, 1, prompt + steps + 2, dtype)
            t0 = time.perf_counter()
            h = model(model.embed(ids), torch.arange(prompt).expand(3, 1, prompt), None, cache, 0)
            tok = model.logits(h[:, -1]).argmax(-1)
            t_prefill = time.perf_counter() - t0
            times = []
            for step in range(steps + 2):  # the first 2 steps warm up
                t0 = time.perf_counter()
                slot = prompt + step
                h = model(model.embed(tok[:, None]), torch.full((3, 1, 1), slot), None, cache, slot)
                tok = model.logits(h[:, -1]).argmax(-1)
                times.append(time.perf_counter() - t0)
        t_tok = sorted(times[2:])[len(times[2:]) // 2]
        label = mode or (dname + " (mv)" if dtype == BF16 else dname)
        print(f"  {label:10s} {nbytes / 2**30:5.2f} GiB read per token | prefill {t_prefill:6.2f} s "
              f"({flops / t_prefill / 1e12:.2f} TFLOP/s of matmuls) | decode {t_tok * 1e3:6.1f} ms/token (median) "
              f"= {1 / t_tok:5.2f} tok/s, {nbytes / t_tok / 1e9:5.1f} GB/s, {100 * nbytes / t_tok / 1e9 / bw:.0f}% "
              f"of the limit | load {load.cores:.1f}")
        del model, cache
    layers.linear = qmodel.linear = fast
    Q.use_tiled = tiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--model", action="store_true", help="also a whole 1.5B decoder, bf16 / int8 / int4 (+2 min)")
    ap.add_argument("--only-model", action="store_true", help="skip the matmul and MoE tables")
    ap.add_argument("--gemv", action="store_true", help="one-row bf16 F.linear vs torch.mv on the 2B shapes")
    ap.add_argument("--rows", action="store_true",
                    help="int8 kernels against the float GEMM over batched-decode rows 1-128")
    ap.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="bf16",
                    help="activations / float weights of --rows and --model (auto: what qwenvl.load picks here)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    from qwenvl.engine.precision import auto_dtype

    dtype = {"bf16": BF16, "fp32": torch.float32, "auto": auto_dtype("cpu")[0]}[args.dtype]
    try:
        import torchao  # noqa: F401

        print("torchao is installed; not timed by this script")
    except ImportError:
        print("torchao: not installed (not timed)")
    wait = QuietWaiter(budget=120, per_call=20)
    wait()
    bw = bandwidth()
    print(f"memory bandwidth limit: {bw:.1f} GB/s (best of 1 GiB fp32 sum / dot)")
    print(f"INT8_DEQUANT_ROWS = {Q.INT8_DEQUANT_ROWS}, INT4_DEQUANT_ROWS = {Q.INT4_DEQUANT_ROWS}, "
          f"DEFAULT_GROUP_SIZE = {Q.DEFAULT_GROUP_SIZE}")
    with torch.no_grad():
        if not (args.only_model or args.rows):
            for m, k, n in ((1, 4096, 4096), (1, 4096, 11008), (8, 4096, 4096), (16, 4096, 4096), (64, 4096, 4096),
                            (256, 4096, 4096)):
                bench_linear(m, k, n, bw, wait)
            bench_moe(bw, wait)
            accuracy()
        if args.gemv:
            bench_gemv(bw, wait)
        if args.rows:
            bench_rows(bw, wait, dtype)
        if args.model or args.only_model:
            bench_model(bw, wait, dtype=dtype)
    print(f"\nwaited {wait.waited:.0f} s for quiet windows")


if __name__ == "__main__":
    main()
