"""Core CPU benchmark: our model vs transformers' on one 448x448 image + a ~20-token prompt, bf16.

Both models are loaded from the same checkpoint (bench/make_bench_checkpoint.py) into one process
and run with the same thread count. Measured after one warm-up each, in interleaved rounds; the
machine may be shared, so each timing records the CPU other processes used meanwhile, and the median
is taken over the quiet timings (<= QUIET cores of other load; up to 2 x --repeats rounds are run to
collect --repeats quiet ones; if none is quiet, over all):

  ViT encode   ours: model.encode_images(pixels, grid); transformers: model.model.get_image_features(...)
               (vision tower + patch merger, pixels cast to bf16 inside both).
  TTFT         wall time from the call (ours: mrope_positions + ModelInputs + engine.stream; transformers:
               model.generate) to the moment the first new token reaches the caller (ours: yielded by
               the generator; transformers: handed to a streamer's put()). Vision + prefill + first token.
  decode tok/s 32 / (time the 33rd new token arrives - time the 1st arrived): 32 KV-cached greedy decode
               steps, both with a KV cache, same prompt, min_new_tokens = max_new_tokens = 33, no stop.

Rooflines are measured in the same run: memory bandwidth = best of fp32 sum, fp32 dot, copy
(read + write bytes) over 1 GiB and a bf16 GEMV over a 1 GiB stack of [8960, 1536] matrices; decode roofline =
bandwidth / bytes of LM weights read per token (every decoder weight + the tied embedding read once
as lm_head; one embedding row and the KV cache are ignored, ~0.5%). The ViT / TTFT rooflines divide
analytic FLOPs (matmuls and attention only) by the bf16 GEMM GFLOP/s of a 4096^3 matmul.

    python bench/bench_core.py [--ckpt FOLDER] [--repeats 3] [--new-tokens 33] [--profile] [--json OUT]

--profile adds torch.profiler op tables: one ViT call each, and 8 decode steps each (ours: steps of
engine.stream(); transformers: the steps inside generate(), the profiler started/stopped by the streamer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_images import gradient_image
from rooflines import (  # bench/rooflines.py (a script's folder is on sys.path)
    QUIET,
    OtherLoad,
    QuietWaiter,
    lm_decode_bytes,
    machine_info,
    measure_bandwidth,
    measure_gemm,
    prefill_flops,
    vit_flops,
)

DEFAULT_CKPT = "/tmp/qwenvl-bench/qwen2_5_vl_1p5b"
ROOT = Path(__file__).resolve().parents[1]
IMG, VS, VE = 151655, 151652, 151653
METRICS = ("vit_ours", "vit_hf", "ttft_ours", "ttft_hf", "dec_ours", "dec_hf")


# ----------------------------------------------------------------------------------------------
# inputs


def bench_image():
    """The deterministic 448x448 RGB image (smooth gradients + noise, not a flat colour)."""
    return gradient_image(448, 448)


def image_inputs() -> tuple[torch.Tensor, tuple[int, int, int], str]:
    """(pixel_values [1024, 1176] fp32, grid (1, 32, 32), how they were made)."""
    img = bench_image()
    try:
        from qwenvl.processing.image import ImageProcessorConfig, process_image
    except ImportError:
        process_image = None
    if process_image is not None:
        px, grid = process_image(img, ImageProcessorConfig())
        return px, tuple(grid), "qwenvl.processing.image.process_image"
    # fallback: the official (t, h/2, w/2, 2, 2) patch order, CLIP-normalised, frame repeated for T = 2
    x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    x = ((x - mean) / std)[None].expand(2, 3, 448, 448)
    x = x.reshape(1, 2, 3, 16, 2, 14, 16, 2, 14).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(1024, 1176), (1, 32, 32), "inline patchify (processing.image missing)"


def prompt_ids(n_image_tokens: int) -> list[int]:
    """<|im_start|>user\\n <vs> <image>*n <ve> ~20 text tokens <|im_end|>\\n<|im_start|>assistant\\n."""
    text = [74785, 279, 2168, 304, 7716, 13, 3555, 374, 279, 1887, 1894, 11, 323, 1128, 6171, 525, 1052, 30, 21806, 13]
    return [151644, 872, 198, VS] + [IMG] * n_image_tokens + [VE] + text + [151645, 198, 151644, 77091, 198]


# ----------------------------------------------------------------------------------------------
# the two runners: each returns (t_call, [arrival time of every new token], tokens)


def rope_spec(cfg):
    from qwenvl import families

    return families.of(cfg).rope_spec(cfg)


def run_ours(model, ids, px, grid, new_tokens):
    from qwenvl.engine.generate import stream
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.inputs import ModelInputs
    from qwenvl.processing.positions import mrope_positions

    t0 = time.perf_counter()
    pos, delta = mrope_positions(ids, rope_spec(model.cfg), [grid])
    inp = ModelInputs(ids, pos, delta, image_pixels=px, image_grid=[grid])
    times, toks = [], []
    for tok in stream(model, inp, SamplingParams(max_new_tokens=new_tokens)):
        times.append(time.perf_counter())
        toks.append(tok)
    return t0, times, toks


def run_hf(hf, ids, px, grid, new_tokens, on_token=None):
    """on_token(i) is called as the i-th new token (0-based) arrives (the profiler hooks in here)."""
    from transformers.generation.streamers import BaseStreamer

    class Timer(BaseStreamer):
        def __init__(self):
            self.times, self.toks, self.prompt_seen = [], [], False

        def put(self, value):
            if not self.prompt_seen:  # generate() first hands over the prompt
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())
            self.toks.append(int(value.reshape(-1)[0]))
            if on_token is not None:
                on_token(len(self.toks) - 1)

        def end(self):
            pass

    ids_t = torch.tensor([ids])
    timer = Timer()
    t0 = time.perf_counter()
    with torch.no_grad():
        hf.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), pixel_values=px,
                    image_grid_thw=torch.tensor([grid]), mm_token_type_ids=(ids_t == IMG).int(),
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                    streamer=timer, pad_token_id=151643)
    return t0, timer.times, timer.toks


@torch.no_grad()
def vit_ours(model, px, grid):
    return model.encode_images(px, [grid])


@torch.no_grad()
def vit_hf(hf, px, grid):
    return hf.model.get_image_features(px, torch.tensor([grid])).pooler_output[0]


def timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------------------------
# profile (--profile): op tables for our ViT and for one decode step (ours and transformers')


def _key_ms(prof) -> dict[str, float]:
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}  # ms, summed over threads


def op_times(fn) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return _key_ms(prof)


def print_ops(title: str, ops: dict[str, float], scale: float = 1.0, top: int = 14) -> None:
    total = sum(ops.values()) * scale
    print(f"\n{title}: {total:.1f} ms of profiled self CPU time")
    print("| op | ms | % |\n|---|---:|---:|")
    for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| `{k}` | {v * scale:.2f} | {100 * v * scale / total:.1f} |")


def decode_ops_ours(model, ids, px, grid, steps: int) -> tuple[dict[str, float], float]:
    """Profile `steps` decode steps of our engine's stream() (prefill and 1st token outside the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    from qwenvl.engine.generate import stream
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.inputs import ModelInputs
    from qwenvl.processing.positions import mrope_positions

    pos, delta = mrope_positions(ids, rope_spec(model.cfg), [grid])
    gen = stream(model, ModelInputs(ids, pos, delta, image_pixels=px, image_grid=[grid]),
                 SamplingParams(max_new_tokens=steps + 1))
    next(gen)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            next(gen)
        wall = time.perf_counter() - t0
    return _key_ms(prof), wall


def decode_ops_hf(hf, ids, px, grid, steps: int) -> tuple[dict[str, float], float]:
    """Profile `steps` decode steps inside transformers' generate(): the streamer starts/stops the profiler."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    mark = {}

    def on_token(i):
        if i == 0:
            prof.start()
            mark["t0"] = time.perf_counter()
        elif i == steps:
            mark["wall"] = time.perf_counter() - mark["t0"]
            prof.stop()

    run_hf(hf, ids, px, grid, steps + 1, on_token)
    return _key_ms(prof), mark["wall"]


def profile_all(ours, hf, ids, px, grid, wait, steps: int = 8) -> None:
    for name, fn in (("ours", lambda: vit_ours(ours, px, grid)), ("transformers", lambda: vit_hf(hf, px, grid))):
        wait()
        with OtherLoad() as ol:
            t0 = time.perf_counter()
            ops = op_times(fn)
            wall = time.perf_counter() - t0
        print_ops(f"{name} ViT encode, one call ({wall:.2f} s wall under the profiler, other load "
                  f"{ol.cores:.2f} cores)", ops)
    for name, fn, model in (("ours", decode_ops_ours, ours), ("transformers", decode_ops_hf, hf)):
        wait()
        with OtherLoad() as ol:
            ops, wall = fn(model, ids, px, grid, steps)
        print_ops(f"{name} one decode step (mean of {steps}; {1e3 * wall / steps:.0f} ms wall per step under "
                  f"the profiler; other load {ol.cores:.2f} cores over prefill + steps)", ops, 1 / steps)


# ----------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=DEFAULT_CKPT)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also print op profiles (ViT, one decode step)")
    ap.add_argument("--json", help="also write the raw numbers here")
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="seconds, over the whole run, to wait for quiet windows before timings (shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)

    from transformers import Qwen2_5_VLForConditionalGeneration

    from qwenvl.weights import load_model

    info = machine_info()
    wait = QuietWaiter(args.max_wait)
    wait()
    with OtherLoad() as ol_bw:
        bw = measure_bandwidth()
    wait()
    with OtherLoad() as ol_gemm:
        gflops = measure_gemm()
    log(f"bandwidth {bw} (other load {ol_bw.cores:.2f}); GEMM {gflops:.0f} GFLOP/s (other load {ol_gemm.cores:.2f})")
    t_load, ours = timed(load_model, args.ckpt, torch.bfloat16)
    t_load_hf, hf = timed(lambda: Qwen2_5_VLForConditionalGeneration.from_pretrained(
        args.ckpt, dtype=torch.bfloat16, attn_implementation="sdpa").eval())
    px, grid, px_src = image_inputs()
    n_img = grid[0] * grid[1] * grid[2] // 4
    ids = prompt_ids(n_img)
    n_dec = args.new_tokens - 1

    # warm-up (also the sanity checks: finite ViT features, same features, tokens)
    f_ours, f_hf = vit_ours(ours, px, grid), vit_hf(hf, px, grid)
    vit_rel = float((f_ours.float() - f_hf.float()).norm() / f_hf.float().norm())
    finite = bool(torch.isfinite(f_ours).all())
    run_ours(ours, ids, px, grid, 3)
    run_hf(hf, ids, px, grid, 3)

    # interleaved rounds, so drift hits both alike; a timing taken while other processes used more than
    # QUIET cores is kept but left out of the median when enough quiet ones exist (up to 2x rounds)
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in METRICS}
    toks = {}

    def quiet(k):
        return [v for v, load in runs[k] if load <= QUIET]

    for _ in range(2 * args.repeats):
        if all(len(quiet(k)) >= args.repeats for k in METRICS):
            break
        for name, fn, model in (("ours", vit_ours, ours), ("hf", vit_hf, hf)):
            wait()
            with OtherLoad() as ol:
                dt = timed(fn, model, px, grid)[0]
            runs[f"vit_{name}"].append((dt, ol.cores))
            log(f"vit_{name} {dt:.3f} s (other load {ol.cores:.2f})")
        for name, run, model in (("ours", run_ours, ours), ("hf", run_hf, hf)):
            wait()
            with OtherLoad() as ol:
                t0, times, tk = run(model, ids, px, grid, args.new_tokens)
            assert len(times) == args.new_tokens, f"{name} produced {len(times)} tokens"
            runs[f"ttft_{name}"].append((times[0] - t0, ol.cores))
            runs[f"dec_{name}"].append((n_dec / (times[-1] - times[0]), ol.cores))
            toks[name] = tk
            log(f"{name}: ttft {times[0] - t0:.3f} s, decode {n_dec / (times[-1] - times[0]):.3f} tok/s "
                f"(other load {ol.cores:.2f})")
    med = {k: statistics.median(quiet(k) or [v for v, _ in runs[k]]) for k in METRICS}
    n_quiet = {k: len(quiet(k)) for k in METRICS}
    pairs = enumerate(zip(toks["ours"], toks["hf"], strict=True))
    same = next((i for i, (a, b) in pairs if a != b), len(toks["ours"]))

    dec_bytes = lm_decode_bytes(ours)
    roof_dec = bw["roofline"] * 1e9 / dec_bytes
    from qwenvl.model.vision import window_index

    cu_win = window_index([grid], 2, ours.cfg.vision.window_size // 28)[1]
    vflops = vit_flops(ours.cfg, grid, (cu_win[1:] - cu_win[:-1]).tolist())
    roof_vit = vflops / (gflops * 1e9)
    roof_ttft = roof_vit + prefill_flops(ours.cfg, len(ids)) / (gflops * 1e9)

    print(f"\n## Core benchmark ({info['date']})\n")
    print(f"- CPU: {info['cpu']} ({info['isa']}), {info['logical_cpus']} logical CPUs, "
          f"torch threads {info['torch_threads']}; torch {info['torch']}, transformers {info['transformers']}, "
          f"Python {info['python']}")
    print(f"- checkpoint: {args.ckpt} ({sum(p.numel() for p in ours.parameters()) / 1e9:.3f} B params, bf16); "
          f"load: ours {t_load:.1f} s, transformers {t_load_hf:.1f} s")
    print(f"- input: 448x448 image -> pixel_values {list(px.shape)} grid {grid} ({px_src}), "
          f"{n_img} image tokens, prompt {len(ids)} tokens; {args.new_tokens} greedy new tokens; "
          f"median of quiet runs (other load <= {QUIET} cores) after 1 warm-up; waited {wait.waited:.0f} s for quiet "
          f"windows; other load during bandwidth / GEMM runs {ol_bw.cores:.2f} / {ol_gemm.cores:.2f} cores; "
          "quiet runs per metric: "
          + ", ".join(f"{k} {n}/{len(runs[k])}" for k, n in n_quiet.items()))
    print(f"- measured bandwidth (GB/s, 1 GiB, best of 7): fp32 sum {bw['sum']:.1f}, fp32 dot {bw['dot']:.1f}, "
          f"copy (read+write) {bw['copy']:.1f}, bf16 GEMV stack {bw['gemv']:.1f} -> roofline uses "
          f"{bw['roofline']:.1f}; bf16 GEMM {gflops:.0f} GFLOP/s (4096^3, best of 5)")
    print(f"- decode reads {dec_bytes / 1e9:.3f} GB of weights per token; ViT {vflops / 1e12:.3f} TFLOP; "
          f"prefill {prefill_flops(ours.cfg, len(ids)) / 1e12:.3f} TFLOP")
    print(f"- sanity: ViT features finite={finite}, rel. L2 diff ours vs transformers {vit_rel:.2e}; "
          f"greedy tokens identical for the first {same}/{args.new_tokens}\n")
    print("| metric | ours | transformers | ours/transformers | roofline | ours % of roofline |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [("ViT encode (s, lower is better)", med["vit_ours"], med["vit_hf"], roof_vit, False),
            ("TTFT: vision + prefill + 1st token (s)", med["ttft_ours"], med["ttft_hf"], roof_ttft, False),
            (f"decode tok/s ({n_dec} steps, higher is better)", med["dec_ours"], med["dec_hf"], roof_dec, True)]
    for name, o, h, r, higher in rows:
        pct = 100 * (o / r if higher else r / o)
        print(f"| {name} | {fmt(o)} | {fmt(h)} | {fmt(o / h)} | {fmt(r)} | {pct:.0f}% |")
    best = {k: (max if k.startswith("dec") else min)(quiet(k) or [v for v, _ in runs[k]]) for k in METRICS}
    print("\nThe same, best quiet run instead of the median (host-level noise, e.g. memory-bandwidth contention "
          "from other VMs, is invisible to the load check):\n")
    print("| metric | ours | transformers | ours/transformers |\n|---|---:|---:|---:|")
    for name, key in (("ViT encode (s)", "vit"), ("TTFT (s)", "ttft"), ("decode tok/s", "dec")):
        o, h = best[f"{key}_ours"], best[f"{key}_hf"]
        print(f"| {name} | {fmt(o)} | {fmt(h)} | {fmt(o / h)} |")
    print("\nraw runs, value (other load in cores): " + "; ".join(
        f"{k} " + ", ".join(f"{v:.3f} ({load:.2f})" for v, load in runs[k]) for k in METRICS))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(info=info, bw=bw, gflops=gflops, runs=runs, median=med,
                                                    dec_bytes=dec_bytes, vit_flops=vflops), indent=1))
    if args.profile:
        wait()
        profile_all(ours, hf, ids, px, grid, wait)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the qwenvl next to bench/
    main()
