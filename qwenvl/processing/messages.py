"""Normalise HF / OpenAI / qwen-vl-utils style chat messages and collect their vision items in order.

Accepted content parts (a message's content may also be a plain string):
  {"type": "text", "text": ...}
  {"type": "image", "image": path | PIL image | data URL | bytes, ["min_pixels", "max_pixels"]}
  {"type": "image_url", "image_url": {"url": ...} | str}            (OpenAI)
  {"type": "video", "video": path | list of frames | uint8 array, ["fps", "nframes", "max_pixels", ...,
                                                                  "source_fps"]}
  {"type": "video_url", "video_url": {"url": ...} | str}
Message shapes as OpenAI clients send them: role "developer" is read as "system"; system and assistant
content holds text parts only; `content: null` (an assistant turn that carries `tool_calls`) is "";
tool messages (`tool_call_id`, string or parts content) and `name` fields pass through for the template.
Must not: load pixels (that is image.py / video.py) or know a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwenvl.processing.tools import validate_tool_calls

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
TEXT_ONLY_ROLES = ("system", "assistant")


@dataclass
class VisionItem:
    kind: str  # "image" | "video"
    source: Any
    options: dict = field(default_factory=dict)  # per-item min_pixels / max_pixels / fps / nframes ...


def _url(value: Any) -> Any:
    return value.get("url") if isinstance(value, dict) else value


def normalize_part(part: Any, where: str) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise ValueError(f"{where}: a content part must be a dict or a string, got {type(part).__name__}")
    kind = part.get("type")
    if kind is None:  # qwen-vl-utils style {"image": ...} without "type"
        kind = next((k for k in ("text", "image", "image_url", "video", "video_url") if k in part), None)
    opts = {k: v for k, v in part.items() if k not in ("type", "text", "image", "image_url", "video", "video_url")}
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}: a text part needs a string 'text'")
        return {"type": "text", "text": part["text"]}
    if kind in ("image", "image_url", "input_image"):
        src = part.get("image", _url(part.get("image_url")))
        if src is None:
            raise ValueError(f"{where}: an image part needs 'image' or 'image_url'")
        return {"type": "image", "image": src, **opts}
    if kind in ("video", "video_url"):
        src = part.get("video", _url(part.get("video_url")))
        if src is None:
            raise ValueError(f"{where}: a video part needs 'video' or 'video_url'")
        return {"type": "video", "video": src, **opts}
    raise ValueError(f"{where}: unknown content part type {kind!r} (expected text, image, image_url, video)")


def normalize_messages(messages: Any) -> tuple[list[dict], list[VisionItem]]:
    """Validated copies of the messages (parts in canonical form) and the vision items in prompt order."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out, items = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ValueError(f"message {i} must be a dict with a 'role'")
        role = ROLE_ALIASES.get(msg["role"], msg["role"]) if isinstance(msg["role"], str) else msg["role"]
        if role not in ROLES:
            raise ValueError(f"message {i}: role {msg['role']!r} is not one of {(*ROLES, *ROLE_ALIASES)}")
        if msg.get("tool_calls") is not None:
            if role != "assistant":
                raise ValueError(f"message {i}: only an assistant message can carry tool_calls, not {role!r}")
            validate_tool_calls(msg["tool_calls"], f"message {i}")
        content = msg.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append({**msg, "role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ValueError(f"message {i}: content must be a string or a list of parts")
        parts = [normalize_part(p, f"message {i} part {j}") for j, p in enumerate(content)]
        for j, p in enumerate(parts):
            if p["type"] != "text":
                if role in TEXT_ONLY_ROLES:
                    raise ValueError(f"message {i} part {j}: {msg['role']} messages hold only text parts, "
                                     f"got {p['type']!r}")
                opts = {k: v for k, v in p.items() if k not in ("type", p["type"])}
                items.append(VisionItem(p["type"], p[p["type"]], opts))
        out.append({**msg, "role": role, "content": parts})
    return out, items
