"""Issue 8's engine table in one run: ours (auto, bf16, fp32, int8, int4) beside transformers (bf16, fp32)
and llama.cpp (BF16, Q8_0), each row beside the limit measured in the same run.

    python bench/bench_engine.py [--ckpt /tmp/qwenvl-bench/qwen2_5_vl_1p5b] [--llama-python /tmp/llvenv/bin/python]
                                 [--rows ours-bf16,ours-int8,...] [--json OUT]      # ~25 min on 2 quiet cores

Workloads (2.2B bench checkpoint, bench/make_bench_checkpoint.py; greedy; best of --repeats after a warm-up):
  vit       one 448x448 image (grid 1x32x32, 256 image tokens): ours model.encode_images, transformers
            get_image_features
  ttft      that image + ~20 text tokens (286 prompt tokens) -> first token; ours through the Engine
            (Engine.submit, vision cache off, a fresh prefix), transformers generate + a streamer
  decode    tok/s over 32 greedy steps after the first token, batch 1
  turn2     the second turn on the same image (turn 1's prompt + its 33 answer tokens + a new question):
            TTFT with the engine's caches (vision features and the finished slot's KV are reused)
  batch8    8 prompts, images with patch grids 32x32 24x40 40x24 28x28 16x48 32x24 20x20 36x32 (6,816
            patches), 32 new tokens each, submitted together: wall time to the last token; transformers:
            one left-padded generate
  conc16    16 text prompts of 24 tokens submitted together, 32 new tokens each: aggregate decode tok/s from
            the moment all 16 have their first token to the last token
  tiny      the shipped default model (qwenvl/assets/qwenvl-tiny), one text prompt, 64 greedy tokens: decode
            tok/s, ours (Engine) against transformers generate on the same weights and dtype

Limits (measured here, in this run): bandwidth = best of 1 GiB fp32 sum / dot / copy / bf16 GEMV stack
(rooflines.measure_bandwidth); GEMM rate of the row's compute dtype (4096^3, bf16 or fp32). decode limit =
bandwidth / weight bytes read per token in the row's format; ViT / TTFT limit = analytic FLOPs / GEMM rate;
batch8 limit = (ViT + prefill FLOPs) / GEMM rate + 31 decode steps x bytes / bandwidth.
llama.cpp runs in its own interpreter (bench/llama_cpp_runner.py; llama-cpp-python built from source)
on GGUFs converted from the same checkpoint by the converter shipped in that source.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_core import DEFAULT_CKPT, IMG, VE, VS, bench_image, prompt_ids, rope_spec, run_hf, vit_hf
from bench_images import gradient_image
from rooflines import (
    OtherLoad,
    QuietWaiter,
    lm_decode_bytes,
    machine_info,
    measure_bandwidth,
    measure_gemm,
    prefill_flops,
    vit_flops,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "qwenvl" / "assets" / "qwenvl-tiny"
BATCH8_GRIDS = [(32, 32), (24, 40), (40, 24), (28, 28), (16, 48), (32, 24), (20, 20), (36, 32)]
OURS = ("ours-bf16", "ours-fp32", "ours-int8", "ours-int4", "ours-auto")  # auto last: it may alias one
HF = ("hf-bf16", "hf-fp32")
LLAMA = ("llama-BF16", "llama-Q8_0")
# rows without a limit of their own take the one of ours in the same format (llama.cpp's Q8_0 stores
# 8.5 bits per weight against our int8's 8 + a scale per row: its limit is ~6% generous to it)
LIMIT_FROM = {"hf-bf16": "ours-bf16", "hf-fp32": "ours-fp32", "llama-BF16": "ours-bf16", "llama-Q8_0": "ours-int8"}
NEW = 33  # new tokens: 1 from the prefill + 32 decode steps
IM_START, IM_END, NL, USER, ASSISTANT = 151644, 151645, 198, 872, 77091


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_of(h: int, w: int, seed: int):
    """The gradient image of h x w patches (14 px each)."""
    return gradient_image(14 * w, 14 * h, seed)


def pixels(img) -> tuple[torch.Tensor, tuple[int, int, int]]:
    from qwenvl.processing.image import ImageProcessorConfig, process_image

    px, grid = process_image(img, ImageProcessorConfig())
    return px, tuple(grid)


def inputs(model, ids: list[int], images: list[tuple[torch.Tensor, tuple]]):
    from qwenvl.inputs import ModelInputs
    from qwenvl.processing.positions import mrope_positions

    grids = [g for _, g in images]
    pos, delta = mrope_positions(ids, rope_spec(model.cfg), grids)
    px = torch.cat([p for p, _ in images]) if images else None
    return ModelInputs(ids, pos, delta, image_pixels=px, image_grid=grids)


def words(seed: int, n: int) -> list[int]:
    """n fixed pseudo-random text token ids (the bench weights are random: only lengths matter)."""
    return np.random.default_rng(seed).integers(1000, 100000, n).tolist()


def chat(body: list[int]) -> list[int]:
    """<|im_start|>user\n body <|im_end|>\n<|im_start|>assistant\n"""
    return [IM_START, USER, NL, *body, IM_END, NL, IM_START, ASSISTANT, NL]


def text_prompt(seed: int, n: int = 24) -> list[int]:
    return chat(words(seed, n - 8))


def image_prompt(n_img: int, seed: int = 0) -> list[int]:
    return chat([VS] + [IMG] * n_img + [VE] + words(seed, 8))


def best(xs: list[float], higher: bool) -> float:
    return max(xs) if higher else min(xs)


# ----------------------------------------------------------------------------------------------
# ours


def row_dtype(row: str) -> torch.dtype:
    """The float dtype a row computes in: int8 / int4 rows keep the rest of the model (ViT, norms, the
    dequantized GEMMs) in the auto dtype, as qwenvl.load(quantize=...) does."""
    from qwenvl.engine.precision import auto_dtype

    kind = row.removeprefix("ours-").removeprefix("hf-").removesuffix("+compile")
    return {"bf16": torch.bfloat16, "fp32": torch.float32}.get(kind) or auto_dtype("cpu")[0]


def load_ours(ckpt: str, row: str):
    from qwenvl.engine.quant import quantize_model
    from qwenvl.pipeline import auto_storage
    from qwenvl.weights import load_model

    kind = row.removeprefix("ours-").removesuffix("+compile")
    dtype = row_dtype(row)
    model = load_model(ckpt, dtype)
    if kind == "auto":  # what qwenvl.load(dtype="auto") does: maybe bf16 weights under fp32 compute
        kind = auto_storage(ckpt, dtype) or kind
    if kind in ("int8", "int4", "bf16"):
        quantize_model(model, kind)
    return model.eval(), dtype


def run_engine(engine, inps, params) -> tuple[list, float, float]:
    """Submit all, step to the end. (generations, wall seconds, time when every request had its first
    token, relative to the submit)."""
    t0 = time.perf_counter()
    handles = [engine.submit(i, params) for i in inps]
    all_first = None
    while engine.busy:
        engine.step()
        if all_first is None and all(h.request.out.token_ids or h.done for h in handles):
            all_first = time.perf_counter() - t0
    return [h.result() for h in handles], time.perf_counter() - t0, all_first


def measure_ours(model, dtype, repeats: int, wait, compile: bool = False) -> dict:
    from qwenvl.engine.engine import Engine
    from qwenvl.engine.sampling import SamplingParams

    greedy = SamplingParams(max_new_tokens=NEW)
    px, grid = pixels(bench_image())
    ids = prompt_ids(grid[1] * grid[2] // 4)
    out: dict = {k: [] for k in ("vit", "ttft", "decode", "turn2", "batch8", "conc16_agg", "batch1_decode")}
    with torch.no_grad():
        model.encode_images(px, [grid])  # warm-up
        for _ in range(repeats):
            wait()
            t0 = time.perf_counter()
            model.encode_images(px, [grid])
            out["vit"].append(time.perf_counter() - t0)
    for r in range(repeats + 1):  # the first round warms up
        eng = Engine(model, n_slots=2, max_len=1024, vision_cache_bytes=256 << 20, compile=compile)
        wait()
        # TTFT = the call's wall time less the decode after the first token (so it includes building
        # the positions, as transformers' generate does inside)
        t0 = time.perf_counter()
        g1 = eng.generate(inputs(model, ids, [(px, grid)]), greedy)
        ttft1 = time.perf_counter() - t0 - g1.decode_seconds
        follow = ids + g1.token_ids + [IM_END, NL] + chat(words(7, 12))
        t0 = time.perf_counter()
        g2 = eng.generate(inputs(model, follow, [(px, grid)]), SamplingParams(max_new_tokens=2))
        ttft2 = time.perf_counter() - t0 - g2.decode_seconds
        if r:
            out["ttft"].append(ttft1)
            out["decode"].append((NEW - 1) / g1.decode_seconds)
            out["turn2"].append(ttft2)
        out["turn2_stats"] = eng.stats
    images = [pixels(image_of(h, w, i)) for i, (h, w) in enumerate(BATCH8_GRIDS)]
    assert [g[1:] for _, g in images] == BATCH8_GRIDS, [g for _, g in images]
    batch = [inputs(model, image_prompt(g[1] * g[2] // 4, i), [(p, g)]) for i, (p, g) in enumerate(images)]
    texts = [inputs(model, text_prompt(100 + i), []) for i in range(16)]
    for r in range(repeats + compile):  # compiled: a first round compiles the batched graph
        eng = Engine(model, n_slots=16, max_len=512, vision_cache_bytes=0, prefix_cache=False, compile=compile)
        wait()
        gens, wall, _ = run_engine(eng, batch, greedy)
        assert all(len(g.token_ids) == NEW for g in gens)
        wait()
        _, wall16, first16 = run_engine(eng, texts, greedy)
        wait()
        _, wall1, first1 = run_engine(eng, texts[:1], greedy)
        if r >= compile:
            out["batch8"].append(wall)
            out["conc16_agg"].append(16 * (NEW - 1) / (wall16 - first16))
            out["batch1_decode"].append((NEW - 1) / (wall1 - first1))
    out["batch8_prompt_tokens"] = sum(len(b.input_ids) for b in batch)
    return out


# ----------------------------------------------------------------------------------------------
# transformers


def measure_hf(ckpt: str, dtype: torch.dtype, repeats: int, wait) -> dict:
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa").eval()
    px, grid = pixels(bench_image())
    ids = prompt_ids(grid[1] * grid[2] // 4)
    out: dict = {"vit": [], "ttft": [], "decode": [], "batch8": []}
    vit_hf(hf, px, grid)
    run_hf(hf, ids, px, grid, 3)
    for _ in range(repeats):
        wait()
        t0 = time.perf_counter()
        vit_hf(hf, px, grid)
        out["vit"].append(time.perf_counter() - t0)
        wait()
        t0, times, _ = run_hf(hf, ids, px, grid, NEW)
        out["ttft"].append(times[0] - t0)
        out["decode"].append((NEW - 1) / (times[-1] - times[0]))
    # batch 8: one left-padded generate
    images = [pixels(image_of(h, w, i)) for i, (h, w) in enumerate(BATCH8_GRIDS)]
    prompts = [image_prompt(g[1] * g[2] // 4, i) for i, (_, g) in enumerate(images)]
    t = max(map(len, prompts))
    ids_t = torch.tensor([[151643] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    pv = torch.cat([p for p, _ in images])
    grids = torch.tensor([g for _, g in images])
    for _ in range(1 if dtype == torch.float32 else repeats):
        wait()
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(input_ids=ids_t, attention_mask=mask, pixel_values=pv, image_grid_thw=grids,
                        mm_token_type_ids=(ids_t == IMG).int(), max_new_tokens=NEW, min_new_tokens=NEW,
                        do_sample=False, pad_token_id=151643)
        out["batch8"].append(time.perf_counter() - t0)
    del hf
    return out


# ----------------------------------------------------------------------------------------------
# the tiny default model


def measure_tiny(repeats: int, wait, compile: bool = False) -> dict:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from qwenvl.engine.engine import Engine
    from qwenvl.engine.precision import auto_dtype
    from qwenvl.engine.quant import quantize_model
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.pipeline import auto_storage
    from qwenvl.weights import load_model

    dtype = auto_dtype("cpu")[0]
    ours = load_model(TINY, dtype).eval()
    storage = auto_storage(TINY, dtype)  # as qwenvl.load(dtype="auto"): maybe bf16 weights under fp32 compute
    if storage:
        quantize_model(ours, storage)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(TINY, dtype=dtype, attn_implementation="sdpa").eval()
    ids = [t % ours.cfg.text.vocab_size for t in text_prompt(3)]
    inp = inputs(ours, ids, [])
    n = 64
    out: dict = {"dtype": str(dtype), "storage": storage, "compile": compile, "ours": [], "hf": []}
    ids_t = torch.tensor([ids])

    def hf_generate(k: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=k, min_new_tokens=k,
                        do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    for r in range(repeats + 1):  # the first round warms up
        wait()
        eng = Engine(ours, n_slots=1, max_len=len(ids) + n, compile=compile)
        g = eng.generate(inp, SamplingParams(max_new_tokens=n))
        wait()
        t_1, t_n = hf_generate(1), hf_generate(n)  # decode = the n - 1 steps after the first token
        if r:
            out["ours"].append((len(g.token_ids) - 1) / g.decode_seconds)
            out["hf"].append((n - 1) / (t_n - t_1))
    return out


# ----------------------------------------------------------------------------------------------


def limits(model, bw: float, rates: dict, dtype: torch.dtype, dec_bytes: int) -> dict:
    from qwenvl.model.vision import window_index

    def vit(grid):
        cu = window_index([grid], 2, model.cfg.vision.window_size // 28)[1]
        return vit_flops(model.cfg, grid, (cu[1:] - cu[:-1]).tolist())

    rate = rates[dtype] * 1e9
    px, grid = pixels(bench_image())
    ids = prompt_ids(grid[1] * grid[2] // 4)
    grids = [(1, h, w) for h, w in BATCH8_GRIDS]
    b8_flops = sum(vit(g) + prefill_flops(model.cfg, len(image_prompt(g[1] * g[2] // 4))) for g in grids)
    return {"vit": vit(grid) / rate, "ttft": (vit(grid) + prefill_flops(model.cfg, len(ids))) / rate,
            "decode": bw * 1e9 / dec_bytes, "batch8": b8_flops / rate + (NEW - 1) * dec_bytes / (bw * 1e9),
            "dec_bytes": dec_bytes}


def decode_bytes(model) -> int:
    """Weight bytes one decode token reads, in the format stored (quantized decoders: their int8 / int4
    buffers + the float norms and biases)."""
    rep = getattr(model, "quantized", None)
    if not rep:
        return lm_decode_bytes(model)
    small = sum(p.numel() * p.element_size() for n, p in model.model.named_parameters()
                if not n.startswith("embed_tokens"))  # what stayed float: norms (biases are buffers now)
    small += sum(b.numel() * b.element_size() for n, b in model.model.named_buffers() if n.endswith(".bias"))
    return rep["decoder"]["quant_bytes"] + rep["lm_head"]["quant_bytes"] + small


def run_llama(python: str, ckpt: str, repeats: int) -> dict:
    cmd = [python, str(ROOT / "bench" / "llama_cpp_runner.py"), "--ckpt", ckpt, "--work", "/tmp/llama-bench",
           "--threads", str(torch.get_num_threads()), "--new-tokens", str(NEW), "--repeats", str(repeats)]
    log("llama.cpp: " + " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt(x, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=DEFAULT_CKPT)
    ap.add_argument("--rows", default=",".join(OURS + HF + LLAMA + ("tiny", "tiny+compile")),
                    help="comma-separated; an ours-* or tiny row + '+compile' runs Engine(compile=True)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-python", default="/tmp/llvenv/bin/python")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = args.rows.split(",")
    from qwenvl.engine.cpu_kernels import tiled_gemv
    from qwenvl.engine.precision import auto_dtype
    from qwenvl.pipeline import auto_storage

    info = machine_info()
    wait = QuietWaiter(600, per_call=20)
    wait()
    with OtherLoad() as ol:
        bw = measure_bandwidth()
        # only the dtypes the rows compute in: emulated bf16 (no avx512_bf16 / AMX) runs a 4096^3 GEMM for minutes
        used = sorted({row_dtype(r) for r in rows if r.startswith(("ours-", "hf-"))}, key=str)
        rates = {dt: measure_gemm(dtype=dt) for dt in used}
    log(f"bandwidth {bw}, GEMM " + ", ".join(f"{dt} {v:.0f}" for dt, v in rates.items()) +
        f" GFLOP/s (other load {ol.cores:.2f})")
    results: dict = {"info": info, "bandwidth": bw, "gemm": {str(k): v for k, v in rates.items()},
                     "auto": auto_dtype("cpu"), "int8_kernel": tiled_gemv()[1], "rows": {}}
    results["auto_storage"] = auto_storage(args.ckpt, results["auto"][0])  # "bf16": auto keeps bf16 weights
    same = {torch.bfloat16: "ours-bf16", torch.float32: "ours-fp32"}[results["auto"][0]]
    for row in rows:
        log(f"row {row}")
        if row == "ours-auto" and same in rows and not results["auto_storage"]:
            # auto is one of the explicit rows here (no bf16 storage under fp32 compute): measured there
            results["rows"][row] = {"same_as": same}
            continue
        if row.startswith("ours-"):
            model, dtype = load_ours(args.ckpt, row)
            dec_bytes = decode_bytes(model)
            res = measure_ours(model, dtype, args.repeats, wait, compile=row.endswith("+compile"))
            res["limit"] = limits(model, bw["roofline"], rates, dtype, dec_bytes)  # int8 / int4: the float rest
            del model
        elif row.startswith("hf-"):
            dtype = torch.float32 if row.endswith("fp32") else torch.bfloat16
            res = measure_hf(args.ckpt, dtype, args.repeats, wait)
        elif row.startswith("llama-"):
            if "llama" not in results:
                results["llama"] = run_llama(args.llama_python, args.ckpt, args.repeats)
            res = dict(results["llama"].get(row.removeprefix("llama-"), {"error": results["llama"].get("error")}))
            if "decode_image" in res:  # ours decodes after the image prompt: compare the same
                res["decode_text"], res["decode"] = res["decode"], res["decode_image"]
        elif row in ("tiny", "tiny+compile"):
            res = measure_tiny(args.repeats, wait, compile=row.endswith("+compile"))
        else:
            raise SystemExit(f"unknown row {row!r}")
        results["rows"][row] = res
        log(f"{row}: {json.dumps(res, default=str)[:600]}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print_table(results)


def print_table(results: dict) -> None:
    info, bw = results["info"], results["bandwidth"]
    print(f"\n## Engine table ({info['date']})\n")
    print(f"- CPU: {info['cpu']} ({info['isa']}), {info['logical_cpus']} logical CPUs, torch threads "
          f"{info['torch_threads']}; torch {info['torch']}, transformers {info['transformers']}")
    print(f"- measured: bandwidth {bw['roofline']:.1f} GB/s (sum {bw['sum']:.1f}, dot {bw['dot']:.1f}, copy "
          f"{bw['copy']:.1f}, bf16 GEMV {bw['gemv']:.1f}); GEMM " +
          ", ".join(f"{k.removeprefix('torch.')} {v:.0f}" for k, v in results["gemm"].items()) + " GFLOP/s")
    print(f"- auto dtype here: {results['auto']}, weights stored as {results.get('auto_storage') or 'the dtype'}; "
          f"tiled kernel: {results['int8_kernel']}\n")
    print("| row | ViT s (limit) | TTFT s (limit) | decode tok/s (limit, %) | 2nd-turn TTFT s (% of 1st) "
          "| batch-8 s (limit, %) | 16 concurrent tok/s (x batch-1) |")
    print("|---|---|---|---|---|---|---|")
    for row, r in results["rows"].items():
        if "same_as" in r:
            print(f"| {row} | = {r['same_as']} (what auto picks on this CPU) | | | | | |")
            continue
        if row.startswith("tiny") or "error" in r and len(r) == 1:
            continue
        lim = r.get("limit") or results["rows"].get(LIMIT_FROM.get(row, ""), {}).get("limit", {})
        vit, ttft = best(r["vit"], False) if r.get("vit") else None, best(r["ttft"], False) if r.get("ttft") else None
        dec = best(r["decode"], True) if r.get("decode") else None
        cell_v = f"{fmt(vit)} ({fmt(lim.get('vit'))})" if lim else fmt(vit)
        cell_t = f"{fmt(ttft)} ({fmt(lim.get('ttft'))})" if lim else fmt(ttft)
        cell_d = f"{fmt(dec)} ({fmt(lim['decode'])}, {100 * dec / lim['decode']:.0f}%)" if lim and dec else fmt(dec)
        t2 = best(r["turn2"], False) if r.get("turn2") else None
        cell_2 = f"{fmt(t2, 3)} ({100 * t2 / ttft:.0f}%)" if t2 and ttft else fmt(t2)
        b8 = best(r["batch8"], False) if r.get("batch8") else None
        cell_b = (f"{fmt(b8, 1)} ({fmt(lim['batch8'], 1)}, {100 * lim['batch8'] / b8:.0f}%)" if lim and b8
                  else fmt(b8, 1))
        c16 = best(r["conc16_agg"], True) if r.get("conc16_agg") else None
        cell_c = f"{fmt(c16, 1)} ({c16 / best(r['batch1_decode'], True):.1f}x)" if c16 else "-"
        print(f"| {row} | {cell_v} | {cell_t} | {cell_d} | {cell_2} | {cell_b} | {cell_c} |")
    for row in ("tiny", "tiny+compile"):
        tiny = results["rows"].get(row)
        if tiny:
            o, h = best(tiny["ours"], True), best(tiny["hf"], True)
            how = f"{tiny['dtype']}, weights {tiny.get('storage') or 'the same'}"
            print(f"\n{row}: the default model ({how}), 64 greedy tokens, batch 1: ours {o:.1f} tok/s, "
                  f"transformers generate {h:.1f} tok/s ({o / h:.1f}x)")
    for row, r in results["rows"].items():
        if "error" in r:
            print(f"\n{row}: {r['error']}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
