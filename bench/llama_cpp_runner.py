"""llama.cpp (llama-cpp-python) on the bench checkpoint: text prefill, decode, ViT encode, TTFT, 2nd-turn TTFT.

Run by an interpreter that has llama-cpp-python (built from source), not by the project's own:

    /tmp/llvenv/bin/python bench/llama_cpp_runner.py --ckpt /tmp/qwenvl-bench/qwen2_5_vl_1p5b \
        --work /tmp/llama-bench --threads 2 --new-tokens 33 --repeats 2

Prints progress to stderr and ONE JSON object on the last line of stdout (bench/bench_engine.py reads it).

Conversion (once, cached in --work, redone when the checkpoint changes): the converter shipped in the
llama-cpp-python source tarball (vendor/llama.cpp/convert_hf_to_gguf.py + its gguf-py) writes the text model
as BF16 and as Q8_0 (`--outtype bf16` / `--outtype q8_0`) and the vision tower + merger as an mmproj GGUF
(`--mmproj --outtype f16`; --mmproj-type bf16 / f32 for the others). The converter needs torch + transformers,
so it runs under --convert-python (an interpreter that has them, e.g. the system python), not under this one.
It reads the checkpoint through a folder of symlinks in --work (the checkpoint folder is never written to), to
which this script adds what the bench checkpoint lacks: a real Qwen2 tokenizer (tests/fixtures/qwen2_tokenizer.py
builds it offline from dashscope's qwen.tiktoken; the converter fingerprints the tokenizer and accepts it as
"qwen2") and a Qwen2.5-VL preprocessor_config.json. The converter imports sentencepiece unconditionally for
this architecture; if --convert-python lacks it, it is pip-installed into --work/convert_deps (not into that
env).

Measurements, per format (BF16, Q8_0), with llama_cpp.Llama(n_threads = n_threads_batch = --threads,
n_ctx 2048, n_batch 512; llama-cpp-python's default flash_attn=False), greedy (llama.cpp's greedy sampler),
one untimed warm-up round, then --repeats rounds; every timing is a list with one value per round:

  prefill      seconds of llm.eval() of a 286-token text prompt (ids 1000..1285; the bench weights are
               random, so only lengths matter)
  decode       tok/s = (new_tokens - 1) / (time the last new token was sampled - time the first was),
               one llm.eval([token]) per step after that prompt
  vit          seconds of mtmd_encode_chunk() on the 448x448 image (grid 1x32x32, 256 merged tokens):
               vision tower + merger only (the image is preprocessed by mtmd_tokenize() before it)
  ttft         seconds from the start to the first new token for bench_core's prompt: <|im_start|>user\\n
               <|vision_start|> image <|vision_end|> 20 text tokens <|im_end|>\\n<|im_start|>assistant\\n
               (286 tokens). Includes mtmd_tokenize() (image preprocessing), the ViT, decoding the image
               embeddings (mtmd_helper_decode_image_chunk) and the text around them, and the first sample.
  decode_image tok/s of the greedy answer that follows (same definition as decode)
  turn2        2nd-turn TTFT: after those new_tokens answer tokens, the last answer token + <|im_end|>\\n + a
               12-token question in the chat wrapper (23 tokens) are evaluated on top of the KV cache the
               llama_context still holds (image not re-encoded), to the first new token. Done by hand:
               llama-cpp-python's Qwen25VLChatHandler clears the KV cache on every call.

Before each timed round it waits (up to --quiet-wait s, --quiet-budget s in all) for a 1 s window with
<= 0.2 cores of other load, like bench/rooflines.QuietWaiter, and records the other load during each round
(other_load_text / other_load_image, in cores): llama.cpp's 2 spinning OpenMP threads slow down several-fold
when another process takes a core.

Weight buffers: this build has AMX_INT8 and ggml's AMX kernels take Q8_0 weights, but in this llama.cpp their
tile configuration can be compiled away, and the first multi-row Q8_0 matmul dies with SIGILL. --extra-bufts
auto (default) probes that in a child process and, if it crashes, loads every model with
llama_model_params.use_extra_bufts = False; on x86 that changes nothing else for BF16 / Q8_0 (ggml's repack
buffer has no layouts for them). The JSON records the choice and why (settings.use_extra_bufts[_why]).

The image is bench_core.bench_image() (bench/bench_images.py: 448x448 gradients + rng(0) noise of
std 20), saved as PNG in --work and read by mtmd_helper_bitmap_init_from_file (outside the timings).
The multimodal path is llama.cpp's libmtmd through llama_cpp.mtmd_cpp's ctypes bindings; if it fails, the
format's numbers carry "image_error" and the text-only numbers are still reported.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from bench_images import gradient_image  # numpy + PIL only, like load_meter
from load_meter import QUIET, OtherLoad, QuietWaiter  # bench/load_meter.py: standard library only

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = "/tmp/qwenvl-bench/qwen2_5_vl_1p5b"
DEFAULT_TARBALL = "/tmp/llsrc/llama_cpp_python-0.3.36.tar.gz"
FORMATS = {"BF16": "bf16", "Q8_0": "q8_0"}  # JSON key -> converter --outtype
MMPROJ_TYPES = ("f16", "bf16", "f32")  # converter --outtype for --mmproj; f16 (default) is what llama.cpp publishes
N_CTX, N_BATCH = 2048, 512

# token ids (Qwen2 vocabulary), as in bench/bench_core.py and bench/bench_engine.py
IM_START, IM_END, NL, USER, ASSISTANT = 151644, 151645, 198, 872, 77091
BENCH_TEXT = [74785, 279, 2168, 304, 7716, 13, 3555, 374, 279, 1887, 1894, 11, 323, 1128, 6171, 525, 1052, 30,
              21806, 13]  # bench_core.prompt_ids' ~20 text tokens
TEXT_PROMPT = list(range(1000, 1286))  # 286 ids, the length of the image prompt
IMAGE_PREFIX = [IM_START, USER, NL]  # then mtmd's chunks: <|vision_start|>, the image, <|vision_end|>
IMAGE_SUFFIX = BENCH_TEXT + [IM_END, NL, IM_START, ASSISTANT, NL]

# Qwen2.5-VL's published preprocessor_config.json (the converter reads the mean/std from it)
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] llama_cpp_runner: {msg}", file=sys.stderr, flush=True)


def words(seed: int, n: int) -> list[int]:
    """bench_engine.words: n fixed pseudo-random text ids."""
    return np.random.default_rng(seed).integers(1000, 100000, n).tolist()


def chat(body: list[int]) -> list[int]:
    return [IM_START, USER, NL, *body, IM_END, NL, IM_START, ASSISTANT, NL]


FOLLOW_UP = [IM_END, NL] + chat(words(7, 12))  # bench_engine's turn-2 question, after turn 1's answer


def stats(xs: list[float], higher_is_better: bool) -> dict[str, float] | None:
    if not xs:
        return None
    return {"best": max(xs) if higher_is_better else min(xs), "median": statistics.median(xs)}


# ----------------------------------------------------------------------------------------------
# conversion


def converter_dir(work: Path, tarball: Path) -> Path:
    """vendor/llama.cpp of the source tarball (the converter, its conversion/ package and gguf-py)."""
    dest = work / "src"
    conv = dest / "vendor" / "llama.cpp"
    if (conv / "convert_hf_to_gguf.py").is_file() and (conv / ".complete").is_file():
        return conv
    log(f"extracting the converter from {tarball}")
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(tarball) as tf:
        members = []
        for m in tf.getmembers():
            parts = m.name.split("/", 1)  # drop the top folder (llama_cpp_python-X.Y.Z/)
            if len(parts) == 2 and parts[1].startswith("vendor/llama.cpp/"):
                rel = parts[1].removeprefix("vendor/llama.cpp/")
                if any(rel == w or rel.startswith(w) for w in wanted):
                    m.name = parts[1]
                    members.append(m)
        tf.extractall(dest, members=members, filter="data")
    (conv / ".complete").touch()
    return conv


def pick_convert_python(explicit: str | None) -> str:
    """An interpreter with torch + transformers (the converter needs both); this one usually has neither."""
    candidates = [explicit] if explicit else [shutil.which("python3"), shutil.which("python"), sys.executable]
    for exe in candidates:
        if not exe:
            continue
        res = subprocess.run([exe, "-c", "import sys, torch, transformers; print(sys.executable)"],
                             capture_output=True, text=True)
        if res.returncode == 0:
            return res.stdout.strip() or exe  # the real interpreter, not a pyenv shim
    raise RuntimeError(f"no interpreter with torch + transformers for the converter among {candidates}; "
                       "pass --convert-python")


def converter_env(py: str, work: Path, conv: Path) -> tuple[dict[str, str], str]:
    """PYTHONPATH for the converter: its own gguf-py, plus sentencepiece (pip-installed into --work if needed:
    Qwen2VLModel.set_vocab tries the sentencepiece vocab first and imports the module before looking for
    tokenizer.model, so a missing module is an ImportError it does not catch)."""
    paths = [str(conv / "gguf-py")]
    note = "sentencepiece from the converter interpreter"
    if subprocess.run([py, "-c", "import sentencepiece"], capture_output=True).returncode != 0:
        deps = work / "convert_deps"
        if subprocess.run([py, "-c", "import sentencepiece"], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(deps)}).returncode != 0:
            log(f"pip-installing sentencepiece into {deps} (converter dependency)")
            subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                            "--target", str(deps), "sentencepiece>=0.1.98,<0.3.0"], check=True)
        paths.append(str(deps))
        note = f"sentencepiece pip-installed into {deps}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return env, note


def checkpoint_key(ckpt: Path) -> str:
    """Identity of the checkpoint: its config, index and the shards' sizes and mtimes."""
    h = hashlib.sha256()
    for p in sorted(ckpt.iterdir()):
        if p.suffix == ".json":
            h.update(p.name.encode() + p.read_bytes())
        elif p.suffix == ".safetensors":
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare_input(ckpt: Path, folder: Path, py: str) -> str:
    """A converter input folder: symlinks to the checkpoint's files + the tokenizer / preprocessor files it
    lacks. Returns how the tokenizer was obtained."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for p in ckpt.iterdir():
        (folder / p.name).symlink_to(p.resolve())
    if not (folder / "preprocessor_config.json").exists():
        (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=1))
    if any((folder / f).exists() for f in TOKENIZER_FILES):
        return "the checkpoint's own tokenizer files"
    # The bench checkpoint has no tokenizer. Build the real Qwen2 one offline (151,643 BPE ranks from
    # dashscope's qwen.tiktoken + the Qwen2-VL added tokens at 151643..151656); vocab_size 151936 pads the rest.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from qwen2_tokenizer import write_qwen2_tokenizer; "
            "write_qwen2_tokenizer(sys.argv[2])")
    res = subprocess.run([py, "-c", code, str(ROOT / "tests" / "fixtures"), str(folder)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("the checkpoint has no tokenizer and tests/fixtures/qwen2_tokenizer.py could not build "
                           f"one (needs dashscope + tokenizers in {py}): {res.stderr.strip().splitlines()[-1:]}")
    return "real Qwen2 tokenizer built offline by tests/fixtures/qwen2_tokenizer.py (dashscope's qwen.tiktoken)"


def convert_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write (or reuse) the three GGUFs; returns paths, sizes and how they were made."""
    ckpt = Path(args.ckpt).resolve()
    if not (ckpt / "config.json").is_file():
        raise RuntimeError(f"{ckpt} has no config.json (write it with bench/make_bench_checkpoint.py)")
    outs = {name: work / f"qwen25vl-text-{t}.gguf" for name, t in FORMATS.items()}
    outs["mmproj"] = work / f"qwen25vl-mmproj-{args.mmproj_type}.gguf"
    manifest_path = work / "manifest.json"
    key = checkpoint_key(ckpt)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("key") != key:
        manifest = {"key": key, "ckpt": str(ckpt), "seconds": {}}
        for p in work.glob("qwen25vl-*.gguf"):  # made from another checkpoint
            p.unlink()
    todo = [name for name, p in outs.items() if not p.is_file()]
    if todo:
        conv = converter_dir(work, Path(args.src_tarball))
        py = pick_convert_python(args.convert_python)
        env, deps_note = converter_env(py, work, conv)
        folder = work / "hf_input" / ckpt.name  # the converter names the model after its folder
        manifest.update(tokenizer=prepare_input(ckpt, folder, py), convert_python=py, deps=deps_note,
                        converter=str(Path(args.src_tarball).name) + ":vendor/llama.cpp/convert_hf_to_gguf.py")
        for name in todo:
            outtype = args.mmproj_type if name == "mmproj" else FORMATS[name]
            flags = ["--mmproj"] if name == "mmproj" else []
            partial = outs[name].with_suffix(".partial.gguf")
            # write into a scratch folder and move the single file produced: a half-written GGUF never sits
            # under the final name (and the name is ours even if a converter version renames mmproj outputs)
            scratch = work / f"convert-{name}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            cmd = [py, str(conv / "convert_hf_to_gguf.py"), *flags, "--outtype", outtype,
                   "--outfile", str(scratch / partial.name), str(folder)]
            log(f"converting {name}: {' '.join(cmd)}")
            t0 = time.perf_counter()
            with open(work / f"convert-{name}.log", "w") as logf:
                res = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
            if res.returncode != 0:
                raise RuntimeError(f"converter failed for {name} (rc {res.returncode}); "
                                   f"see {work / f'convert-{name}.log'}")
            made = list(scratch.glob("*.gguf"))
            if len(made) != 1:
                raise RuntimeError(f"converter wrote {[p.name for p in made]} for {name}, expected one file")
            os.replace(made[0], outs[name])
            shutil.rmtree(scratch)
            manifest["seconds"][name] = round(time.perf_counter() - t0, 1)
            manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return {
        "paths": {k: str(p) for k, p in outs.items()},
        "bytes": {k: p.stat().st_size for k, p in outs.items()},
        "convert_seconds": manifest.get("seconds", {}),
        "reused_cached": not todo,
        "tokenizer": manifest.get("tokenizer"),
        "convert_python": manifest.get("convert_python"),
        "converter": manifest.get("converter"),
        "converter_deps": manifest.get("deps"),
    }


# ----------------------------------------------------------------------------------------------
# the image


def bench_image(path: Path) -> Path:
    """bench_core.bench_image() as a PNG (lossless, so mtmd sees exactly these pixels)."""
    gradient_image(448, 448).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# timing


def load_llama(model_path: str, threads: int, extra_bufts: bool = True):
    """llama_cpp.Llama as the bench loads it; extra_bufts=False sets llama_model_params.use_extra_bufts = False
    (Llama() has no argument for it, so its default-params call is wrapped while it loads)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    kwargs = dict(model_path=model_path, n_threads=threads, n_threads_batch=threads, n_ctx=N_CTX, n_batch=N_BATCH,
                  verbose=False)
    if extra_bufts:
        return llama_cpp.Llama(**kwargs)
    orig = lc.llama_model_default_params

    def no_extra_bufts():
        params = orig()
        params.use_extra_bufts = False
        return params

    lc.llama_model_default_params = no_extra_bufts
    try:
        return llama_cpp.Llama(**kwargs)
    finally:
        lc.llama_model_default_params = orig


def probe_main(model_path: str, threads: int) -> None:
    """--probe: a 64-token prefill + 2 decode steps with the default weight buffers (exit 0 = it works)."""
    llm = load_llama(model_path, threads)
    llm.eval(list(range(1000, 1064)))
    llm.eval([1064])
    llm.eval([1065])
    llm.close()


def choose_extra_bufts(system_info: str, q8_path: str, threads: int, mode: str) -> tuple[bool, str]:
    """Whether to load weights into ggml's extra buffer types (AMX, repack).

    ggml's AMX int8 kernels take Q8_0 weights when the build has AMX_INT8; in this llama.cpp, GCC can drop the
    tile configuration that ggml_tile_config_init() builds on the stack, so the first multi-row Q8_0 matmul
    dies with SIGILL in ggml_backend_amx_mul_mat (tileloadd on unconfigured tiles; llama.cpp PR #26954).
    "auto" probes that in a child process and turns the extra buffers off if it crashes. On x86 that only
    drops AMX: ggml's repack buffer has no BF16 or Q8_0 layouts there, and the mmproj (f16) never uses them.
    """
    if mode != "auto":
        return mode == "on", f"--extra-bufts {mode}"
    if "AMX_INT8 = 1" not in system_info:
        return True, "default (build has no AMX_INT8)"
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", q8_path, "--threads", str(threads)],
                         capture_output=True, text=True)
    if res.returncode == 0:
        return True, "default (AMX_INT8 build; a Q8_0 prefill probe with AMX ran fine)"
    how = f"signal {-res.returncode}" if res.returncode < 0 else f"rc {res.returncode}"
    if res.returncode == -4:
        how = "SIGILL, the AMX tile-config bug"
    return False, (f"off: with the default buffers a Q8_0 prefill probe died ({how}), so weights are loaded with "
                   "use_extra_bufts=False (plain CPU buffers, no AMX)")


class Runner:
    """One loaded text model (+ its mtmd context), greedy, timing helpers."""

    def __init__(self, model_path: str, mmproj_path: str, threads: int, extra_bufts: bool = True):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self.lc, self.mtmd = llama_cpp, mtmd
        t0 = time.perf_counter()
        self.llm = load_llama(model_path, threads, extra_bufts)
        self.load_s = time.perf_counter() - t0
        self.flash_attn = self.llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.greedy = llama_cpp.llama_sampler_init_greedy()
        self.mctx = None
        self.mmproj_path, self.threads = mmproj_path, threads
        self.mmproj_load_s: float | None = None

    def sample(self) -> int:
        """Greedy over the last evaluated position's logits (llama.cpp's own sampler)."""
        return self.lc.llama_sampler_sample(self.greedy, self.llm.ctx, -1)

    def clear(self) -> None:
        self.llm.reset()  # n_tokens = 0
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.llm.ctx), True)

    def decode(self, tok: int, n: int) -> tuple[list[int], list[float]]:
        """n greedy steps after `tok` was sampled: returns the new tokens and the time each was sampled."""
        toks, times = [], []
        for _ in range(n):
            self.llm.eval([tok])
            tok = self.sample()
            toks.append(tok)
            times.append(time.perf_counter())
        return toks, times

    def text_round(self, prompt: list[int], new_tokens: int) -> dict[str, Any]:
        self.clear()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        t_prefill = time.perf_counter()
        tok = self.sample()
        t_first = time.perf_counter()
        _, times = self.decode(tok, new_tokens - 1)
        return {"prefill": t_prefill - t0, "ttft_text": t_first - t0,
                "decode": (new_tokens - 1) / (times[-1] - t_first) if new_tokens > 1 else None}

    # -- multimodal (libmtmd) -------------------------------------------------------------------

    def init_mtmd(self) -> None:
        if self.mctx is not None:
            return
        mtmd = self.mtmd
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = self.threads
        params.flash_attn_type = (self.lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                  else self.lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)  # as the chat handler does
        # params.warmup stays at its default (True): it only reserves compute buffers (for a 1288 px image),
        # no encode; our untimed warm-up round does a real encode of the measured image
        t0 = time.perf_counter()
        self.mctx = mtmd.mtmd_init_from_file(self.mmproj_path.encode(), self.llm.model, params)
        self.mmproj_load_s = time.perf_counter() - t0
        if not self.mctx:
            self.mctx = None
            raise RuntimeError(f"mtmd_init_from_file failed for {self.mmproj_path}")
        if not mtmd.mtmd_support_vision(self.mctx):
            raise RuntimeError("the mmproj has no vision encoder")

    def load_bitmap(self, image: Path):
        bitmap = self.mtmd.mtmd_helper_bitmap_init_from_file(self.mctx, str(image).encode(), False)
        if not bitmap:
            raise RuntimeError(f"mtmd could not load {image}")
        return bitmap

    def image_round(self, bitmap, new_tokens: int) -> dict[str, Any]:
        """TTFT for image + text, the answer's decode rate, then the 2nd-turn TTFT on the kept KV cache."""
        mtmd, llm = self.mtmd, self.llm
        self.clear()
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        # mtmd_tokenize preprocesses the image (resize to a multiple of 28, normalise, patchify) and splits
        # the marker into chunks: text "<|vision_start|>", the image, text "<|vision_end|>"
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd.mtmd_tokenize(self.mctx, chunks, ctypes.byref(text), bitmaps, 1)
            if rc != 0:
                raise RuntimeError(f"mtmd_tokenize returned {rc}")
            out["preprocess"] = time.perf_counter() - t0
            llm.eval(IMAGE_PREFIX)
            layout = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                kind = mtmd.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    toks = [ptr[j] for j in range(n.value)]
                    layout.append(toks)
                    llm.eval(toks)
                elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    img_tokens = mtmd.mtmd_input_chunk_get_tokens_image(chunk)
                    layout.append({"image_tokens": mtmd.mtmd_input_chunk_get_n_tokens(chunk),
                                   "nx": mtmd.mtmd_image_tokens_get_nx(img_tokens),
                                   "ny": mtmd.mtmd_image_tokens_get_ny(img_tokens),
                                   "n_pos": mtmd.mtmd_input_chunk_get_n_pos(chunk)})
                    te = time.perf_counter()
                    rc = mtmd.mtmd_encode_chunk(self.mctx, chunk)
                    out["vit"] = time.perf_counter() - te
                    if rc != 0:
                        raise RuntimeError(f"mtmd_encode_chunk returned {rc}")
                    td = time.perf_counter()
                    new_n_past = self.lc.llama_pos(0)
                    # puts the embeddings into the KV cache with M-RoPE (t, y, x) positions; the position
                    # after the image advances by max(nx, ny), not by the 256 tokens, hence n_tokens below
                    rc = mtmd.mtmd_helper_decode_image_chunk(
                        self.mctx, llm.ctx, chunk, mtmd.mtmd_get_output_embd(self.mctx), llm.n_tokens, 0,
                        llm.n_batch, ctypes.byref(new_n_past), mtmd.mtmd_helper_post_decode_callback(), None)
                    if rc != 0:
                        raise RuntimeError(f"mtmd_helper_decode_image_chunk returned {rc}")
                    out["image_decode"] = time.perf_counter() - td
                    llm.n_tokens = new_n_past.value  # what Llava15ChatHandler does too
                else:
                    raise RuntimeError(f"unexpected mtmd chunk type {kind}")
            llm.eval(IMAGE_SUFFIX)
            tok = self.sample()
            t_first = time.perf_counter()
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
        out["ttft"] = t_first - t0
        out["layout"] = layout
        answer, times = self.decode(tok, new_tokens - 1)
        out["decode_image"] = (new_tokens - 1) / (times[-1] - t_first) if new_tokens > 1 else None
        # turn 2: the last answer token was sampled, not yet evaluated; it goes in with the question
        last = answer[-1] if answer else tok
        t2 = time.perf_counter()
        llm.eval([last] + FOLLOW_UP)
        self.sample()
        out["turn2"] = time.perf_counter() - t2
        out["turn2_tokens"] = 1 + len(FOLLOW_UP)
        return out

    def close(self) -> None:
        if self.mctx is not None:
            self.mtmd.mtmd_free(self.mctx)
            self.mctx = None
        if self.greedy:
            self.lc.llama_sampler_free(self.greedy)
            self.greedy = None
        self.llm.close()


TEXT_KEYS = ("prefill", "ttft_text", "decode")
IMAGE_KEYS = ("vit", "ttft", "decode_image", "turn2", "preprocess", "image_decode")
HIGHER_IS_BETTER = ("decode", "decode_image")


def measure(name: str, model_path: str, mmproj: str, image: Path, args: argparse.Namespace,
            extra_bufts: bool, wait: QuietWaiter) -> dict[str, Any]:
    """Warm-up round + --repeats rounds of (text round, image round) on one text format."""
    res: dict[str, Any] = {k: [] for k in TEXT_KEYS + IMAGE_KEYS + ("other_load_text", "other_load_image")}
    r = Runner(model_path, mmproj, args.threads, extra_bufts)
    res["load_s"], res["flash_attn"] = r.load_s, r.flash_attn
    image_ok = True
    bitmap = None
    try:
        try:
            r.init_mtmd()
            res["mmproj_load_s"] = r.mmproj_load_s
            bitmap = r.load_bitmap(image)
        except Exception as e:  # report it, keep the text numbers
            image_ok, res["image_error"] = False, f"{type(e).__name__}: {e}"
            log(f"{name}: multimodal setup failed: {res['image_error']}")
        for rnd in range(args.repeats + 1):  # round 0 warms up (page-ins, buffer allocation) and is dropped
            warm = rnd == 0
            tag = f"{name} round {rnd}{' (warm-up)' if warm else ''}"
            if not warm:
                wait()
            with OtherLoad() as ol:
                t = r.text_round(TEXT_PROMPT, args.new_tokens)
            if not warm:
                for k in TEXT_KEYS:
                    res[k].append(t[k])
                res["other_load_text"].append(round(ol.cores, 2))
            log(f"{tag}: prefill {t['prefill']:.3f} s, decode {t['decode']:.2f} tok/s (other load {ol.cores:.2f})")
            if not image_ok:
                continue
            if not warm:
                wait()
            try:
                with OtherLoad() as ol:
                    m = r.image_round(bitmap, args.new_tokens)
            except Exception as e:
                image_ok, res["image_error"] = False, f"{type(e).__name__}: {e}"
                log(f"{name}: image round failed: {traceback.format_exc()}")
                continue
            if not warm:
                for k in IMAGE_KEYS:
                    res[k].append(m.get(k))
                res["other_load_image"].append(round(ol.cores, 2))
            res["image_layout"], res["turn2_tokens"] = m["layout"], m["turn2_tokens"]
            log(f"{tag}: vit {m['vit']:.2f} s, ttft {m['ttft']:.2f} s, decode(image) {m['decode_image']:.2f} "
                f"tok/s, turn2 {m['turn2']:.3f} s (other load {ol.cores:.2f})")
    finally:
        if bitmap is not None:
            r.mtmd.mtmd_bitmap_free(bitmap)
        r.close()
    res["summary"] = {k: stats([x for x in res[k] if x is not None], k in HIGHER_IS_BETTER)
                      for k in TEXT_KEYS + IMAGE_KEYS}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=DEFAULT_CKPT)
    ap.add_argument("--work", default="/tmp/llama-bench", help="GGUF cache, converter input, logs, the image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--formats", default=",".join(FORMATS), help="subset of " + ",".join(FORMATS))
    ap.add_argument("--mmproj-type", choices=MMPROJ_TYPES, default="f16", help="outtype of the vision GGUF")
    ap.add_argument("--src-tarball", default=DEFAULT_TARBALL, help="llama-cpp-python sdist holding the converter")
    ap.add_argument("--convert-python", help="interpreter with torch + transformers (default: python3 on PATH)")
    ap.add_argument("--extra-bufts", choices=("auto", "on", "off"), default="auto",
                    help="ggml extra weight buffers (AMX / repack); auto: on unless a Q8_0 probe crashes")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="s to wait before each timed round for the other load to drop (0: never wait)")
    ap.add_argument("--quiet-budget", type=float, default=300.0, help="s of such waiting in all")
    ap.add_argument("--probe", metavar="GGUF", help=argparse.SUPPRESS)  # internal: see choose_extra_bufts
    args = ap.parse_args()
    if args.probe:
        probe_main(args.probe, args.threads)
        return
    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    wait = QuietWaiter(args.quiet_budget, args.quiet_wait)
    try:
        import llama_cpp

        out["llama_cpp_python"] = llama_cpp.__version__
        out["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        out["settings"] = {"threads": args.threads, "n_ctx": N_CTX, "n_batch": N_BATCH, "new_tokens": args.new_tokens,
                           "repeats": args.repeats, "warmup_rounds": 1, "sampler": "llama_sampler_init_greedy",
                           "text_prompt_tokens": len(TEXT_PROMPT), "turn2_new_tokens": 1 + len(FOLLOW_UP),
                           "quiet_cores": QUIET, "quiet_wait_s": args.quiet_wait, "quiet_budget_s": args.quiet_budget,
                           "multimodal_api": "llama_cpp.mtmd_cpp (libmtmd): mtmd_tokenize, mtmd_encode_chunk, "
                                             "mtmd_helper_decode_image_chunk"}
        conv = convert_all(args, work)
        out["gguf"] = conv
        out["mmproj_type"] = f"{args.mmproj_type} (converter --mmproj --outtype {args.mmproj_type})"
        image = bench_image(work / "bench_image_448.png")
        extra_bufts, why = choose_extra_bufts(out["system_info"], conv["paths"]["Q8_0"], args.threads, args.extra_bufts)
        out["settings"]["use_extra_bufts"], out["settings"]["use_extra_bufts_why"] = extra_bufts, why
        log(f"use_extra_bufts={extra_bufts}: {why}")
        for name in args.formats.split(","):
            log(f"measuring {name}")
            try:
                out[name] = measure(name, conv["paths"][name], conv["paths"]["mmproj"], image, args, extra_bufts,
                                    wait)
            except Exception as e:  # one format failing leaves the other
                log(traceback.format_exc())
                out[name] = {"error": f"{type(e).__name__}: {e}"}
    except Exception as e:
        log(traceback.format_exc())
        out["error"] = f"{type(e).__name__}: {e}"
    out["quiet_waited_s"] = round(wait.waited, 1)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out), flush=True)
    if "error" in out:
        print(f"llama_cpp_runner: {out['error']}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
