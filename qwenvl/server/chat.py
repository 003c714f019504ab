"""One chat completion: a validated ChatRequest -> model inputs -> the engine -> OpenAI JSON / SSE.

    job = await prepare(state, req)          # images fetched under the policy, prompt rendered, limits checked
    body = await complete(state, job)         # non-streaming
    async for line in stream_sse(state, job)  # streaming ("data: {...}\\n\\n" ... "data: [DONE]\\n\\n")

Image fetching and prompt rendering run in worker threads (PIL and the tokenizer), never on the event
loop and never on the engine thread. Must not: hold model logic (the pipeline's processor renders,
the engine generates, pipeline.boxes parses grounding).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from qwenvl.engine.sampling import SamplingParams
from qwenvl.inputs import ModelInputs
from qwenvl.server import responses as R
from qwenvl.server.errors import APIError, bad_request
from qwenvl.server.protocol import LOW_DETAIL_PIXELS, ChatRequest, check_limit
from qwenvl.server.runner import Stream


@dataclass
class Job:
    req: ChatRequest
    inputs: ModelInputs
    params: SamplingParams
    constraint: Any = None
    t0: float = field(default_factory=time.perf_counter)


def _fetch_images(state, req: ChatRequest) -> list:
    from qwenvl.server.images import ImageRefused, load_image_url

    out = []
    for ref in req.images:
        try:
            out.append(load_image_url(ref.url, state.options.image_policy))
        except ImageRefused as e:
            raise APIError(400, f"{ref.param}: {e}", param=ref.param, code=e.code) from None
    return out


def low_detail_budget(processor) -> tuple[int, int] | None:
    """(min_pixels, max_pixels) for detail "low": a quarter of the processor's ceiling, at most
    LOW_DETAIL_PIXELS; None for fixed-resolution processors (v1), which have no budget to lower."""
    cfg = getattr(processor, "image_cfg", None)
    if cfg is None:
        return None
    top = min(LOW_DETAIL_PIXELS, cfg.max_pixels // 4)
    return min(cfg.min_pixels, top), top


def _processor_messages(req: ChatRequest, images: list, low: tuple[int, int] | None) -> list[dict]:
    """OpenAI messages with each image part replaced by its decoded image (and per-image budgets)."""
    out = []
    for msg in req.messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if "_ref" in p:
                    ref = req.images[p["_ref"]]
                    lo, hi = low if (ref.low_detail and low) else (None, None)
                    opts = {k: v for k, v in (("max_pixels", ref.max_pixels or hi),
                                              ("min_pixels", ref.min_pixels or lo)) if v is not None}
                    parts.append({"type": "image", "image": images[p["_ref"]], **opts})
                elif "_refs" in p:
                    opts = {k: v for k, v in p.items() if k not in ("type", "_refs")}
                    parts.append({"type": "video", "video": [images[k] for k in p["_refs"]], **opts})
                else:
                    parts.append(p)
            content = parts
        out.append({**msg, "content": content})
    return out


def _render(state, req: ChatRequest) -> ModelInputs:
    images = _fetch_images(state, req)
    kw: dict[str, Any] = {k: v for k, v in (("min_pixels", req.min_pixels), ("max_pixels", req.max_pixels))
                          if v is not None}
    if req.tools_active:
        kw["tools"] = req.tools
    try:
        messages = _processor_messages(req, images, low_detail_budget(state.pipe.processor))
        return state.pipe.prepare(messages, **kw)
    except APIError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise bad_request(f"could not build the prompt: {e}", "messages") from None


def _grammar(state, req: ChatRequest):
    try:
        if req.response_format is not None:
            return state.pipe.grammar("json", req.response_format["schema"]).constraint()
        if req.tools_active and req.forced_tool is not None:
            return state.pipe.grammar("tool_call", (req.tools, req.forced_tool or None)).constraint()
    except ValueError as e:
        raise bad_request(f"cannot enforce this output format: {e}",
                          "response_format" if req.response_format else "tools") from None
    return None


async def prepare(state, req: ChatRequest) -> Job:
    opts = state.options
    if req.model is not None and req.model != opts.model_name:
        raise APIError(404, f"the model {req.model!r} does not exist; this server serves {opts.model_name!r}",
                       param="model", code="model_not_found")
    check_limit(len(req.images) - req.n_video_frames, opts.max_images, "images", "messages")
    check_limit(req.n_video_frames, opts.max_video_frames, "video frames", "messages")
    inputs = await asyncio.to_thread(_render, state, req)
    room = state.max_len - len(inputs.input_ids)
    if req.max_tokens is not None and req.max_tokens > room:
        raise APIError(400, f"this request has {len(inputs.input_ids)} prompt tokens and asks for {req.max_tokens} "
                       f"new ones, over the context of {state.max_len} tokens; lower max_tokens to at most "
                       f"{max(room, 0)} or shorten the prompt", param="max_tokens", code="context_length_exceeded")
    if room < 1:
        raise APIError(400, f"the prompt has {len(inputs.input_ids)} tokens; the context is {state.max_len}",
                       param="messages", code="context_length_exceeded")
    max_new = req.max_tokens if req.max_tokens is not None else min(opts.default_max_tokens, room)
    try:
        params = state.pipe.sampling(max_new_tokens=max_new, **req.sampling)
    except ValueError as e:
        raise bad_request(str(e)) from None
    constraint = await asyncio.to_thread(_grammar, state, req) if req.response_format or req.tools_active else None
    return Job(req, inputs, params, constraint)


async def submit(state, job: Job) -> Stream:
    """The job on the engine; its ValueError (a request that can never fit) as a 400."""
    try:
        return await state.runner.submit(job.inputs, job.params, job.constraint)
    except ValueError as e:
        raise bad_request(str(e), "max_tokens", "context_length_exceeded") from None


def _message(state, job: Job, gen) -> tuple[dict, bool]:
    """The assistant message of a finished Generation: content, tool_calls (when tools are active), boxes
    (extension, from the pipeline's own result)."""
    res = state.pipe.result(gen, job.inputs)
    text = res.text
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    calls: list = []
    if job.req.tools_active:
        from qwenvl.processing.tools import parse_tool_calls

        content, calls = parse_tool_calls(text)
        msg["content"] = content or None
        if calls:
            msg["tool_calls"] = calls
    msg["boxes"] = res.boxes
    return msg, bool(calls)


def _record(state, job: Job, stream: Stream, status: str) -> None:
    gen = stream.handle.request.out
    m = state.metrics
    m.requests.labels("chat", status).inc()
    m.prompt_tokens.inc(gen.prompt_tokens)
    m.completion_tokens.inc(len(gen.token_ids))
    if gen.token_ids:
        m.ttft.observe(gen.ttft_seconds)
    m.latency.observe(time.perf_counter() - job.t0)


async def complete(state, job: Job, disconnected) -> dict:
    """Run to the end (or until the client leaves: then cancel) and build the chat.completion."""
    stream = await submit(state, job)

    async def drain() -> None:
        async for _ in stream:
            pass

    task = asyncio.ensure_future(drain())
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            stream.close()
            state.metrics.cancelled.inc()
            raise APIError(499, "client closed the request", code="client_closed")
        task.result()  # a failed request raises here
    except RuntimeError as e:
        raise APIError(500, f"generation failed: {e}", code="generation_failed") from None
    finally:
        watch.cancel()
        stream.close()
    gen = stream.handle.request.out
    msg, called = _message(state, job, gen)
    lp = R.chat_logprobs(gen.logprobs, state.token_bytes) if gen.logprobs is not None else None
    _record(state, job, stream, "200")
    return R.completion(R.completion_id(), state.options.model_name, msg,
                        R.finish_reason(gen.finish_reason, called), gen.prompt_tokens, len(gen.token_ids), lp)


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_sse(state, job: Job, stream: Stream):
    """SSE lines of one streamed completion; closing the generator (client gone) cancels the request."""
    cid, model, created = R.completion_id(), state.options.model_name, int(time.time())
    gate = R.ToolTextGate() if job.req.tools_active else None
    status = "200"
    try:
        yield _sse(R.chunk(cid, model, created, {"role": "assistant", "content": ""}))
        async for ev in stream:
            piece = gate.push(ev.text) if gate is not None else ev.text
            lp = R.chat_logprobs(ev.logprobs, state.token_bytes) if ev.logprobs else None
            if piece or lp:
                yield _sse(R.chunk(cid, model, created, {"content": piece}, logprobs=lp))
        gen = stream.handle.request.out
        if gate is not None and (tail := gate.rest()):
            yield _sse(R.chunk(cid, model, created, {"content": tail}))
        msg, called = _message(state, job, gen)
        delta: dict[str, Any] = {"boxes": msg["boxes"]}
        if called:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(msg["tool_calls"])]
        yield _sse(R.chunk(cid, model, created, delta, R.finish_reason(gen.finish_reason, called)))
        if job.req.include_usage:
            yield _sse(R.usage_chunk(cid, model, created, gen.prompt_tokens, len(gen.token_ids)))
        yield _sse("[DONE]")
    except Exception as e:  # after the 200 went out: an error event, then the end of the stream
        status = "500"
        yield _sse({"error": {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                              "param": None, "code": "generation_failed"}})
        yield _sse("[DONE]")
    finally:
        if not stream.finished:
            status = "cancelled"
            state.metrics.cancelled.inc()
        stream.close()
        _record(state, job, stream, status)
