"""OpenAI response shapes: chat.completion, chat.completion.chunk, chat logprobs, usage.

Logprobs use the chat shape (`choices[i].logprobs.content = [{token, logprob, bytes, top_logprobs}]`),
not the Completions one (vLLM once mixed them up, v#3179). A token's `bytes` are its own UTF-8 bytes,
so a character split over two tokens is rebuilt by concatenating them.
Must not: touch the engine or HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from qwenvl.engine.sampling import TokenLogprob

TokenBytes = Callable[[int], bytes]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _token_entry(tid: int, logprob: float, token_bytes: TokenBytes) -> dict:
    b = token_bytes(tid)
    return {"token": b.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0), "bytes": list(b)}


def chat_logprobs(entries: list[TokenLogprob], token_bytes: TokenBytes) -> dict:
    content = []
    for e in entries:
        item = _token_entry(e.token_id, e.logprob, token_bytes)
        item["top_logprobs"] = [_token_entry(t, lp, token_bytes) for t, lp in e.top]
        content.append(item)
    return {"content": content, "refusal": None}


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(cid: str, model: str, message: dict, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               logprobs: dict | None) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens), "system_fingerprint": None}


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
          logprobs: dict | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def usage_chunk(cid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def finish_reason(engine_reason: str, tool_calls: bool) -> str:
    """The engine's stop / length / cancelled / error in OpenAI's words."""
    if tool_calls:
        return "tool_calls"
    return {"stop": "stop", "length": "length"}.get(engine_reason, "stop")


class ToolTextGate:
    """Streams content while holding back text that may open a tool call: once `<tool_call>` starts,
    nothing more is streamed as content (the calls are parsed from the whole text at the end)."""

    def __init__(self, tag: str = "<tool_call>") -> None:
        self.tag, self.text, self.sent, self.closed = tag, "", 0, False

    def push(self, piece: str) -> str:
        self.text += piece
        if self.closed:
            return ""
        at = self.text.find(self.tag, self.sent)
        if at >= 0:
            self.closed = True
            out, self.sent = self.text[self.sent:at], at
            return out
        keep = next((k for k in range(min(len(self.tag) - 1, len(self.text)), 0, -1)
                     if self.tag.startswith(self.text[-k:])), 0)
        out = self.text[self.sent:len(self.text) - keep]
        self.sent = len(self.text) - keep
        return out

    def rest(self) -> str:
        """Held-back text at the end when no tool call opened."""
        if self.closed:
            return ""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
