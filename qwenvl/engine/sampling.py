"""Sampling parameters and next-token selection, per request.

    params = SamplingParams(temperature=0.8, top_p=0.9, seed=1, stop=("\\n\\n",), logprobs=True)
    sampler = RowSampler(params, prompt_ids, device)      # one per request: its own tokens, its own RNG
    tok, logprob = sampler(logits_row)                     # logits_row [1, V] fp32

Order of processing (HF's logits processors, then OpenAI's penalties, then the warpers): a
request's token constraint first (engine/constraint.py: disallowed tokens at -inf, done by the engine
before the sampler runs, so every later step and the logprobs see the constrained distribution),
repetition penalty over prompt + generated (CTRL, HF), presence / frequency over generated only
(OpenAI), temperature, top-k, top-p, min-p. Logprobs are the log-softmax of that processed
distribution. `select` is the batch form for a shared params / generator (kept for simple callers).
Pure tensor code: no model, no tokenizer, no text (stop strings are matched in engine/stops.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off; keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # HF / CTRL: over prompt + generated tokens
    presence_penalty: float = 0.0  # OpenAI: minus this once a token was generated
    frequency_penalty: float = 0.0  # OpenAI: minus this times how often it was generated
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one found
    logprobs: bool = False
    top_logprobs: int = 0  # > 0 implies logprobs

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 0, ">= 0"), ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"), ("top_k", self.top_k >= 0, ">= 0"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("top_logprobs", 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, f"in [0, {MAX_TOP_LOGPROBS}]"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    @classmethod
    def from_generation_config(cls, gen: dict | None, **overrides) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json, then explicit overrides (None = keep)."""
        gen = gen or {}
        kw: dict = {}
        if gen.get("do_sample") is False:
            kw["temperature"] = 0.0
        elif "temperature" in gen and gen.get("do_sample", True):
            kw["temperature"] = float(gen["temperature"])
        for key in ("top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens"):
            if gen.get(key) is not None:
                kw[key] = type(getattr(cls, key))(gen[key])
        eos = gen.get("eos_token_id")
        if eos is not None:
            kw["stop_token_ids"] = tuple(eos if isinstance(eos, list) else [eos])
        if kw.get("top_p") == 0:  # some configs write 0; treat as "keep the single best token"
            kw["top_p"] = 1e-9
        names = {f.name for f in fields(cls)}
        kw.update({k: v for k, v in overrides.items() if v is not None and k in names})
        if "stop_token_ids" in kw:
            kw["stop_token_ids"] = tuple(kw["stop_token_ids"])
        return cls(**kw)

    def with_stops(self, extra: list[int] | tuple[int, ...]) -> SamplingParams:
        return replace(self, stop_token_ids=tuple(dict.fromkeys((*self.stop_token_ids, *extra))))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on tokens already in the sequence. logits [B, V], seen [V] or [B, V] bool."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on logits [B, V] (fp32); removed tokens become -inf. Greedy
    params return the logits unchanged."""
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = _top_p(logits, params.top_p)
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


TOP_P_CANDIDATES = 1024  # top_p looks at the best this-many first; a full sort only when they hold < top_p


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest best-first prefix whose mass reaches top_p: a token is dropped when the mass
    before it already reaches top_p (the best token always stays). A peaked distribution is decided
    within the top TOP_P_CANDIDATES (topk is ~10x cheaper than sorting a 150k vocabulary)."""
    k = min(TOP_P_CANDIDATES, logits.shape[-1])
    probs = logits.softmax(-1)
    vals, idx = probs.topk(k, dim=-1)
    if k == logits.shape[-1] or not bool((vals.sum(-1) >= top_p).all()):
        vals, idx = probs.sort(dim=-1, descending=True)
    keep = vals.cumsum(-1) - vals < top_p
    offset = vals.new_zeros(vals.shape).masked_fill(~keep, float("-inf"))  # 0 kept, -inf dropped
    return logits + torch.full_like(logits, float("-inf")).scatter(-1, idx, offset)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs [B, V]: argmax(p_i / E_i) with E_i ~ Exp(1) (the exponential race,
    exact: P(token i) = p_i). Chosen over inverse-CDF sampling because each token's draw is its own:
    a 1e-7 change in the logits (batched vs alone matmul rounding) moves the winner only on a near tie,
    where a cumulative sum over a near-uniform 150k vocabulary shifts every boundary after it. The
    generator advances by V numbers per token, whatever the logits. Zero-probability tokens never win."""
    e = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device).log_().neg_()
    return (probs / e).argmax(-1)


def select(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] (fp32) -> next token ids [B] (one params and generator for all rows)."""
    if params.greedy:
        return logits.argmax(-1)
    return draw(warp(logits, params).softmax(-1), generator)


@dataclass
class TokenLogprob:
    """One generated token's log-probability and the top alternatives, in the processed distribution."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first; top_logprobs entries


class RowSampler:
    """Next-token choice for ONE request: its penalties see only its own tokens, its RNG is its own.

    A seed gives a private torch.Generator, so the tokens are the same whether the request runs alone
    or beside others. Without a seed the generator is seeded from torch's global RNG (reproducible
    under torch.manual_seed). State: `seen` [V] bool (prompt + generated, for the repetition penalty)
    and `counts` [V] (generated only, presence / frequency), built lazily once V is known.
    """

    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device | str = "cpu"):
        self.params = params
        self.prompt_ids = prompt_ids
        self.device = torch.device(device)
        self.generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
            self.generator = torch.Generator(self.device).manual_seed(seed)
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self._ready = False

    def _init_state(self, vocab: int) -> None:
        p = self.params
        self._ready = True
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=self.device)
            if self.prompt_ids:
                self.seen[torch.tensor(self.prompt_ids, device=self.device)] = True
        if p.presence_penalty or p.frequency_penalty:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=self.device)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [1, V] fp32 -> the processed logits [1, V] this request samples from."""
        p = self.params
        if not self._ready:
            self._init_state(logits.shape[-1])
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, p.repetition_penalty)
        if self.counts is not None:
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()
        return warp(logits, p)

    def __call__(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """logits [1, V] fp32 -> (token id, its logprob entry or None); records the token as generated."""
        x = self.process(logits)
        if self.generator is None:
            tok = int(x.argmax(-1))
        else:
            tok = int(draw(x.softmax(-1), self.generator))
        lp = None
        if self.params.wants_logprobs:
            logp = x.log_softmax(-1)[0]
            top = []
            if self.params.top_logprobs:
                vals, ids = logp.topk(min(self.params.top_logprobs, logp.shape[-1]))
                top = list(zip(ids.tolist(), vals.tolist(), strict=True))
            lp = TokenLogprob(tok, float(logp[tok]), top)
        self.observe(tok)
        return tok, lp

    def observe(self, tok: int) -> None:
        if self.seen is not None:
            self.seen[tok] = True
        if self.counts is not None:
            self.counts[tok] += 1
