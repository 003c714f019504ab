"""The inference engine: one step loop over a preallocated KV pool, continuously batched.

    engine = Engine(model, decode=tokenizer_decode, memory_bytes=2 << 30)   # or n_slots=4, max_len=4096
    h = engine.submit(inputs, SamplingParams(max_new_tokens=64, seed=1))    # a Handle; ValueError if it cannot fit
    for ev in h: print(ev.text, end="")                                      # streaming (drives engine.step())
    gen = engine.generate(inputs, params)                                    # one request -> Generation
    gens = engine.generate_batch([inp_a, inp_b], params)                     # many, batched, in order
    while engine.busy: events = engine.step()                                # a server loop routes the events

One step: running requests decode one token each in ONE forward (each row at its own cache length and
position, attention masked per row), then waiting requests are admitted into free slots and
prefilled together (right-padded; each its own images / videos) and sample their first token.
Requests can be submitted and cancelled between steps; a cancel frees the slot at once.

A request may carry a TokenConstraint (engine/constraint.py, structured output): its logits row is
masked before its sampler and the constraint advances with each sampled token; a constraint that
fails ends only its request (finish_reason "error").

Two caches make the next chat turn cheap (engine.stats counts them): vision features per image /
video item by content hash (engine/vision_cache.py, `vision_cache_bytes`, 0 disables), and prefix
reuse (engine/prefix.py, `prefix_cache`): a finished request's slot keeps its KV, and a prompt that
starts with the same tokens AND the same images prefills only the rest, from start = matched length.

The model is reached only through its phased API: encode_images, embed, forward, logits. The engine
knows nothing of chat templates or HTTP; text comes from the `decode(ids) -> str` it is given. It is
not thread-safe: one thread calls submit / step / cancel (a server runs the loop in one task).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from qwenvl.engine.constraint import TokenConstraint, advance, constrain
from qwenvl.engine.kv import KVPool
from qwenvl.engine.prefix import PrefixCache, position_keys
from qwenvl.engine.sampling import RowSampler, SamplingParams
from qwenvl.engine.scheduler import Event, Generation, Request, Scheduler
from qwenvl.engine.stops import TextStream
from qwenvl.engine.vision_cache import DEFAULT_VISION_CACHE_BYTES, VisionCache, encode_items, model_key, split_items
from qwenvl.inputs import ModelInputs

DEFAULT_PREFILL_TOKENS = 8192  # padded tokens per prefill forward


def model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


def _n_items(inp: ModelInputs) -> int:
    """Images + videos of a prompt (v1: one image per pixel row, no grid)."""
    n_img = len(inp.image_grid) or (0 if inp.image_pixels is None else len(inp.image_pixels))
    return n_img + len(inp.video_grid)


@torch.no_grad()
def encode_vision(model, inputs: Sequence[ModelInputs], device: torch.device
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(image features, video features) of several prompts, concatenated in prompt order, each
    [N_tokens, F] or None; model.embed scatters them row by row in the same order."""
    img = _cat([i.image_pixels for i in inputs])
    vid = _cat([i.video_pixels for i in inputs])
    img_f = model.encode_images(img.to(device), [g for i in inputs for g in i.image_grid]) if img is not None else None
    vid_f = model.encode_images(vid.to(device), [g for i in inputs for g in i.video_grid]) if vid is not None else None
    return img_f, vid_f


class Handle:
    """A submitted request: iterate for its events as they are produced, or wait for its result.

    Iterating drives engine.step() whenever this request has no event queued, so several handles can
    be consumed in one thread. Closing the iterator before the end (a client that went away) cancels
    the request; a request that failed raises its exception after its last event.
    """

    def __init__(self, engine: Engine, req: Request) -> None:
        self.engine, self.request = engine, req

    @property
    def id(self) -> int:
        return self.request.id

    @property
    def done(self) -> bool:
        return self.request.finished

    def __iter__(self) -> Iterator[Event]:
        req = self.request
        try:
            while True:
                while req.events:
                    yield req.events.popleft()
                if req.finished:
                    if req.error is not None:
                        raise req.error
                    return
                self.engine.step()
        finally:
            if not req.finished:
                self.engine.cancel(req.id)

    def result(self) -> Generation:
        """Run the engine until this request is finished; its Generation. A request that failed raises
        the exception its forward raised."""
        while not self.request.finished:
            self.engine.step()
        if self.request.error is not None:
            raise self.request.error
        return self.request.out

    def cancel(self) -> bool:
        return self.engine.cancel(self.request.id)


class Engine:
    """Owns the KV pool and the step loop over a QwenVLModel (or anything with its phased API)."""

    def __init__(self, model, *, decode: Callable[[list[int]], str] | None = None, n_slots: int | None = None,
                 max_len: int | None = None, memory_bytes: int | None = None,
                 prefill_tokens: int = DEFAULT_PREFILL_TOKENS, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, vision_cache_bytes: int = DEFAULT_VISION_CACHE_BYTES,
                 prefix_cache: bool = True, compile: bool = False) -> None:
        """n_slots / max_len / memory_bytes size the pool (engine/kv.py); dtype defaults to the dtype of
        the model's embeddings, device to the model's. vision_cache_bytes: budget of the image-embedding
        cache (0: off); prefix_cache: keep finished requests' KV for prompts that extend them.
        compile: run decode steps through torch.compile (inductor; dynamic batch and cache length): fuses
        the ~40 small ops per layer (norms, RoPE, casts, residuals) whose launch overhead dominates the
        decode of small models; the first steps pay ~30 s of compilation (bench/RESULTS.md)."""
        self.model = model
        self._decode_forward = torch.compile(model.forward, dynamic=True) if compile else model.forward
        self.decode = decode
        self.device = torch.device(device) if device is not None else model_device(model)
        if dtype is None:
            dtype = model.embed(torch.zeros(1, 1, dtype=torch.long, device=self.device)).dtype
        self.pool = KVPool.create(model.cfg.text, dtype, self.device, n_slots, max_len, memory_bytes)
        self.vision_cache = VisionCache(vision_cache_bytes) if vision_cache_bytes else None
        self.prefix = PrefixCache(model) if prefix_cache else None
        self._model_key = model_key(model)
        self.scheduler = Scheduler(self.pool, prefill_tokens, self.prefix)
        self._counts = {"prefill_tokens": 0, "prefix_reused_tokens": 0, "vision_items_encoded": 0}
        self.requests: dict[int, Request] = {}
        self._ids = itertools.count()
        self._failed = False  # a request failed in this step (progress, though no token came)

    @property
    def busy(self) -> bool:
        return self.scheduler.busy

    @property
    def stats(self) -> dict[str, int]:
        """Counters since construction: prompt tokens prefilled / reused from a cached slot, prefix
        hits and evictions, vision items encoded, vision cache hits / misses / evictions / bytes."""
        out = dict(self._counts)
        vc, pc = self.vision_cache, self.prefix
        out.update(vision_hits=vc.hits if vc else 0, vision_misses=vc.misses if vc else 0,
                   vision_evictions=vc.evictions if vc else 0, vision_cache_bytes=vc.nbytes if vc else 0,
                   prefix_hits=pc.hits if pc else 0, prefix_evictions=pc.evictions if pc else 0,
                   prefix_position_mismatches=pc.position_mismatches if pc else 0)
        return out

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, inputs: ModelInputs, params: SamplingParams | None = None,
               constraint: TokenConstraint | None = None) -> Handle:
        """Queue a request; it is admitted at the next step with a free slot. Raises ValueError if it can
        never fit (prompt + max_new_tokens > max_len) or needs text and the engine has no decode.

        constraint: a fresh per-request TokenConstraint (e.g. qwenvl.engine.grammar.Grammar.constraint());
        the ids it allows once complete should be in params.stop_token_ids, so the request stops there."""
        params = params or SamplingParams()
        n = len(inputs.input_ids)
        if n == 0:
            raise ValueError("empty prompt: a request needs at least one input token")
        if n + params.max_new_tokens > self.pool.max_len:
            raise ValueError(f"request needs {n} prompt + {params.max_new_tokens} new tokens = "
                             f"{n + params.max_new_tokens} KV slots; this engine's max_len is {self.pool.max_len} "
                             f"({self.pool.n_slots} slots, {self.pool.nbytes / 2**20:.1f} MiB): lower max_new_tokens "
                             "or build the engine with a larger max_len / memory_bytes")
        if params.stop and self.decode is None:
            raise ValueError("stop strings need text: build the Engine with decode=")
        text = TextStream(self.decode, params.stop) if self.decode is not None else None
        req = Request(next(self._ids), inputs, params, RowSampler(params, inputs.input_ids, self.device), text,
                      constraint)
        self._index(req)
        self.requests[req.id] = req
        if params.max_new_tokens == 0:
            self._finish(req, "length")
        else:
            self.scheduler.add(req)
        return Handle(self, req)

    def _index(self, req: Request) -> None:
        """A request's vision items (content keys) and per-position prefix keys. Pixels that do not
        split by their grid leave it uncached, to fail alone in its forward as before."""
        if self.vision_cache is None and self.prefix is None:
            return
        inp = req.inputs
        try:
            req.image_items = split_items(self._model_key, "image", inp.image_pixels, inp.image_grid)
            req.video_items = split_items(self._model_key, "video", inp.video_pixels, inp.video_grid)
            if self.prefix is not None:
                found = position_keys(self.model, inp.input_ids, req.image_items, req.video_items)
                if found is not None:
                    req.keys, req.spans = found
        except ValueError:
            req.image_items, req.video_items, req.keys, req.spans = [], [], None, []
            req.vision_split = False

    def cancel(self, request_id: int) -> bool:
        """Stop a waiting or running request now (finish_reason "cancelled"); False if unknown or done."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return False
        self._finish(req, "cancelled")
        return True

    def _finish(self, req: Request, reason: str) -> Event:
        ev = req.finish(reason)
        req.events.append(ev)
        self._retire(req)
        return ev

    def _retire(self, req: Request) -> None:
        self.scheduler.release(req)
        self.requests.pop(req.id, None)

    # -- the step loop ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[Event]:
        """One decode step for every running request, then admission + prefill of waiting ones.

        A request whose forward raises (say pixels that do not match its placeholders) ends alone with
        finish_reason "error": a failing batch is retried row by row, so its neighbours go on.
        """
        events: list[Event] = []
        rows = self.scheduler.decoding()
        for reqs, logits in self._isolated(self._decode_logits, rows):
            for r in reqs:
                r.cache_len += 1
            events += self._sample(reqs, logits)
        group = self.scheduler.admit()
        for reqs, logits in self._isolated(self._prefill_logits, group):
            for r in reqs:
                r.cache_len = r.prompt_len
                self._counts["prefill_tokens"] += r.prompt_len - r.reused
                self._counts["prefix_reused_tokens"] += r.reused
            events += self._sample(reqs, logits)
        if not events and self.busy and not self._failed:
            raise RuntimeError("engine step made no progress")  # every request is checked to fit at submit
        self._failed = False
        return events

    def _isolated(self, forward: Callable[[list[Request]], torch.Tensor], reqs: list[Request]
                  ) -> list[tuple[list[Request], torch.Tensor]]:
        """forward(reqs) -> logits [B, V]; on an exception, each request alone, failing only the ones that
        fail alone. forward only writes KV slots of its own rows, so a retry is clean."""
        if not reqs:
            return []
        try:
            return [(reqs, forward(reqs))]
        except Exception as exc:  # kept on the request, re-raised to its caller (Handle.result)
            if len(reqs) > 1:
                return [part for r in reqs for part in self._isolated(forward, [r])]
            self._fail(reqs[0], exc)
            return []

    def _fail(self, req: Request, exc: Exception) -> None:
        """End one request with finish_reason "error"; exc is re-raised to its caller."""
        req.error, req.out.error = exc, f"{type(exc).__name__}: {exc}"
        self._finish(req, "error")
        self._failed = True

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> list[Event]:
        """logits [B, V] fp32, row b for reqs[b]: each request samples with its own sampler, after its
        constraint (if any) masked the row; a failing constraint fails its request alone."""
        events = []
        for b, req in enumerate(reqs):
            row = logits[b:b + 1]
            try:
                if req.constraint is not None:
                    row = constrain(row, req.constraint)
                tok, lp = req.sampler(row)
                if req.constraint is not None:
                    advance(req.constraint, tok)
            except Exception as exc:  # a constraint's (ConstraintError) or the sampler's: this request only
                self._fail(req, exc)
                events.append(req.events[-1])
                continue
            ev = req.accept(tok, lp)
            req.events.append(ev)
            events.append(ev)
            if req.finished:
                self._retire(req)
        return events

    def _positions(self, reqs: list[Request], t: int) -> torch.Tensor:
        """Right-padded positions of each prompt's part to prefill (from its reused length):
        [3, B, T] (M-RoPE) or [B, T] (1-D); padding at position 0."""
        first = reqs[0].inputs.positions
        pos = torch.zeros((*first.shape[:-1], len(reqs), t), dtype=torch.long)
        for b, req in enumerate(reqs):
            pos[..., b, :req.prompt_len - req.reused] = req.inputs.positions[..., req.reused:]
        return pos.to(self.device)

    def _fit_reuse(self, group: list[Request]) -> int:
        """The padded width T of the group's prefill; a row whose start + T would run past its slot
        gives up its reuse (prefills whole), so every row writes inside its own slot."""
        while True:
            t = max(r.prompt_len - r.reused for r in group)
            over = [r for r in group if r.reused and r.reused + t > self.pool.max_len]
            if not over:
                return t
            for r in over:
                r.reused = 0

    def _vision(self, group: list[Request]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Image and video features of what the group prefills: per item from the vision cache or one
        batched encode of the misses; items inside a reused prefix are already in its KV, skipped."""
        if self.vision_cache is None and not any(r.reused for r in group):
            self._counts["vision_items_encoded"] += sum(_n_items(r.inputs) for r in group)
            return encode_vision(self.model, [r.inputs for r in group], self.device)
        if not all(r.vision_split for r in group):  # a malformed request: each alone, it fails alone
            parts = [self._vision([r]) if r.vision_split else
                     encode_vision(self.model, [r.inputs], self.device) for r in group]
            return _cat([p[0] for p in parts]), _cat([p[1] for p in parts])
        imgs, vids = [], []
        for r in group:
            n_img = len(r.image_items)
            done = [e <= r.reused for _, e in r.spans] if r.reused else [False] * (n_img + len(r.video_items))
            imgs += [it for it, d in zip(r.image_items, done[:n_img], strict=True) if not d]
            vids += [it for it, d in zip(r.video_items, done[n_img:], strict=True) if not d]
        self._counts["vision_items_encoded"] += sum(
            it.key not in (self.vision_cache.entries if self.vision_cache else ()) for it in imgs + vids)
        return (encode_items(self.model, self.vision_cache, imgs, self.device),
                encode_items(self.model, self.vision_cache, vids, self.device))

    def _prefill_logits(self, group: list[Request]) -> torch.Tensor:
        """Prompts of newly admitted requests in one right-padded forward, each from its reused length
        (0, or what a cached slot already holds: then per-row starts); logits [B, V] at each prompt's
        last token.

        Padding rows write k/v past their own prompt; those slots are overwritten by the row's own
        decode steps before any of its queries can see them (causal), so they never matter.
        """
        t = self._fit_reuse(group)
        t0 = time.perf_counter()
        img, vid = self._vision(group)
        vision_s = time.perf_counter() - t0
        lens = [r.prompt_len for r in group]
        ids = torch.zeros(len(group), t, dtype=torch.long)
        for b, req in enumerate(group):
            ids[b, :req.prompt_len - req.reused] = torch.tensor(req.inputs.input_ids[req.reused:])
            req.out.vision_seconds = vision_s
        embeds = self.model.embed(ids.to(self.device), img, vid)
        cache = self.pool.view([r.slot for r in group])
        reused = [r.reused for r in group]
        start = torch.tensor(reused, device=self.device) if any(reused) else 0
        hidden = self.model(embeds, self._positions(group, t), None, cache, start, ntk_len=lens)
        last = torch.tensor([n - m for n, m in zip(lens, reused, strict=True)], device=self.device) - 1
        return self.model.logits(hidden[torch.arange(len(group), device=self.device), last]).float()

    def _decode_logits(self, rows: list[Request]) -> torch.Tensor:
        """Every running request's pending token in one forward, each at its own slot and position;
        logits [B, V]."""
        dev = self.device
        b = len(rows)
        tokens = torch.tensor([[r.pending] for r in rows], device=dev)
        pos = torch.tensor([[r.position] for r in rows], device=dev)
        if rows[0].inputs.positions.dim() == 2:
            pos = pos[None].expand(3, b, 1)  # text tokens: T = H = W
        # one row: the int-start path (a slice write, no mask); several: per-row starts + ragged mask
        starts = rows[0].cache_len if b == 1 else torch.tensor([r.cache_len for r in rows], device=dev)
        cache = self.pool.view([r.slot for r in rows])
        hidden = self._decode_forward(self.model.embed(tokens, placeholders=False), pos, None, cache, starts,
                                      ntk_len=[r.prompt_len for r in rows])
        return self.model.logits(hidden[:, -1]).float()

    # -- conveniences over the step loop ----------------------------------------------------------
    def generate(self, inputs: ModelInputs, params: SamplingParams | None = None,
                 constraint: TokenConstraint | None = None) -> Generation:
        return self.submit(inputs, params, constraint).result()

    def generate_batch(self, inputs: Sequence[ModelInputs],
                       params: SamplingParams | Sequence[SamplingParams] | None = None,
                       constraints: Sequence[TokenConstraint | None] | None = None) -> list[Generation]:
        """Several requests through the same step loop (continuously batched); results in input order.
        constraints: one per input (None entries: unconstrained)."""
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(inputs)
        clist = list(constraints) if constraints is not None else [None] * len(inputs)
        if len(plist) != len(inputs) or len(clist) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(plist)} sampling params, {len(clist)} constraints")
        handles: list[Handle] = []
        try:
            for inp, p, c in zip(inputs, plist, clist, strict=True):
                handles.append(self.submit(inp, p, c))
        except ValueError:
            for h in handles:  # all or nothing: a refused request cancels the ones already queued
                h.cancel()
            raise
        for h in handles:  # all run to the end; then the first failure, if any, is raised
            while not h.done:
                self.step()
        return [h.result() for h in handles]

    def stream(self, inputs: ModelInputs, params: SamplingParams | None = None,
               constraint: TokenConstraint | None = None) -> Iterator[Event]:
        return iter(self.submit(inputs, params, constraint))
