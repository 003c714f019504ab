"""Read conversation datasets into the project's record format; convert back to Qwen-VL's finetune format.

Our record (one JSON object per line):
    {"id", "task", "lang", "messages": [{"role", "content": [{"type": "image", "image": path},
                                                           {"type": "text", "text": ...}]}], "meta": {...}}
`load_records` also accepts, per record:
  * OpenAI / HF `messages` (string content, `image_url` / `video_url` parts, `{"image": ...}` parts);
  * the official Qwen-VL finetune format `{"id", "conversations": [{"from": "user", "value":
    "Picture 1: <img>path</img>\\nWhat is this?"}, {"from": "assistant", "value": "..."}]}`, where each
    <img>..</img> becomes an image part and <ref>/<box> text is kept as is (LLaVA-style "human"/"gpt"
    roles and `<image>` placeholders with a top-level "image" are read too).
A file ending in .json may hold a list of records (the finetune repo's layout); anything else is JSONL.
Relative local paths are resolved against the data file's folder; URLs and data: URLs are left alone.
Must not: open images (a missing or corrupt image is the training loader's error to report).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qwenvl.processing.messages import ROLES, normalize_part

_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "tool": "tool"}
_IMG = re.compile(r"(?:Picture \d+:\s*)?<img>(.*?)</img>\n?", re.DOTALL)
_REMOTE = ("http://", "https://", "data:", "file://")


class RecordError(ValueError):
    """A malformed record; the message names the file and line (or record index)."""


def load_records(path: str | os.PathLike, resolve_paths: bool = True) -> Iterator[dict]:
    """Records of a JSONL (or .json list) file in our format, whatever the input format was."""
    path = Path(path)
    base = path.parent if resolve_paths else None
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        items = data if isinstance(data, list) else [data]
        for i, obj in enumerate(items):
            yield to_record(obj, base, where=f"{path}: record {i}", default_id=f"{path.stem}-{i}")
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            yield to_record(obj, base, where=f"{path}:{lineno}", default_id=f"{path.stem}-{lineno}")


def to_record(obj: Any, base: Path | None = None, where: str = "record", default_id: str = "") -> dict:
    """One input object (any accepted format) as our record; base resolves relative paths."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = [_message(m, i, where) for i, m in enumerate(_list(obj["messages"], "messages", where))]
    elif "conversations" in obj:
        llava_images = obj.get("image") or obj.get("images") or []
        llava_images = [llava_images] if isinstance(llava_images, str) else list(llava_images)
        messages = _from_conversations(_list(obj["conversations"], "conversations", where), llava_images, where)
    else:
        raise RecordError(f"{where}: expected a 'messages' or a 'conversations' list, found keys {sorted(obj)}")
    if base is not None:
        for m in messages:
            for part in m["content"]:
                _resolve(part, base)
    rec = {"id": obj.get("id", default_id), "task": obj.get("task"), "lang": obj.get("lang"), "messages": messages,
           "meta": obj.get("meta", {})}
    rec.update({k: v for k, v in obj.items() if k not in rec and k not in ("conversations", "image", "images")})
    return rec


def _list(value: Any, name: str, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{where}: '{name}' must be a non-empty list")
    return value


def _message(m: Any, i: int, where: str) -> dict:
    if not isinstance(m, dict) or "role" not in m:
        raise RecordError(f"{where}: message {i} must be an object with a 'role'")
    role = _ROLE.get(m["role"], m["role"])
    if role not in ROLES:
        raise RecordError(f"{where}: message {i} has unknown role {m['role']!r}")
    content = m.get("content")
    if content is None:
        content = ""
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        try:
            parts = [normalize_part(p, f"{where}: message {i} part {j}") for j, p in enumerate(content)]
        except ValueError as e:
            raise RecordError(str(e)) from None
    else:
        raise RecordError(f"{where}: message {i} content must be a string or a list of parts")
    return {**{k: v for k, v in m.items() if k != "content"}, "role": role, "content": parts}


def _from_conversations(turns: list, llava_images: list, where: str) -> list[dict]:
    messages = []
    pending = list(llava_images)
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "value" not in t or "from" not in t:
            raise RecordError(f"{where}: conversation turn {i} needs 'from' and 'value'")
        role = _ROLE.get(str(t["from"]).lower())
        if role is None:
            raise RecordError(f"{where}: conversation turn {i} has unknown speaker {t['from']!r}")
        if not isinstance(t["value"], str):
            raise RecordError(f"{where}: conversation turn {i} 'value' must be a string")
        messages.append({"role": role, "content": _split_images(t["value"], pending, where)})
    return messages


def _split_images(value: str, pending: list, where: str) -> list[dict]:
    """'Picture 1: <img>a.png</img>\\nQ' -> [image a.png, text Q]; '<image>' takes the next top-level image."""
    parts: list[dict] = []
    pos = 0
    for m in re.finditer(rf"{_IMG.pattern}|<image>\n?", value, re.DOTALL):
        text = value[pos:m.start()]
        if text:
            parts.append({"type": "text", "text": text})
        if m.group(1) is not None:
            parts.append({"type": "image", "image": m.group(1).strip()})
        else:
            if not pending:
                raise RecordError(f"{where}: more <image> placeholders than entries in 'image'")
            parts.append({"type": "image", "image": pending.pop(0)})
        pos = m.end()
    if value[pos:] or not parts:
        parts.append({"type": "text", "text": value[pos:]})
    return parts


def _local(src: Any) -> bool:
    return isinstance(src, str) and not src.startswith(_REMOTE) and not os.path.isabs(src)


def _resolve(part: dict, base: Path) -> None:
    kind = part["type"]
    if kind == "image" and _local(part["image"]):
        part["image"] = str(base / part["image"])
    elif kind == "video":
        src = part["video"]
        if isinstance(src, list):
            part["video"] = [str(base / s) if _local(s) else s for s in src]
        elif _local(src):
            part["video"] = str(base / src)


def to_finetune(record: dict) -> dict:
    """Our record as the official Qwen-VL finetune format; images are numbered across the conversation."""
    turns, k = [], 0
    for m in record["messages"]:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        pieces = []
        for part in content:
            if part["type"] == "image":
                k += 1
                pieces.append(f"Picture {k}: <img>{part['image']}</img>\n")
            elif part["type"] == "text":
                pieces.append(part["text"])
            else:
                raise ValueError(f"record {record.get('id')}: the Qwen-VL finetune format has no {part['type']} parts")
        turns.append({"from": m["role"], "value": "".join(pieces)})
    return {"id": record.get("id"), "conversations": turns}


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write records one per line (UTF-8, no ASCII escaping); returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
