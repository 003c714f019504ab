"""Chat Completions requests: the JSON body a client sent -> a validated ChatRequest, or APIError 400.

Accepts what real OpenAI clients send (serving-peers.md, pain point 9): content as a string or parts
in every role, the `developer` role, `content: null` beside `tool_calls`, `max_tokens` and / or
`max_completion_tokens`, `stop` as a string or a list, `logprobs` without `top_logprobs`,
`stream_options`, `response_format` json_object / json_schema, `tools` / `tool_choice`; and the
extensions `min_pixels` / `max_pixels` (request or part), `top_k`, `min_p`, `repetition_penalty`.
Unknown top-level fields are ignored (as vLLM does); known ones are type-checked, naming the field.
Must not: fetch images, touch the model or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwenvl.server.errors import APIError, bad_request

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 16
# OpenAI's `detail`: "low" caps the pixel budget at a quarter of the model's own ceiling and at most
# 256 merged tokens (256 * 28 * 28 px) — see chat.low_detail_budget; "high" / "auto" keep the model's budget.
LOW_DETAIL_PIXELS = 256 * 28 * 28


@dataclass
class ImageRef:
    """One image of the request, in prompt order: where it sits (for error messages) and its URL."""

    url: str
    param: str
    max_pixels: int | None = None
    min_pixels: int | None = None
    low_detail: bool = False


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict]  # OpenAI messages; image parts still carry their URLs (ImageRef order)
    images: list[ImageRef]
    sampling: dict[str, Any]  # SamplingParams fields the client set
    max_tokens: int | None
    stream: bool = False
    include_usage: bool = False
    response_format: dict | None = None  # {"type": "json_object"} | {"type": "json_schema", "schema": {...}}
    tools: list[dict] | None = None
    tool_choice: str | dict = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None
    n_video_frames: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def tools_active(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def forced_tool(self) -> str | None:
        """The function name a named tool_choice forces, "" for "required", None otherwise."""
        if isinstance(self.tool_choice, dict):
            return self.tool_choice["function"]["name"]
        return "" if self.tool_choice == "required" else None


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _num(body: dict, key: str, lo: float, hi: float, *, integer: bool = False) -> float | int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise bad_request(f"'{key}' must be {'an integer' if integer else 'a number'}, got {_type_name(v)}", key,
                          "invalid_type")
    if not lo <= v <= hi:
        raise bad_request(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return v


def _bool(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_request(f"'{key}' must be a boolean, got {_type_name(v)}", key, "invalid_type")
    return v


def _pixels(obj: dict, key: str, where: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise bad_request(f"'{key}' must be a positive integer, got {v!r}", where)
    return v


def parse_chat_request(body: Any) -> ChatRequest:
    """The validated request, or APIError(400) naming the offending field."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_type_name(body)}", None, "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {_type_name(model)}", "model", "invalid_type")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad_request(f"only n=1 is supported, got n={n!r}: send one request per choice", "n")
    sampling: dict[str, Any] = {}
    for key, lo, hi in (("temperature", 0, 2), ("top_p", 1e-9, 1), ("min_p", 0, 1), ("presence_penalty", -2, 2),
                        ("frequency_penalty", -2, 2), ("repetition_penalty", 1e-3, 10)):
        if (v := _num(body, key, lo, hi)) is not None:
            sampling[key] = float(v)
    if (top_k := _num(body, "top_k", -1, 1 << 30, integer=True)) is not None:
        sampling["top_k"] = max(0, int(top_k))  # vLLM's -1 = off
    if (seed := _num(body, "seed", -(2**63), 2**64 - 1, integer=True)) is not None:
        sampling["seed"] = int(seed) % 2**63
    max_tokens = None
    for key in ("max_tokens", "max_completion_tokens"):  # both may come; the newer name wins
        if (v := _num(body, key, 1, 1 << 31, integer=True)) is not None:
            max_tokens = int(v)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
            raise bad_request(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings",
                              "stop")
        sampling["stop"] = tuple(stops)
    logprobs = _bool(body, "logprobs")
    top = _num(body, "top_logprobs", 0, 20, integer=True)
    if logprobs or top:
        sampling["logprobs"] = True
        sampling["top_logprobs"] = int(top or 0)
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", "stream_options", "invalid_type")
    include_usage = stream and _bool(opts or {}, "include_usage")
    req = ChatRequest(model=model, messages=[], images=[], sampling=sampling, max_tokens=max_tokens, stream=stream,
                      include_usage=include_usage, min_pixels=_pixels(body, "min_pixels", "min_pixels"),
                      max_pixels=_pixels(body, "max_pixels", "max_pixels"))
    req.messages = _messages(body.get("messages"), req)
    req.response_format = _response_format(body.get("response_format"))
    req.tools, req.tool_choice = _tools(body.get("tools"), body.get("tool_choice"))
    if req.response_format and req.forced_tool is not None:
        raise bad_request("response_format and a forced tool_choice cannot be combined", "response_format")
    return req


def _messages(messages: Any, req: ChatRequest) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "messages",
                          "invalid_type" if not isinstance(messages, list) else "empty_array")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object, got {_type_name(msg)}", where, "invalid_type")
        role = msg.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
        content = msg.get("content")
        calls = msg.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list):
                raise bad_request(f"{where}.tool_calls must be an array on an assistant message", f"{where}.tool_calls")
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise bad_request(f"{where}.tool_calls[{j}] needs a function with a name",
                                      f"{where}.tool_calls[{j}]")
        if content is None:
            if role != "assistant" or calls is None:
                raise bad_request(f"{where}.content is required for a {role} message", f"{where}.content")
        elif isinstance(content, list):
            if not content:
                raise bad_request(f"{where}.content must not be an empty array", f"{where}.content", "empty_array")
            content = [_part(p, f"{where}.content[{j}]", role, req) for j, p in enumerate(content)]
        elif not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string or an array of parts, got {_type_name(content)}",
                              f"{where}.content", "invalid_type")
        if role == "tool" and "tool_call_id" in msg and not isinstance(msg["tool_call_id"], str):
            raise bad_request(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id", "invalid_type")
        out.append({**msg, "content": content})
    return out


def _image(value: Any, where: str, req: ChatRequest, part: dict) -> dict:
    detail = None
    if isinstance(value, dict):
        detail, value = value.get("detail"), value.get("url")
        where += ".url"
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where} must be a URL string (data:, http(s): or a permitted file)", where, "invalid_type")
    if detail not in (None, "auto", "low", "high"):
        raise bad_request(f"detail must be auto, low or high, got {detail!r}", where)
    ref = ImageRef(value, where, _pixels(part, "max_pixels", where), _pixels(part, "min_pixels", where),
                   low_detail=detail == "low")
    req.images.append(ref)
    return {"type": "image_url", "image_url": {"url": value}, "_ref": len(req.images) - 1}


def _part(part: Any, where: str, role: str, req: ChatRequest) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise bad_request(f"{where} must be an object, got {_type_name(part)}", where, "invalid_type")
    kind = part.get("type")
    if kind in ("text", "input_text"):
        if not isinstance(part.get("text"), str):
            raise bad_request(f"{where}.text must be a string", f"{where}.text", "invalid_type")
        return {"type": "text", "text": part["text"]}
    if kind in ("image_url", "image", "input_image") and role in ("user", "tool"):
        return _image(part.get("image_url", part.get("image")), f"{where}.image_url", req, part)
    if kind == "video" and role in ("user", "tool"):
        frames = part.get("video")
        if not isinstance(frames, list) or not frames:
            raise bad_request(f"{where}.video must be a non-empty array of frame image URLs", f"{where}.video")
        refs = [_image(f, f"{where}.video[{k}]", req, {})["_ref"] for k, f in enumerate(frames)]
        req.n_video_frames += len(refs)
        opts = {k: part[k] for k in ("fps", "max_pixels", "min_pixels", "total_pixels") if k in part}
        return {"type": "video", "_refs": refs, **opts}
    if kind in ("image_url", "image", "input_image", "video"):
        raise bad_request(f"{where}: an {role} message cannot carry {kind} parts", where)
    raise bad_request(f"{where}.type must be text, image_url or video (frames), got {kind!r}", f"{where}.type")


def _response_format(rf: Any) -> dict | None:
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise bad_request("'response_format' must be an object", "response_format", "invalid_type")
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object", "schema": None}
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise bad_request("response_format.json_schema must be an object with a 'schema' object",
                              "response_format.json_schema")
        return {"type": "json_schema", "schema": js.get("schema") or None, "name": js.get("name")}
    raise bad_request(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                      "response_format.type")


def _tools(tools: Any, choice: Any) -> tuple[list[dict] | None, str | dict]:
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None, "none"
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", "tools", "invalid_type")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", f"tools[{i}]")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema object",
                              f"tools[{i}].function.parameters")
        names.append(fn["name"])
    choice = "auto" if choice is None else choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name not in names:
            raise bad_request(f"tool_choice names function {name!r}, which is not in tools {names}", "tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise bad_request(f"tool_choice must be none, auto, required or a function, got {choice!r}", "tool_choice")
    return (tools or None), choice


def check_limit(count: int, limit: int, what: str, param: str) -> None:
    if count > limit:
        raise APIError(400, f"{count} {what} in one request; this server takes at most {limit}", param=param,
                       code="too_many_images")
