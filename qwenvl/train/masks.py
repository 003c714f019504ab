"""Training examples with loss masks: a chat conversation -> (ModelInputs, labels).

Labels come from the ROLE SPANS of the rendered conversation, never from searching the ids for a
token such as "assistant" or <|im_end|> (pain point 5): a user who types either string cannot open
a label span. Supervised, per assistant message: its content and the end token the template writes
after it (<|im_end|>). Not supervised: system and user turns, the assistant header
`<|im_start|>assistant\\n`, the "\\n" after <|im_end|>, and vision slots (always IGNORE).

Qwen2-VL / 2.5-VL: the processor's own ModelInputs (pixels, grids, M-RoPE positions) are reused, and
the character spans of `render_chat_segments` are turned into token spans by encoding the rendered
pieces between span edges separately. That is exact only if every edge is also a token edge; the
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
from qwenvl.processing.chat_template import render_chat_segments
from qwenvl.processing.chat_v1 import RESPONSE_TAGS, list_pieces, messages_to_v1
from qwenvl.processing.messages import normalize_messages
from qwenvl.processing.processor import Qwen2VLProcessor, count_video_placeholders, insert_video_timestamps
from qwenvl.processing.processor_v1 import QwenV1Processor
from qwenvl.processing.tokenizer_v1 import IM_END, IM_START, IMAGE_TAGS
from qwenvl.train.batch import IGNORE


@dataclass
class TrainExample:
    """One tokenised conversation. labels[t] is the target for the token AT t (IGNORE = unsupervised),
    aligned with inputs.input_ids ([T]); the loss compares logits[t-1] with labels[t]."""

    inputs: ModelInputs
    labels: list[int]

    def __len__(self) -> int:
        return len(self.inputs.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(1 for lab in self.labels[1:] if lab != IGNORE)


def build_example(processor: Qwen2VLProcessor | QwenV1Processor, messages: list[dict],
                  **template_vars: Any) -> TrainExample:
    """HF/OpenAI messages ending with an assistant message -> TrainExample (images are loaded here).

    template_vars go to Qwen2VLProcessor (min_pixels / max_pixels) and its chat template (e.g.
    add_vision_id=True); Qwen-VL v1 takes none. Raises ValueError for a
    conversation that cannot be masked exactly (see module docstring) and whatever the processor
    raises for bad images (FileNotFoundError, ValueError).
    """
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    fmt = getattr(processor, "prompt_format", None)
    if fmt == "chatml_v1":
        if template_vars:
            raise ValueError(f"Qwen-VL v1 has no chat-template variables, got {sorted(template_vars)}")
        return _build_v1(processor, messages)
    if fmt == "template":
        return _build_v2(processor, messages, **template_vars)
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


def _assistant_ranges(messages: list[dict], rendered) -> list[tuple[int, int, int]]:
    """Per assistant message (content start, content end, turn end) as character offsets."""
    if rendered.message_spans is None:
        raise ValueError("the chat template is not prefix-stable, so turn spans (and labels) cannot be derived")
    ranges = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        spans = rendered.content_spans[i]
        if not spans:
            raise ValueError(f"message {i}: an assistant message needs text to supervise")
        ranges.append((spans[0][0], spans[-1][1], rendered.message_spans[i][1]))
    return ranges


def _build_v2(proc: Qwen2VLProcessor, messages: list[dict], **template_vars: Any) -> TrainExample:
    inputs = proc(messages, add_generation_prompt=False, **template_vars)
    msgs, _ = normalize_messages(messages)
    # the processor takes the pixel budget itself and hands the rest to its template, as here
    render_vars = {k: v for k, v in template_vars.items() if k not in _PROCESSOR_OPTS}
    rendered = render_chat_segments(msgs, proc.template, add_generation_prompt=False, with_message_spans=True,
                                    **render_vars)
    tok = proc.tokenizer
    ranges = _assistant_ranges(msgs, rendered)
    content = {(s, e) for s, e, _ in ranges}
    tails = {(e, end) for _, e, end in ranges}
    cuts = sorted({0, len(rendered.text), *(x for r in ranges for x in r)})
    # The turn's end token: the first special token the template writes after the content.
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
        if (a, b) in content:
            lab = list(piece)
        elif (a, b) in tails:
            end = next((k for k, t in enumerate(piece) if t in specials), None)
            if end is None:
                raise ValueError(f"no end token after the assistant text at character {a}: {rendered.text[a:b]!r}")
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


def _build_v1(proc: QwenV1Processor, messages: list[dict]) -> TrainExample:
    tok = proc.tokenizer
    # The processor builds make_context(query="", history=all turns): our ids are its prefix. It also
    # loads the images and picks the text carried in each image span, which is read back here.
    dummy = {"role": "user", "content": ""}
    inputs = proc([*messages, dummy])
    paths = iter(tok.image_paths(inputs.input_ids))
    msgs, _ = normalize_messages(messages)
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
