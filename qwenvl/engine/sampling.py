"""Sampling parameters and next-token selection (greedy, temperature, top-k, top-p, repetition penalty)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def from_generation_config(cls, gen: dict | None, **overrides) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json, then explicit overrides (None = keep)."""
        gen = gen or {}
        kw: dict = {}
        if gen.get("do_sample") is False:
            kw["temperature"] = 0.0
        elif "temperature" in gen and gen.get("do_sample", True):
            kw["temperature"] = float(gen["temperature"])
        for key in ("top_p", "top_k", "repetition_penalty", "max_new_tokens"):
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
    """CTRL-style penalty on tokens already in the sequence. logits [B, V], seen [B, n] ids."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(1, seen, picked)


def select(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] (fp32) -> next token ids [B]."""
    if params.greedy:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the best token always stays)
        drop = probs.cumsum(-1) - probs >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
