"""Training examples with loss masks: a chat conversation -> (ModelInputs, labels).

Labels come from the ROLE SPANS of the rendered conversation, never from searching the ids for a
token such as "assistant" or <|im_end|> (pain point 5): a user who types either string cannot open
a label span. Supervised, per assistant message: its content and the end token the template writes
after it (<|im_end|>). Not supervised: system and user turns, the assistant header
`<|im_start|>assistant\\n`, the "\\n" after <|im_end|>, and vision slots (always IGNORE).

Tools (`tools=[...]`, assistant `tool_calls`, `tool` messages): the conversation is rendered through the
processor's own path (`Qwen2VLProcessor.render`; both processors' `rendered_messages` name the messages rendered),
and the spans are indexed over the messages that path renders (the Hermes rewrite for templates that do not
read `tools`). Supervised: each assistant turn whole, its `<tool_call>` JSON included, whether the calls
are caller text of the rewrite or template text of a tools-aware template; not supervised: the tools
block of the system turn and the `<tool_response>` turns (user turns).

Qwen2-VL / 2.5-VL / 3-VL: the processor's own ModelInputs (pixels, grids, M-RoPE positions) are reused, and
the character spans of `Qwen2VLProcessor.render` are turned into token spans by encoding the rendered
pieces between span edges separately. An assistant region runs from its answer's first character to the
end of its turn (prefix renders at the assistant boundaries give the turn ends) and is supervised through
its last special token (<|im_end|>). That is exact only if every edge is also a token edge; the
concatenation is compared with the full encoding and a ValueError is raised otherwise (e.g. an answer
that starts with "\\n" merges with the header's "\\n"). Each <|image_pad|> is then expanded to its
t*h*w/merge^2 slots as the processor does, and the result must equal the processor's ids.

Qwen-VL v1: the turns are encoded the way `chat_v1.make_context` does (role and content separately,
"Picture N: " numbering across turns, grounding tags special in answers), and the ids must equal the
prefix of the processor's `make_context` ids for the same conversation plus an empty user turn.

Must not: read data files, pad or pack (collate.py), or know the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from qwenvl.inputs import ModelInputs
from qwenvl.processing.chat_template import RenderedChat
from qwenvl.processing.chat_v1 import RESPONSE_TAGS, list_pieces, messages_to_v1
from qwenvl.processing.messages import normalize_messages
from qwenvl.processing.processor import Qwen2VLProcessor, count_video_placeholders, insert_video_timestamps
from qwenvl.processing.processor_v1 import QwenV1Processor
from qwenvl.processing.tokenizer_v1 import IM_END, IM_START, IMAGE_TAGS
from qwenvl.processing.tools import validate_tools
from qwenvl.train.batch import IGNORE


@dataclass
class TrainExample:
    """One tokenised conversation. labels[t] is the target for the token AT t (IGNORE = unsupervised),
    aligned with inputs.input_ids ([T]); the loss compares logits[t-1] with labels[t]."""

    inputs: ModelInputs
    labels: list[int]
    dense: Any = None  # [N_image_tokens, sub*sub, K] training-only vision targets (train/dense.py), or None
    point: Any = None  # [N_image_tokens] the question's object per image token (train/point.py), or None

    def __len__(self) -> int:
        return len(self.inputs.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(1 for lab in self.labels[1:] if lab != IGNORE)


def build_example(processor: Qwen2VLProcessor | QwenV1Processor, messages: list[dict], *,
                  tools: list[dict] | None = None, **template_vars: Any) -> TrainExample:
    """HF/OpenAI messages ending with an assistant message -> TrainExample (images are loaded here).

    tools: OpenAI function tools, given to the processor as at inference (module docstring).
    template_vars go to Qwen2VLProcessor (min_pixels / max_pixels) and its chat template (e.g.
    add_vision_id=True); Qwen-VL v1 takes none. Raises ValueError for a conversation that cannot be
    masked exactly (see module docstring) and whatever the processor raises for bad images
    (FileNotFoundError, ValueError) or bad tools.
    """
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    fmt = getattr(processor, "prompt_format", None)
    if fmt == "chatml_v1":
        if template_vars:
            raise ValueError(f"Qwen-VL v1 has no chat-template variables, got {sorted(template_vars)}")
        return _build_v1(processor, messages, tools)
    if fmt == "template":
        return _build_v2(processor, messages, tools, **template_vars)
    raise TypeError(f"build_example needs a processor with prompt_format 'template' or 'chatml_v1', "
                    f"got {type(processor).__name__}")


# ----------------------------------------------------------------------------- Qwen2-VL / 2.5-VL

_PROCESSOR_OPTS = ("min_pixels", "max_pixels")  # Qwen2VLProcessor.__call__ keywords, not template variables


def _slice_segments(segments: list[tuple[str, bool]], a: int, b: int) -> list[tuple[str, bool]]:
    """The (text, allow_special) pieces covering characters [a, b) of the rendered text."""
    out, pos = [], 0
    for text, allow in segments:
        lo, hi = max(a, pos), min(b, pos + len(text))
        if lo < hi:
            out.append((text[lo - pos:hi - pos], allow))
        pos += len(text)
    return out


_HEADER = f"{IM_START}assistant\n"  # where an answer without text (only template-written tool calls) starts


def _has_text(msg: dict) -> bool:
    content = msg["content"]
    return bool(content) if isinstance(content, str) else any(p["type"] == "text" and p["text"] for p in content)


def _assistant_turns(proc: Qwen2VLProcessor, msgs: list[dict], tools: list[dict] | None, text: str,
                     render_vars: dict[str, Any]) -> list[tuple[int, int]]:
    """Per assistant message of msgs, (start, end) of its turn in `text`, from rendering the prefixes that end
    just before and just after it through proc.render (so the Hermes rewrite too). Only these prefixes must be
    prefixes of the whole render: the Qwen3-VL template continues a tool turn into the next tool message, so
    spans of every message (RenderedChat.message_spans) do not exist there, but assistant turns still do."""
    def end_of(k: int) -> int:
        if k == 0:
            return 0
        try:
            prefix = proc.render(msgs[:k], tools=tools, add_generation_prompt=False, **render_vars).text
        except Exception as err:  # a template that refuses a prefix (e.g. raise_exception on its shape)
            raise ValueError(f"the chat template cannot render the turns before message {k}: {err}") from err
        if not text.startswith(prefix):
            raise ValueError("the chat template is not prefix-stable, so turn spans (and labels) cannot be derived")
        return len(prefix)

    turns = [(end_of(i), end_of(i + 1)) for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if any(b < a for a, b in turns):
        raise ValueError("the chat template is not prefix-stable, so turn spans (and labels) cannot be derived")
    return turns


def _assistant_ranges(msgs: list[dict], shown: list[dict], rendered: RenderedChat,
                      turns: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Per assistant message (answer start, turn end) as character offsets.

    shown: the messages the render was made of (msgs or their Hermes rewrite; content_spans follow them),
    with the assistant messages of msgs, in order. The answer starts at its first text; one with no text
    (content None / "" next to tool_calls that a tools-aware template prints after it as template text)
    starts after its turn's header instead."""
    mine = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    theirs = [i for i, m in enumerate(shown) if m["role"] == "assistant"]
    if len(mine) != len(theirs) or len(rendered.content_spans) != len(shown):
        raise ValueError("the rendered turns do not match the messages; labels would be misaligned")
    ranges = []
    for i, k, (turn_start, turn_end) in zip(mine, theirs, turns, strict=True):
        spans = rendered.content_spans[k]
        if spans:
            start, stop = spans[0][0], spans[-1][1]
        else:
            head = rendered.text.find(_HEADER, turn_start, turn_end)
            if _has_text(msgs[i]) or head < 0:
                raise ValueError(f"message {i}: an assistant message needs text to supervise")
            start = stop = head + len(_HEADER)
        if not turn_start <= start <= stop <= turn_end:
            raise ValueError(f"message {i}: its text lies outside its turn; labels would be misaligned")
        ranges.append((start, turn_end))
    return ranges


def _build_v2(proc: Qwen2VLProcessor, messages: list[dict], tools: list[dict] | None,
              **template_vars: Any) -> TrainExample:
    inputs = proc(messages, add_generation_prompt=False, tools=tools, **template_vars)
    msgs, _ = normalize_messages(messages)
    tools = validate_tools(tools)
    # the processor takes the pixel budget itself and hands the rest to its template, as here
    render_vars = {k: v for k, v in template_vars.items() if k not in _PROCESSOR_OPTS}
    rendered = proc.render(msgs, tools=tools, add_generation_prompt=False, **render_vars)
    turns = _assistant_turns(proc, msgs, tools, rendered.text, render_vars)
    ranges = _assistant_ranges(msgs, proc.rendered_messages(msgs, tools), rendered, turns)
    tok = proc.tokenizer
    answers = set(ranges)
    cuts = sorted({0, len(rendered.text), *(x for r in ranges for x in r)})
    # The turn's end token: the last special token of the answer's region (the turn's tool calls, written by
    # a tools-aware template, may hold others first, e.g. the <tool_call> added token); "\n" after it is out.
    specials = set(tok.special_tokens.values())

    ids: list[int] = []
    labels: list[int] = []
    plain: list[int] = []  # the same pieces without video timestamps: the token-edge check below
    stamps = list(inputs.video_timestamps)  # Qwen3-VL: timestamp text goes where the processor puts it
    for a, b in zip(cuts, cuts[1:], strict=False):
        segs = _slice_segments(rendered.segments, a, b)
        plain += tok.encode_segments(segs)
        if proc.video_timestamps and (n := count_video_placeholders(segs)):
            segs, stamps = insert_video_timestamps(segs, stamps[:n]), stamps[n:]
        piece = tok.encode_segments(segs)
        if (a, b) in answers:
            end = max((k for k, t in enumerate(piece) if t in specials), default=None)
            if end is None:
                raise ValueError(f"no end token in the assistant turn at character {a}: {rendered.text[a:b]!r}")
            lab = piece[:end + 1] + [IGNORE] * (len(piece) - end - 1)
        else:
            lab = [IGNORE] * len(piece)
        ids += piece
        labels += lab
    if plain != tok.encode_segments(rendered.segments):
        raise ValueError("a turn edge falls inside a token (e.g. an assistant answer starting with whitespace "
                         "that merges with the header's '\\n'); labels would be inexact, so the sample is refused")
    ids, labels = _expand(proc, ids, labels, inputs)
    if ids != inputs.input_ids:
        raise ValueError("masked ids differ from the processor's ids; the template or tokenizer is out of step")
    return TrainExample(inputs, labels)


def _expand(proc: Qwen2VLProcessor, ids: list[int], labels: list[int],
            inputs: ModelInputs) -> tuple[list[int], list[int]]:
    """Expand each vision placeholder into its slots (as Qwen2VLProcessor.expand does); slots are IGNORE."""
    images, videos = proc.slot_counts(inputs.image_grid, inputs.video_grid)
    counts = {proc.cfg.image_token_id: iter(images), proc.cfg.video_token_id: iter(videos)}
    out_ids: list[int] = []
    out_labels: list[int] = []
    for tok, lab in zip(ids, labels, strict=True):
        if tok in counts:
            n = next(counts[tok], 0)
            out_ids += [tok] * n
            out_labels += [IGNORE] * n
        else:
            out_ids.append(tok)
            out_labels.append(lab)
    return out_ids, out_labels


# ----------------------------------------------------------------------------- Qwen-VL v1


def _build_v1(proc: QwenV1Processor, messages: list[dict], tools: list[dict] | None) -> TrainExample:
    tok = proc.tokenizer
    # The processor builds make_context(query="", history=all turns): our ids are its prefix. It also
    # loads the images and picks the text carried in each image span, which is read back here.
    dummy = {"role": "user", "content": ""}
    inputs = proc([*messages, dummy], tools=tools)
    paths = iter(tok.image_paths(inputs.input_ids))
    msgs, _ = normalize_messages(messages)
    msgs = proc.rendered_messages(msgs, validate_tools(tools))  # as its __call__: tool turns become plain turns
    for m in msgs:
        if isinstance(m["content"], list):
            m["content"] = [dict(p, image=next(paths)) if p["type"] == "image" else p for p in m["content"]]
    chat = messages_to_v1([*msgs, dummy])

    nl = tok.encode("\n")
    ids: list[int] = []
    labels: list[int] = []

    def add(part: list[int], supervised: bool) -> None:
        ids.extend(part)
        labels.extend(part if supervised else [IGNORE] * len(part))

    def header(role: str) -> list[int]:
        return [tok.im_start_id, *tok.encode(role), *nl]

    # make_context: system turn, then per (query, response) "\n" user-turn "\n" assistant-turn.
    add([*header("system"), *tok.encode_pieces([(chat.system, frozenset(IMAGE_TAGS))]), tok.im_end_id], False)
    for query, response in chat.history:
        add([*nl, *header("user"), *tok.encode_pieces(list_pieces(query)), tok.im_end_id], False)
        add([*nl, *header("assistant")], False)
        add([*tok.encode_pieces([(response, RESPONSE_TAGS)]), tok.im_end_id], True)
    if inputs.input_ids[:len(ids)] != ids:
        raise ValueError("v1 turn ids differ from make_context's (history cut by max_window_size, or chat_v1 "
                         "changed); labels would be misaligned, so the sample is refused")
    for span in tok.image_spans(ids):  # v1 image slots are never targets
        labels[span.start:span.end + 1] = [IGNORE] * (span.end + 1 - span.start)
    suffix = f"\n{IM_START}user\n{IM_END}\n{IM_START}assistant\n"
    text = inputs.text[:-len(suffix)] if inputs.text.endswith(suffix) else inputs.text
    return TrainExample(replace(inputs, input_ids=ids, positions=inputs.positions[:len(ids)], text=text), labels)
