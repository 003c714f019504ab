"""Qwen-VL v1 prompt formats: `from_list_format`, ChatML `make_context`, the raw base-model format,
stop words, response decoding, and HF/OpenAI `messages` -> v1 query/history (architecture-facts A.7-A.8).

Trust model: a `str` query is markup written by the application, so the v1 tags (`<img>`, `<ref>`,
`<box>`, ...) in it are special, exactly as in the original `make_context`; a `str` reply keeps only
the grounding tags special. Item lists and `messages` carry user text separately; that text is encoded
with no special tokens, so a literal `<img>` typed by a user stays text (pain point 9) while image
items still become image spans. Without tag literals in user text, both routes give the same ids.

Must not: load images or the model, or know any other generation's template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qwenvl.processing.tokenizer_v1 import (
    IM_END,
    IM_START,
    IMAGE_TAGS,
    IMG_END,
    IMG_PAD,
    IMG_START,
    AllowSpecial,
    QwenV1Tokenizer,
)

DEFAULT_SYSTEM = "You are a helpful assistant."
MAX_WINDOW_SIZE = 6144  # Qwen-VL-Chat generation_config: history is cut to fit this many tokens
ChatFormat = Literal["chatml", "raw"]
# {"image": path[, "picture": n]} | {"text": str} | {"box": (x1, y1, x2, y2) or a list of them, "ref": str}
Item = Mapping[str, Any]
Query = str | Sequence[Item]
Pieces = list[tuple[str, AllowSpecial]]


# ------------------------------------------------------------------------- list format


def _box_strings(box: Any) -> list[str]:
    """One box (x1, y1, x2, y2) or a list of them -> ['(x1,y1),(x2,y2)', ...] (per-mille ints)."""
    boxes = [box] if len(box) == 4 and all(isinstance(v, int | float) for v in box) else list(box)
    out = []
    for b in boxes:
        if len(b) != 4:
            raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {b!r}")
        x1, y1, x2, y2 = (int(v) for v in b)  # %d semantics: truncate toward zero
        out.append(f"({x1},{y1}),({x2},{y2})")
    return out


def list_pieces(items: Sequence[Item], first_picture: int = 1) -> Pieces:
    """Items -> (text, allowed special tokens) pieces; joined texts equal `from_list_format`."""
    tags = set(IMAGE_TAGS)
    pieces: Pieces = []
    picture = first_picture
    for item in items:
        if "image" in item:
            # Spaced form "Picture 1: <img>" (A.7b); the path is data, so no tags are read inside it.
            # An explicit "picture" number (set by messages_to_v1 for later turns) restarts the count.
            picture = int(item.get("picture", picture))
            pieces += [(f"Picture {picture}: <img>", tags), (str(item["image"]), False), ("</img>\n", tags)]
            picture += 1
        elif "text" in item:
            pieces.append((str(item["text"]), False))
        elif "box" in item:
            if item.get("ref") is not None:
                pieces += [("<ref>", tags), (str(item["ref"]), False), ("</ref>", tags)]
            pieces += [(f"<box>{b}</box>", tags) for b in _box_strings(item["box"])]
        else:
            raise ValueError(f"unknown item {dict(item)!r}: expected an 'image', 'text' or 'box' key")
    return pieces


def from_list_format(items: Sequence[Item], first_picture: int = 1) -> str:
    """`[{'image': p}, {'text': t}, {'box': (x1,y1,x2,y2), 'ref': r}]` -> the v1 prompt text.

    >>> from_list_format([{"image": "a.jpg"}, {"text": "What is this?"}])
    'Picture 1: <img>a.jpg</img>\\nWhat is this?'
    """
    return "".join(text for text, _ in list_pieces(items, first_picture))


# A model's reply may say "<img>" in prose but never carries an image; the original would read it as an
# (unclosed) image tag and fail, so replies keep only the grounding tags special.
RESPONSE_TAGS = frozenset(IMAGE_TAGS) - {IMG_START, IMG_END, IMG_PAD}


def _content_pieces(content: Query, tags: frozenset[str] = frozenset(IMAGE_TAGS)) -> Pieces:
    if isinstance(content, str):
        return [(content, tags)]
    return list_pieces(content)


def _content_text(content: Query) -> str:
    return "".join(text for text, _ in _content_pieces(content))


# ------------------------------------------------------------------------- ChatML / raw


def _turn(tok: QwenV1Tokenizer, role: str, content: Query) -> tuple[str, list[int]]:
    """`<|im_start|>{role}\\n{content}<|im_end|>`: role, newline and content are tokenised
    separately (A.8), so BPE never merges across those borders."""
    ids = [
        tok.im_start_id,
        *tok.encode(role),
        *tok.encode("\n"),
        *tok.encode_pieces(_content_pieces(content, RESPONSE_TAGS if role == "assistant" else frozenset(IMAGE_TAGS))),
    ]
    return f"{IM_START}{role}\n{_content_text(content)}{IM_END}", [*ids, tok.im_end_id]


def make_context(
    tok: QwenV1Tokenizer,
    query: Query,
    history: Sequence[tuple[Query, str]] | None = None,
    system: str = DEFAULT_SYSTEM,
    max_window_size: int = MAX_WINDOW_SIZE,
    chat_format: ChatFormat = "chatml",
) -> tuple[str, list[int]]:
    """Build the prompt: (prompt_text, token_ids).

    chatml: `<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{q1}<|im_end|>\\n<|im_start|>
    assistant\\n{a1}<|im_end|>\\n ... <|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n`.
    Oldest history turns are dropped while system + kept history would reach max_window_size
    (the current query is not counted, as in the original).
    raw (base model): the query alone; system is ignored and history must be empty.
    """
    history = list(history or [])
    if chat_format == "raw":
        if history:
            raise ValueError("chat_format='raw' (base model) has no turns; pass the whole prompt as query")
        return _content_text(query), tok.encode_pieces(_content_pieces(query))
    if chat_format != "chatml":
        raise ValueError(f"chat_format must be 'chatml' or 'raw', got {chat_format!r}")

    nl = tok.encode("\n")
    system_text, system_ids = _turn(tok, "system", system)
    kept_text, kept_ids = "", []
    for past_query, response in reversed(history):
        q_text, q_ids = _turn(tok, "user", past_query)
        r_text, r_ids = _turn(tok, "assistant", response)
        turn_ids = [*nl, *q_ids, *nl, *r_ids]
        if len(system_ids) + len(turn_ids) + len(kept_ids) >= max_window_size:
            break  # this turn and every older one no longer fit
        kept_ids = turn_ids + kept_ids
        kept_text = f"\n{q_text}\n{r_text}" + kept_text

    q_text, q_ids = _turn(tok, "user", query)
    ids = [*system_ids, *kept_ids, *nl, *q_ids, *nl, tok.im_start_id, *tok.encode("assistant"), *nl]
    text = f"{system_text}{kept_text}\n{q_text}\n{IM_START}assistant\n"
    return text, ids


def stop_words_ids(tok: QwenV1Tokenizer, chat_format: ChatFormat = "chatml") -> list[list[int]]:
    """Id sequences that end generation: chatml [[im_end], [im_start]]; raw [encode('Human:'), [eod]]."""
    if chat_format == "chatml":
        return [[tok.im_end_id], [tok.im_start_id]]
    if chat_format == "raw":
        return [tok.encode("Human:"), [tok.eod_id]]
    raise ValueError(f"chat_format must be 'chatml' or 'raw', got {chat_format!r}")


def decode_response(tok: QwenV1Tokenizer, ids: Sequence[int], chat_format: ChatFormat = "chatml") -> str:
    """Generated ids (prompt excluded) -> response text, cut at the first stop token and stripped."""
    stops = {tok.im_start_id, tok.im_end_id, tok.eod_id} if chat_format == "chatml" else {tok.eod_id}
    end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    text = tok.decode(ids[:end])
    if chat_format == "raw":
        text = text.split("Human:", 1)[0]
    return text.strip()


# ------------------------------------------------------------------------- messages API


@dataclass
class V1Chat:
    """A conversation in v1 terms: feed to `make_context(tok, chat.query, chat.history, chat.system)`."""

    system: str = DEFAULT_SYSTEM
    history: list[tuple[list[Item], str]] = field(default_factory=list)
    query: list[Item] = field(default_factory=list)


def _part_image(part: Mapping[str, Any]) -> str:
    value = part.get("image", part.get("image_url", part.get("url", part.get("path"))))
    if isinstance(value, Mapping):  # OpenAI: {"type": "image_url", "image_url": {"url": ...}}
        value = value.get("url")
    if not isinstance(value, str):
        raise TypeError(
            f"Qwen-VL v1 carries image paths inside the token ids; give an image part a path/URL string, "
            f"got {type(value).__name__}"
        )
    return value


def _items(content: str | Sequence[Mapping[str, Any]]) -> list[Item]:
    if isinstance(content, str):
        return [{"text": content}]
    items: list[Item] = []
    for part in content:
        kind = part.get("type", "text")
        if kind in ("image", "image_url"):
            items.append({"image": _part_image(part)})
        elif kind == "text":
            items.append({"text": part.get("text", "")})
        elif kind == "box":
            items.append({"box": part["box"], "ref": part.get("ref")})
        else:
            raise ValueError(f"Qwen-VL v1 supports text, image and box content parts, not {kind!r}")
    return items


def _text_only(content: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type", "text") == "text")


def messages_to_v1(messages: Sequence[Mapping[str, Any]]) -> V1Chat:
    """HF/OpenAI `messages` -> V1Chat. The conversation must end with a user message.

    Pictures are numbered across the whole conversation ("Picture 3:" in turn 2 follows two pictures
    in turn 1), so a number names one image in every turn (pain point 7); `from_list_format` alone
    starts at 1 on each call. Consecutive messages of one role are merged. All user text is escaped:
    a legacy caller who writes `<img>path</img>` into text must use `make_context` with a str query.
    """
    chat = V1Chat()
    turns: list[tuple[str, list[Item] | str]] = []
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg.get("content") or ""  # OpenAI sends None for tool-call turns
        if role == "system":
            if i != 0:
                raise ValueError("a system message must come first")
            chat.system = _text_only(content)
        elif role == "user":
            items = _items(content)
            if turns and turns[-1][0] == "user":
                turns[-1] = ("user", [*turns[-1][1], *items])
            else:
                turns.append(("user", items))
        elif role == "assistant":
            if not turns:
                raise ValueError("an assistant message needs a user message before it")
            text = _text_only(content)
            if turns[-1][0] == "assistant":
                turns[-1] = ("assistant", turns[-1][1] + text)
            else:
                turns.append(("assistant", text))
        else:
            raise ValueError(f"unknown role {role!r}")
    if not turns or turns[-1][0] != "user":
        raise ValueError("messages must end with a user message")

    picture = 1
    numbered: list[list[Item]] = []
    for role, content in turns:
        if role != "user":
            continue
        items = []
        for it in content:
            if "image" in it:
                it = {**it, "picture": picture}
                picture += 1
            items.append(it)
        numbered.append(items)
    responses = [c for r, c in turns if r == "assistant"]
    chat.history = list(zip(numbered[:-1], responses, strict=True))
    chat.query = numbered[-1]
    return chat
