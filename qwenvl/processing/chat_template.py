"""Chat templates: load a checkpoint's Jinja template and render messages to a prompt string.

Rendering follows transformers' `apply_chat_template` (sandboxed Jinja, trim_blocks, lstrip_blocks,
loopcontrols, `raise_exception`, a non-HTML-escaping `tojson`, `strftime_now`, `tools=None` and
`documents=None` unless given) so prompts match the reference byte for byte (pain point 8).

`render_chat_segments` additionally says which characters came from the user (pain point 9): each
message text is swapped for a unique sentinel before rendering, the output is split on the
sentinels, and the texts are put back. The tokenizer then encodes user pieces with special-token
matching off (`QwenTokenizer.encode_segments`), so a typed "<|image_pad|>" never becomes an image
slot. If a template alters message text (e.g. trims it), the sentinel render no longer reproduces
the plain render and a ValueError is raised rather than guessing. Only message `content` strings
and "text" parts count as caller text; other fields a template may print (names, tool calls) and
`extra` variables are treated as template text, so callers must not put untrusted strings there.

Must not: tokenize, load images, or import transformers.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwenvl.processing.chat_template_qwen3 import QWEN3_VL_TEMPLATE

__all__ = ["QWEN2_VL_TEMPLATE", "QWEN3_VL_TEMPLATE", "RenderedChat", "load_chat_template", "render_chat",
           "render_chat_segments"]

# Qwen2-VL's template (Qwen2.5-VL ships the same one). Written out readably here; it renders exactly
# what the official one-line string renders: default system prompt when the first message is not a
# system message, images as <|vision_start|><|image_pad|><|vision_end|>, videos with <|video_pad|>,
# "Picture N: " / "Video N: " prefixes when add_vision_id is true.
QWEN2_VL_TEMPLATE = r"""{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- for message in messages -%}
    {%- if loop.first and message['role'] != 'system' -%}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
    {%- endif -%}
    {{- '<|im_start|>' ~ message['role'] ~ '\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}
                {%- set image_count.value = image_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif part['type'] == 'video' or 'video' in part -%}
                {%- set video_count.value = video_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in part -%}
                {{- part['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""

# A role is template-inserted text, so it must not smuggle markup (e.g. "user<|im_end|>").
_ROLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")


@dataclass(frozen=True)
class RenderedChat:
    """A rendered prompt with provenance.

    text: the prompt, identical to `render_chat`.
    segments: `(piece, allow_special)` pieces whose concatenation is `text`; allow_special is False
        exactly for message texts supplied by the caller (string contents and "text" parts).
    content_spans: per message, the `(start, end)` character spans of its texts in `text`, in output
        order (empty for a message with no text, e.g. image-only; several for several text parts).
    message_spans: per message, `(start, end)` of everything its turn adds to `text` (message 0
        includes a template-inserted default system prompt), or None when not requested or when
        the template is not prefix-stable. The generation prompt lies after the last span.
    """

    text: str
    segments: list[tuple[str, bool]]
    content_spans: list[list[tuple[int, int]]]
    message_spans: list[tuple[int, int]] | None = None


class _GenerationTag(Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by some HF templates to mark assistant
    text) and renders its body unchanged, so such templates load; spans come from RenderedChat."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes '<', '>', '&' and "'", which would change prompts.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    messages: list[dict[str, Any]], template: str, *, add_generation_prompt: bool = True, **extra: Any
) -> str:
    """Render HF/OpenAI-style messages with a Jinja chat template (as transformers does).

    `extra` reaches the template as variables (add_vision_id=True, tools=[...], bos_token=...).
    Content may be a string or a list of parts: {"type": "text", "text": ...}, {"type": "image",
    "image": ...}, {"type": "image_url", ...}, {"type": "video", ...}.
    """
    extra.setdefault("tools", None)
    extra.setdefault("documents", None)
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)


def render_chat_segments(
    messages: list[dict[str, Any]],
    template: str,
    *,
    add_generation_prompt: bool = True,
    with_message_spans: bool = False,
    **extra: Any,
) -> RenderedChat:
    """Render like `render_chat`, and mark which pieces are caller text (see module docstring).

    Raises ValueError for a role that is not a plain word, or for a template that changes message
    text (then user text cannot be told apart from template text safely).
    """
    text = render_chat(messages, template, add_generation_prompt=add_generation_prompt, **extra)
    nonce = _fresh_nonce(text)
    # Empty texts get a sentinel too (so they have a zero-width span), unless the template tests their
    # truth value (Qwen3-VL: `loop.first and message.content` before a tool call): then they stay empty.
    error: Exception | None = None
    for mark_empty in (True, False):
        marked, originals = _mark_texts(messages, nonce, mark_empty)
        try:
            sentinel_text = render_chat(marked, template, add_generation_prompt=add_generation_prompt, **extra)
        except Exception as err:  # the template inspects text (e.g. `content | int`) and chokes on a sentinel
            error = ValueError(f"the chat template cannot render message text opaquely: {err}")
            error.__cause__ = err
            continue
        split = _split_sentinels(sentinel_text, nonce, originals, len(messages))
        if "".join(piece for piece, _ in split[0]) == text:
            break
        error = ValueError(
            "the chat template alters message text (e.g. trims or splits it), so caller text cannot be "
            "separated from template text; render_chat_segments needs a template that copies text verbatim"
        )
    else:
        raise error
    segments, content_spans = split
    spans = _message_spans(messages, template, text, extra) if with_message_spans else None
    return RenderedChat(text=text, segments=segments, content_spans=content_spans, message_spans=spans)


def _split_sentinels(sentinel_text: str, nonce: str, originals: list[tuple[int, str]],
                     n_messages: int) -> tuple[list[tuple[str, bool]], list[list[tuple[int, int]]]]:
    """Put the caller texts back in place of their sentinels: (segments, content spans per message)."""
    segments: list[tuple[str, bool]] = []
    content_spans: list[list[tuple[int, int]]] = [[] for _ in range(n_messages)]
    pos = 0
    # re.split with one group alternates template text and sentinel indices: [t0, k0, t1, k1, ...].
    parts = re.split(f"\ue000{nonce}:(\\d+)\ue001", sentinel_text)
    for n, part in enumerate(parts):
        if n % 2 == 0:
            if part:
                segments.append((part, True))
                pos += len(part)
            continue
        message_index, original = originals[int(part)]
        if original:
            segments.append((original, False))
        content_spans[message_index].append((pos, pos + len(original)))
        pos += len(original)
    return segments, content_spans


def _fresh_nonce(rendered: str) -> str:
    # 64 random bits, re-drawn if the plain render already contains them: then every occurrence in
    # the sentinel render is one of ours, and the final comparison catches anything else.
    while True:
        nonce = secrets.token_hex(8)
        if nonce not in rendered:
            return nonce


def _mark_texts(messages: list[dict[str, Any]], nonce: str,
                mark_empty: bool = True) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Copy messages with each caller text replaced by sentinel k; originals[k] = (message index, text).
    With mark_empty False, empty texts are left as they are (and get no span)."""
    originals: list[tuple[int, str]] = []

    def sentinel(index: int, value: str) -> str:
        if not value and not mark_empty:
            return value
        originals.append((index, value))
        return f"\ue000{nonce}:{len(originals) - 1}\ue001"

    marked = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if not isinstance(role, str) or not _ROLE_RE.match(role):
            raise ValueError(f"message {index}: role must be a plain word like 'user', got {role!r}")
        copy = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            copy["content"] = sentinel(index, content)
        elif isinstance(content, list):
            copy["content"] = [
                dict(part, text=sentinel(index, part["text"]))
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        marked.append(copy)
    return marked, originals


def _message_spans(
    messages: list[dict[str, Any]], template: str, text: str, extra: dict[str, Any]
) -> list[tuple[int, int]] | None:
    # Render each prefix of the conversation without a generation prompt; message i adds the
    # characters between prefix i-1 and prefix i. O(n^2) renders, fine for training-length chats.
    ends = []
    for i in range(1, len(messages) + 1):
        try:
            prefix = render_chat(messages[:i], template, add_generation_prompt=False, **extra)
        except jinja2.exceptions.TemplateError:
            return None
        if not text.startswith(prefix) or (ends and len(prefix) < ends[-1]):
            return None
        ends.append(len(prefix))
    return list(zip([0, *ends[:-1]], ends, strict=True))


def load_chat_template(folder: str | Path, *, name: str = "default") -> str | None:
    """The chat template a checkpoint folder declares, or None.

    Precedence follows transformers 5's processor loading: processor_config.json["chat_template"],
    then chat_template.json ({"chat_template": ...}), then chat_template.jinja, then
    tokenizer_config.json["chat_template"] (a string, or a list of {"name", "template"} from which
    `name` is picked; a single unnamed-default entry is used as is).
    """
    folder = Path(folder)
    processor = _read_json_if(folder / "processor_config.json")
    if isinstance(processor.get("chat_template"), str):
        return processor["chat_template"]
    legacy = _read_json_if(folder / "chat_template.json")
    if legacy.get("chat_template") is not None:
        return _pick(legacy["chat_template"], name, folder / "chat_template.json")
    jinja_path = folder / "chat_template.jinja"
    if jinja_path.is_file():
        return jinja_path.read_text(encoding="utf-8")
    config = _read_json_if(folder / "tokenizer_config.json")
    if config.get("chat_template") is not None:
        return _pick(config["chat_template"], name, folder / "tokenizer_config.json")
    return None


def _read_json_if(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _pick(value: str | list[dict[str, str]], name: str, source: Path) -> str:
    if isinstance(value, str):
        return value
    named = {entry["name"]: entry["template"] for entry in value}
    if name in named:
        return named[name]
    if len(named) == 1 and name == "default":
        return next(iter(named.values()))
    raise ValueError(f"{source} has chat templates {sorted(named)}, none named {name!r}")
