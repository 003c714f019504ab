"""OpenAI tools and tool calls in Qwen's Hermes convention: render them, and parse them back out of replies.

The convention is the one the Qwen3-VL chat template writes (chat_template_qwen3.py), text for text:
  system:    [system prompt + "\\n\\n"] "# Tools ... <tools>\\n{tool json}\\n...</tools> ... </tool_call>"
  assistant: [content + "\\n"] '<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>', "\\n" between calls
  tool:      "<tool_response>\\n{result}\\n</tool_response>" in a user turn, consecutive tool messages in one turn
A template that renders `tools` itself gets them as they are; for the others (Qwen2-VL / Qwen2.5-VL templates,
v1's code-built ChatML) `hermes_messages` rewrites the conversation into system / user / assistant messages
that render to the same text. Its tag strings (<tool_call>, <tool_response>, ...) are split into text parts
flagged MARKUP, so a processor can encode them as template text (real Qwen vocabularies hold <tool_call> as an
added token) while caller strings around them (results, arguments, descriptions) stay escaped.

Must not: tokenize, load images, or know a model family; parse_tool_calls never executes or validates
arguments beyond JSON.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from jinja2 import meta

from qwenvl.processing.chat_template import _compile, render_chat

TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>\n"
TOOL_RESPONSE_CLOSE = "\n</tool_response>"
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call>")
TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
MARKUP = "markup"  # key of a text part that hermes_messages wrote (a tag), not the caller
_TAG_RE = re.compile("(" + "|".join(map(re.escape, TAGS)) + ")")
_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def validate_tools(tools: Any) -> list[dict] | None:
    """OpenAI `tools` ([{"type": "function", "function": {"name", "description", "parameters"}}]) as a list,
    or None for None / []. Raises ValueError naming the tool and the problem."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list of {{'type': 'function', 'function': {{...}}}}, "
                         f"got {type(tools).__name__}")
    for k, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ValueError(f"tools[{k}] must be an object, got {type(tool).__name__}")
        if tool.get("type", "function") != "function":
            raise ValueError(f"tools[{k}]: type must be 'function', got {tool.get('type')!r}")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise ValueError(f"tools[{k}] needs a 'function' object")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{k}].function needs a string 'name'")
        if "parameters" in fn and not isinstance(fn["parameters"], Mapping):
            raise ValueError(f"tools[{k}].function.parameters must be an object (a JSON schema)")
    return list(tools) or None


def validate_tool_calls(calls: Any, where: str) -> None:
    """An assistant message's `tool_calls`: a list of {"function": {"name": str, "arguments": str | object}}
    (the flat {"name", "arguments"} form that HF templates also take is accepted). Raises ValueError."""
    if not isinstance(calls, list):
        raise ValueError(f"{where}: tool_calls must be a list")
    for k, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"{where}: tool_calls[{k}] needs a function with a string 'name'")
        if not isinstance(fn.get("arguments"), str | Mapping):
            raise ValueError(f"{where}: tool_calls[{k}].function.arguments must be a JSON string or an object")


@lru_cache(maxsize=32)
def template_renders_tools(template: str) -> bool:
    """Whether a Jinja chat template reads the `tools` variable (Qwen3-VL's does; Qwen2-VL's does not)."""
    env = _compile(template).environment
    return "tools" in meta.find_undeclared_variables(env.parse(template))


@lru_cache(maxsize=32)
def default_system_prompt(template: str) -> str | None:
    """The system prompt a template inserts when the conversation has none (Qwen2-VL: 'You are a helpful
    assistant.'), found by rendering one empty user turn; None if it inserts none."""
    text = render_chat([{"role": "user", "content": ""}], template, add_generation_prompt=False)
    head = "<|im_start|>system\n"
    if text.startswith(head) and "<|im_end|>" in text:
        return text[len(head):text.index("<|im_end|>")]
    return None


def needs_hermes(messages: Sequence[Mapping[str, Any]], tools: list[dict] | None) -> bool:
    """Whether a conversation uses tools at all: tools given, a tool message, or an assistant tool call."""
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def tools_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system-prompt block listing the tools, as the Qwen3-VL template writes it (tojson per tool)."""
    return TOOLS_HEADER + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_FOOTER


def _call_body(call: Mapping[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn["arguments"]
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return f'{{"name": "{fn["name"]}", "arguments": {args}}}'


def tool_call_text(call: Mapping[str, Any]) -> str:
    """'<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>'; string arguments are copied verbatim."""
    return TOOL_CALL_OPEN + _call_body(call) + TOOL_CALL_CLOSE


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content or [] if p.get("type") == "text")


def _split(text: str) -> list[dict]:
    """Text parts with the tags split out and flagged MARKUP; empty pieces dropped."""
    return [{"type": "text", "text": piece, **({MARKUP: True} if piece in TAGS else {})}
            for piece in _TAG_RE.split(text) if piece]


def _caller(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [p for p in content if p.get("type") != "text" or p["text"]]


def hermes_messages(messages: Sequence[Mapping[str, Any]], tools: list[dict] | None = None, *,
                    default_system: str | None = None) -> list[dict]:
    """Rewrite normalised messages (roles system / user / assistant / tool) with tools into system / user /
    assistant messages that a plain ChatML template renders exactly as Qwen3-VL's template renders the
    original (module docstring). default_system: the family's default system prompt, kept before the tools
    block when the conversation has no system message. Content comes back as text parts (tags flagged
    MARKUP) plus any image / video parts of tool results, in order; messages without tools are copied.
    """
    out: list[dict] = []
    rest = list(messages)
    if tools:
        system: list[dict] = []
        if rest and rest[0]["role"] == "system":
            system = _caller(_text(rest.pop(0)["content"]) + "\n\n")
        elif default_system:
            system = _caller(default_system + "\n\n")
        tool_json = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        system += [*_split(TOOLS_HEADER), *_caller(tool_json), *_split(TOOLS_FOOTER)]
        out.append({"role": "system", "content": system})
    for msg in rest:
        role = msg["role"]
        if role == "tool":
            turn = [*_split(TOOL_RESPONSE_OPEN), *_caller(msg["content"]), *_split(TOOL_RESPONSE_CLOSE)]
            if out and out[-1].get("_tool_turn"):
                out[-1]["content"] += _split("\n") + turn
            else:
                out.append({"role": "user", "content": turn, "_tool_turn": True})
        elif role == "assistant" and msg.get("tool_calls"):
            # Qwen3's template: "\n" before a call unless it is the first and the content is empty
            parts = _caller(_text(msg["content"]))
            for k, call in enumerate(msg["tool_calls"]):
                if k or msg["content"]:
                    parts += _caller("\n")
                parts += [*_split(TOOL_CALL_OPEN), *_caller(_call_body(call)), *_split(TOOL_CALL_CLOSE)]
            out.append({"role": "assistant", "content": parts})
        else:
            out.append(dict(msg))
    for m in out:
        m.pop("_tool_turn", None)
    return out


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Split a generated reply into (content, tool calls in OpenAI shape).

    Each `<tool_call>...</tool_call>` block whose body is a JSON object with a string "name" becomes
    {"id": "call_<24 hex>", "type": "function", "function": {"name": ..., "arguments": <JSON string>}} and
    leaves the content; other blocks (bad JSON, no name, unclosed) stay in it. Content is stripped.

    >>> parse_tool_calls('Sure.\\n<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>')[1][0]["function"]
    {'name': 'f', 'arguments': '{"x": 1}'}
    """
    calls: list[dict] = []

    def take(match: re.Match) -> str:
        try:
            obj = json.loads(match.group(1))
        except ValueError:
            return match.group(0)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return match.group(0)
        args = obj.get("arguments", {})
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": obj["name"], "arguments": args}})
        return ""

    content = _CALL_RE.sub(take, text)
    return content.strip(), calls


def special_strings_in(value: Any, tokens: Sequence[str]) -> str | None:
    """The first of `tokens` found in any string inside value (dicts, lists, keys too), else None."""
    if isinstance(value, str):
        return next((t for t in tokens if t in value), None)
    if isinstance(value, Mapping):
        return next((s for k, v in value.items() if (s := special_strings_in(k, tokens) or
                                                     special_strings_in(v, tokens))), None)
    if isinstance(value, list | tuple):
        return next((s for v in value if (s := special_strings_in(v, tokens))), None)
    return None
