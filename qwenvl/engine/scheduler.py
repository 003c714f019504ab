"""Requests and their scheduling: who waits, who holds which KV slot, what a new token does.

A Request carries everything that is its own: its prompt and vision inputs, its cache length, its
decode position offset (rope_delta), its v1 NTK length (its prompt length), its sampler (penalties
over its own tokens, its own RNG), its text stream (stop strings) and its token constraint, if any
(engine/constraint.py, structured output). Nothing is shared across
requests but the model and the KV pool, so a request's tokens do not depend on its neighbours.

Scheduler policy (FIFO, no preemption): between engine steps, waiting requests take free slots in
arrival order; one prefill forward takes requests while (count * longest prompt) <= prefill_tokens
(always at least one). Running requests decode together every step. A finished or cancelled request
gives its slot back at once; with a PrefixCache, a request that finished (stop / length) leaves
its slot's KV behind as "cached" (engine/prefix.py) and admission prefers the cached slot whose
tokens and images the new prompt starts with (Request.reused tokens are not prefilled).
Must not touch the model, or tensors beyond the sampler's and a request's own positions.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from qwenvl.engine.constraint import TokenConstraint
from qwenvl.engine.kv import KVPool
from qwenvl.engine.prefix import PrefixCache
from qwenvl.engine.sampling import RowSampler, SamplingParams, TokenLogprob
from qwenvl.engine.stops import TextStream
from qwenvl.inputs import ModelInputs


@dataclass
class Generation:
    """The result of one request."""

    token_ids: list[int]  # generated tokens; a stop token is not included
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    text: str | None = None  # with the engine's decode: the text, ending before a stop string
    logprobs: list[TokenLogprob] | None = None  # one per generated token when asked for
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    queue_seconds: float = 0.0  # submitted -> admitted to a slot
    vision_seconds: float = 0.0  # the vision encode of its prefill group
    ttft_seconds: float = 0.0  # submitted -> first token (queue + vision + prefill + first sample)
    decode_seconds: float = 0.0  # first token -> last token
    error: str | None = None  # what failed, with finish_reason "error" (the step that raised it)

    @property
    def timings(self) -> dict[str, float]:
        return {"queue_s": self.queue_seconds, "vision_s": self.vision_seconds, "ttft_s": self.ttft_seconds,
                "decode_s": self.decode_seconds}


@dataclass
class Event:
    """What one engine step produced for one request."""

    request_id: int
    token_ids: list[int]  # new tokens (0 or 1 per step)
    text: str = ""  # new text that can no longer change ("" without a decode callable)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None


class Request:
    """One request's state inside the engine."""

    def __init__(self, rid: int, inputs: ModelInputs, params: SamplingParams, sampler: RowSampler,
                 text: TextStream | None, constraint: TokenConstraint | None = None) -> None:
        self.id, self.inputs, self.params, self.sampler, self.text = rid, inputs, params, sampler, text
        self.constraint = constraint  # masks its logits before its sampler; advanced with each token
        self.prompt_len = len(inputs.input_ids)
        self.slot: int | None = None
        self.cache_len = 0  # tokens whose k/v are in the slot
        self.pending: int | None = None  # last sampled token, fed at the next decode step
        self.finished = False
        self.error: Exception | None = None  # what its forward raised (finish_reason "error")
        self.events: deque[Event] = deque()
        self.out = Generation([], "length", self.prompt_len, logprobs=[] if params.wants_logprobs else None)
        self.t_submit = time.perf_counter()
        self.t_first: float | None = None
        # set by the engine at submit: vision items (vision_cache.Item) and per-position prefix keys
        self.image_items: list = []
        self.video_items: list = []
        self.vision_split = True  # False: its pixels did not split into items (encoded whole, uncached)
        self.keys: list | None = None  # None: this request never reuses nor leaves a prefix
        self.spans: list[tuple[int, int]] = []
        self.reused = 0  # prompt tokens whose k/v were already in its slot at admission

    def slot_contents(self) -> tuple[list, torch.Tensor]:
        """(per-position keys, positions [3, L] or [L]) of the cache_len tokens in its slot: the prompt,
        then the generated tokens fed back (text: T = H = W = slot + rope_delta)."""
        fed = self.out.token_ids[:self.cache_len - self.prompt_len]
        gen = torch.arange(self.prompt_len, self.prompt_len + len(fed)) + self.inputs.rope_delta
        pos = self.inputs.positions.cpu()
        gen = gen.expand(*pos.shape[:-1], len(fed))
        return self.keys + fed, torch.cat([pos, gen], dim=-1)

    @property
    def position(self) -> int:
        """RoPE position of the pending token: its cache slot plus the request's rope_delta."""
        return self.cache_len + self.inputs.rope_delta

    def accept(self, tok: int, logprob: TokenLogprob | None) -> Event:
        """Take a sampled token: stop token, stop string, length limit, or keep going."""
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
            self.out.ttft_seconds = now - self.t_submit
        self.out.decode_seconds = now - self.t_first
        ev = Event(self.id, [])
        if tok in self.params.stop_token_ids:
            return self.finish("stop", tok, ev)
        self.out.token_ids.append(tok)
        ev.token_ids.append(tok)
        if logprob is not None:
            self.out.logprobs.append(logprob)
            ev.logprobs.append(logprob)
        if self.text is not None:
            ev.text = self.text.push(self.out.token_ids)
            if self.text.stopped_by is not None:
                return self.finish("stop", self.text.stopped_by, ev)
        if len(self.out.token_ids) >= self.params.max_new_tokens:
            return self.finish("length", None, ev)
        self.pending = tok
        return ev

    def finish(self, reason: str, stop_reason: int | str | None = None, ev: Event | None = None) -> Event:
        ev = ev if ev is not None else Event(self.id, [])
        self.finished, self.pending = True, None
        self.out.finish_reason, self.out.stop_reason = reason, stop_reason
        if self.text is not None:
            ev.text += self.text.finish()
            self.out.text = self.text.text
        ev.finished, ev.finish_reason = True, reason
        return ev


class Scheduler:
    """Waiting queue and running set over a KVPool."""

    def __init__(self, pool: KVPool, prefill_tokens: int, prefix: PrefixCache | None = None) -> None:
        self.pool = pool
        self.prefix = prefix
        self.prefill_tokens = prefill_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def admit(self) -> list[Request]:
        """Waiting requests that get a slot now, in arrival order, within the prefill token budget."""
        group: list[Request] = []
        longest = 0
        while self.waiting and self.pool.free:
            nxt = self.waiting[0]
            width = max(longest, nxt.prompt_len)
            if group and (len(group) + 1) * width > self.prefill_tokens:
                break
            self.waiting.popleft()
            if self.prefix is not None:
                nxt.slot, nxt.reused = self.prefix.acquire(self.pool, nxt.inputs.input_ids, nxt.keys, nxt.spans,
                                                           nxt.inputs.positions)
            else:
                nxt.slot = self.pool.acquire()
            longest = width
            nxt.out.queue_seconds = time.perf_counter() - nxt.t_submit
            group.append(nxt)
        self.running.extend(group)
        return group

    def decoding(self) -> list[Request]:
        """Running requests with a token to feed, by slot (consecutive slots -> a view, no copy)."""
        return sorted((r for r in self.running if r.pending is not None), key=lambda r: r.slot)

    def release(self, req: Request) -> None:
        """Drop a finished request from the queues; its slot is free for the next admission."""
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            self.running.remove(req)
        if req.slot is not None:
            if self.prefix is not None:
                if req.keys is not None and req.error is None and req.out.finish_reason in ("stop", "length") \
                        and req.cache_len >= req.prompt_len:
                    self.prefix.store(req.slot, *req.slot_contents(), req.prompt_len)
                else:  # cancelled or failed: what its slot holds is not vouched for
                    self.prefix.drop(req.slot)
            self.pool.release(req.slot)
            req.slot = None

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)
