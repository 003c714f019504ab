"""The public Python API: load a checkpoint folder, chat, score.

    pipe = qwenvl.load("path/to/checkpoint", device="cpu")          # dtype="auto": pipe.dtype, pipe.dtype_reason
    out = pipe.chat(messages, max_new_tokens=64, temperature=0.0)   # out.text, out.token_ids, out.boxes
    for piece in pipe.chat(messages, stream=True): ...              # text pieces; "".join == out.text
    outs = pipe.generate_batch([messages_a, messages_b], seed=1)   # batched through the engine, in order
    logits = pipe.logits(messages, add_generation_prompt=True)     # [T, V] over the rendered prompt

The family (Qwen-VL v1, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) is read from config.json. This layer wires the
processor (text + pixels -> ids), the model and one engine (qwenvl.engine.Engine, built on first use,
sized by `engine_options`); it holds no model logic.

dtype defaults to "auto" (engine/precision.py): bf16 where the device computes it natively (a CPU with
avx512_bf16 or AMX, a CUDA GPU with bf16), fp32 elsewhere; pass dtype="float32" for exact numbers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwenvl import families
from qwenvl.engine.engine import Engine, Handle
from qwenvl.engine.generate import prefill_embeds
from qwenvl.engine.grammar import Grammar, Vocab
from qwenvl.engine.sampling import SamplingParams, TokenLogprob
from qwenvl.engine.scheduler import Generation
from qwenvl.inputs import ModelInputs
from qwenvl.weights import load_model, read_config, stored_dtype

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
DEFAULT_MODEL = "qwenvl-tiny"


SHIPPED = Path(__file__).parent / "assets"  # qwenvl-tiny (Qwen2.5-VL, the default), qwenvl-tiny-qwen-vl (v1)


def resolve_model(path: str | Path | None) -> Path:
    """A folder path, or the name of a model shipped with the package (None: the default one)."""
    name = DEFAULT_MODEL if path is None else str(path)
    if name.startswith("qwenvl-tiny") and not Path(name).expanduser().is_dir():
        shipped = SHIPPED / name
        if not (shipped / "config.json").is_file():
            have = sorted(p.parent.name for p in SHIPPED.glob("*/config.json"))
            raise FileNotFoundError(f"{name!r} is not a model shipped in this version (shipped: {have}); "
                                    "pass a checkpoint folder")
        return shipped
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    return folder


def _dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype name, or "auto": bf16 where the device computes it natively, else fp32 (engine/precision.py)."""
    return _dtype_and_reason(dtype, device)[0]


def _dtype_and_reason(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> tuple[torch.dtype, str]:
    """(dtype, why): auto_dtype's reason for "auto", "requested" for an explicit dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype, "requested"
    if dtype == "auto":
        from qwenvl.engine.precision import auto_dtype

        return auto_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES) + ['auto']}")
    return DTYPES[dtype], "requested"


@dataclass
class ChatResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    boxes: list[dict] = field(default_factory=list)  # {label, x1, y1, x2, y2} in original-image pixels
    timings: dict = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None  # per generated token, when asked for


def _model_dtype(model) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (fp32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


SAMPLING_KEYS = frozenset(SamplingParams.__dataclass_fields__)
GRAMMAR_CACHE_SIZE = 64  # compiled grammars kept per pipeline (a server's recurring schemas)


class Pipeline:
    def __init__(self, model, processor, generation_config: dict | None = None, folder: Path | None = None,
                 engine_options: dict | None = None, dtype: torch.dtype | None = None,
                 dtype_reason: str = "requested"):
        self.model = model
        self.processor = processor
        self.generation_config = generation_config or {}
        self.folder = folder
        self.dtype = dtype if dtype is not None else _model_dtype(model)  # the compute dtype
        self.dtype_reason = dtype_reason  # auto_dtype's reason when load(dtype="auto"), else "requested"
        self.engine_options = dict(engine_options or {})  # Engine(n_slots=, max_len=, memory_bytes=, ...)
        self._engine: Engine | None = None
        self._compiled = functools.lru_cache(maxsize=GRAMMAR_CACHE_SIZE)(self._compile)  # thread-safe LRU

    @property
    def engine(self) -> Engine:
        """The pipeline's engine (KV pool + step loop), built on first use from engine_options."""
        if self._engine is None:
            self._engine = Engine(self.model, decode=self.processor.decode, **self.engine_options)
        return self._engine

    def configure_engine(self, **options: Any) -> None:
        """Replace the engine's options (n_slots, max_len, memory_bytes, prefill_tokens); rebuilt on next use."""
        if self._engine is not None and self._engine.busy:
            raise RuntimeError("the engine still has requests; finish or cancel them first")
        self.engine_options.update(options)
        self._engine = None

    @functools.cached_property
    def vocab(self) -> Vocab:
        """The tokenizer as a grammar library sees it (engine/grammar.py); eos = processor.stop_ids()."""
        return Vocab.from_tokenizer(self.processor.tokenizer, self.processor.stop_ids())

    def grammar(self, kind: str, spec: Any) -> Grammar:
        """A compiled grammar for structured output, from a small LRU keyed by the spec's JSON: kind
        "json" with a JSON schema (None: any object), "tool_call" with (tools, name or None).
        ValueError for an unknown kind or an invalid schema / tools. Key order is part of the key:
        it is the order the properties are generated in."""
        if kind not in ("json", "tool_call"):
            raise ValueError(f"unknown grammar kind {kind!r}; use 'json' or 'tool_call'")
        try:
            key = json.dumps(spec, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the {kind} grammar spec is not JSON: {exc}") from None
        return self._compiled(kind, key)

    def _compile(self, kind: str, key: str) -> Grammar:
        """Grammar of a spec given as its JSON text (functools.lru_cache'd per pipeline in __init__)."""
        spec = json.loads(key)
        if kind == "json":
            return Grammar.json(spec, self.vocab)
        tools, name = spec
        return Grammar.tool_call(tools, self.vocab, name)

    @property
    def family(self) -> str:
        """The family name (config.FAMILY_NAMES), e.g. for the grounding convention."""
        return self.model.cfg.family

    @property
    def device(self) -> torch.device:
        return self.model.model.embed_tokens.weight.device

    def prepare(self, messages: list[dict], *, add_generation_prompt: bool = True, **kw: Any) -> ModelInputs:
        return self.processor(messages, add_generation_prompt=add_generation_prompt, **kw)

    def sampling(self, **overrides: Any) -> SamplingParams:
        params = SamplingParams.from_generation_config(self.generation_config, **overrides)
        return params.with_stops(self.processor.stop_ids())

    def chat(self, messages: list[dict], *, stream: bool = False, max_new_tokens: int | None = None,
             temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
             min_p: float | None = None, repetition_penalty: float | None = None,
             presence_penalty: float | None = None, frequency_penalty: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None, logprobs: bool | None = None, top_logprobs: int | None = None,
             **processor_kw: Any) -> ChatResult | Iterator[str]:
        """Answer the conversation; with stream=True, an iterator of text pieces whose concatenation is the
        non-streaming .text (closing it early cancels the request). Unset sampling arguments come from
        generation_config.json; stop strings end the text before them."""
        inp = self.prepare(messages, **processor_kw)
        params = self.sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                               min_p=min_p, repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                               frequency_penalty=frequency_penalty, seed=seed, stop=stop, logprobs=logprobs,
                               top_logprobs=top_logprobs)
        handle = self.engine.submit(inp, params)
        if stream:
            return self._text_pieces(handle)
        return self.result(handle.result(), inp)

    @staticmethod
    def _text_pieces(handle: Handle) -> Iterator[str]:
        for ev in handle:
            if ev.text:
                yield ev.text

    def stream(self, messages: list[dict], **kw: Any) -> Iterator[str]:
        """Yield text pieces as tokens are generated (whole UTF-8 characters only): chat(stream=True)."""
        return self.chat(messages, stream=True, **kw)

    def generate_batch(self, conversations: list[list[dict]], **kw: Any) -> list[ChatResult]:
        """Answer several conversations through the engine's batching; results in input order. kw: the
        sampling arguments of chat (one set for all) and processor options."""
        sampling = {k: v for k, v in kw.items() if k in SAMPLING_KEYS}
        inputs = [self.prepare(m, **{k: v for k, v in kw.items() if k not in SAMPLING_KEYS}) for m in conversations]
        gens = self.engine.generate_batch(inputs, self.sampling(**sampling))
        return [self.result(g, i) for g, i in zip(gens, inputs, strict=True)]

    def result(self, gen: Generation, inp: ModelInputs) -> ChatResult:
        """The ChatResult of a finished engine Generation for the prompt `inp` (text, boxes in original
        pixels, timings); what chat / generate_batch return, and what the server shapes into JSON."""
        text = gen.text if gen.text is not None else self.processor.decode(gen.token_ids)
        return ChatResult(text=text, token_ids=gen.token_ids, finish_reason=gen.finish_reason,
                          prompt_tokens=gen.prompt_tokens,
                          boxes=self.boxes(self.processor.decode(gen.token_ids, skip_special=False), inp),
                          timings=gen.timings, logprobs=gen.logprobs)

    @torch.no_grad()
    def logits(self, messages: list[dict], *, add_generation_prompt: bool = True, **kw: Any) -> torch.Tensor:
        """Logits [T, V] over the rendered prompt (fp32)."""
        inp = self.prepare(messages, add_generation_prompt=add_generation_prompt, **kw)
        embeds, _ = prefill_embeds(self.model, inp)
        hidden = self.model(embeds, inp.positions.to(self.device).unsqueeze(-2))
        return self.model.logits(hidden)[0].float()

    def boxes(self, text: str, inp: ModelInputs) -> list[dict]:
        """Boxes in the answer, mapped to the original pixels of the last image in the prompt."""
        if not inp.image_sizes:
            return []
        from qwenvl.processing.grounding import parse_boxes

        input_sizes = self.processor.input_sizes(inp)
        return [b.as_dict() for b in parse_boxes(text, self.family, inp.image_sizes[-1],
                                                 input_sizes[-1] if input_sizes else None)]

    def save(self, folder: str | Path, dtype: str | torch.dtype | None = None) -> None:
        from qwenvl.weights import save_model

        save_model(self.model, folder, dtype=_dtype(dtype) if dtype is not None else None)
        self.processor.save(folder)
        if self.generation_config:
            (Path(folder) / "generation_config.json").write_text(json.dumps(self.generation_config, indent=2))


def auto_storage(folder: str | Path, compute_dtype: torch.dtype, device: str | torch.device = "cpu") -> str | None:
    """"bf16" where dtype="auto" computes in fp32 on a CPU, the checkpoint is stored in bf16 and our tiled
    kernel runs here (decode then reads half the bytes: bench/RESULTS.md), else None (weights in the compute
    dtype)."""
    from qwenvl.engine.quant import use_tiled

    if compute_dtype != torch.float32 or torch.device(device).type != "cpu":
        return None
    if stored_dtype(folder) != torch.bfloat16:
        return None
    return "bf16" if use_tiled("bf16", torch.device("cpu")) else None


def load(path: str | Path | None = None, dtype: str | torch.dtype = "auto",
         device: str | torch.device = "cpu", quantize: str | None = None, compile: bool = False) -> Pipeline:
    """Load a checkpoint folder (or the shipped default model) into a ready pipeline.

    dtype: "auto" (the default: bf16 where `device` computes it natively, a CPU with avx512_bf16 or AMX
    or a CUDA GPU with bf16, fp32 elsewhere; engine/precision.auto_dtype), a name from DTYPES or a
    torch.dtype. What was chosen is on the pipeline: pipe.dtype, and pipe.dtype_reason (auto_dtype's
    reason, or "requested" for an explicit dtype). Pass dtype="float32" where exact numbers matter.
    Where "auto" picks fp32 on a CPU (no native bf16) and the checkpoint is stored in bf16, the decoder's
    linears and lm_head keep those bf16 weights for our tiled kernel (quantize_model(model, "bf16"): the
    same values computed in fp32, half the bytes per decode step; the reason says so); pass
    dtype="float32" for plain fp32 weights.

    quantize: None, "int8", "int4" or "bf16": weight-only quantization (bf16: storage) of the text decoder
    and lm_head after loading (qwenvl.engine.quant.quantize_model, its defaults); such a pipeline cannot
    save().
    compile: decode steps through torch.compile (Engine(compile=True)): faster steps after ~30 s of
    compilation at the first request; needs a C++ compiler (inductor).
    """
    from qwenvl.engine.quant import MODES, quantize_model

    if quantize is not None and quantize not in MODES:
        raise ValueError(f"unknown quantize {quantize!r}; use one of {[None, *MODES]}")
    folder = resolve_model(path)
    cfg = read_config(folder)
    processor = families.of(cfg).build_processor(folder, cfg)  # fail on a missing tokenizer before weights
    compute_dtype, reason = _dtype_and_reason(dtype, device)
    model = load_model(folder, compute_dtype, device, cfg)
    if quantize is None and dtype == "auto" and auto_storage(folder, compute_dtype, device) == "bf16":
        quantize = "bf16"
        reason += "; decoder weights kept in the checkpoint's bf16 (fp32 compute, tiled kernel)"
    if quantize is not None:
        quantize_model(model, quantize)
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    return Pipeline(model, processor, gen, folder, dtype=compute_dtype, dtype_reason=reason,
                    engine_options={"compile": True} if compile else None)
