"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL processor: chat messages -> ModelInputs (ids, pixels, grids, positions).

The one place where images and text become tensors for these generations; training, CLI and server
all call it, so there is no train/serve skew. Steps: normalise messages, render the chat template
(checkpoint's own, else the built-in default), encode user text with special tokens escaped, expand each
<|image_pad|> / <|video_pad|> into t*h*w/merge^2 slots, compute positions.

What differs per generation comes in as constructor options, never as a test of the family's name:
the image config, the video rules (VideoOptions or Qwen3VideoOptions), the RopeSpec, the fallback
template and `video_timestamps`. With video_timestamps (Qwen3-VL) each video's template placeholder
`<|vision_start|><|video_pad|><|vision_end|>` becomes, per temporal patch,
`<{t:.1f} seconds><|vision_start|><|video_pad|>*n<|vision_end|>` (as transformers 4.57's Qwen3VLProcessor
writes it); the timestamp text is template text, BPE-encoded together with the text around it.

Tools (`tools=[...]`, OpenAI shape): a template that reads `tools` (Qwen3-VL's) gets them and the messages
unchanged; for one that does not (Qwen2-VL / Qwen2.5-VL), tools.hermes_messages rewrites the conversation
in the same Hermes convention first, and the tag strings it wrote (<tool_call>, <tool_response>, ...)
are encoded as template text, so a vocabulary that holds them as added tokens gets their ids, as it does
from a template that writes them. Strings a tools-aware template prints itself (tool schemas, tool-call
names and arguments) are template text, so they may not contain this tokenizer's special-token strings.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from qwenvl.config import QwenVLConfig
from qwenvl.inputs import ModelInputs
from qwenvl.processing.chat_template import (
    QWEN2_VL_TEMPLATE,
    RenderedChat,
    load_chat_template,
    render_chat_segments,
)
from qwenvl.processing.image import ImageProcessorConfig, load_image, process_image
from qwenvl.processing.messages import normalize_messages
from qwenvl.processing.positions import RopeSpec, mrope_positions
from qwenvl.processing.tokenizer import GROUNDING_TAGS, QwenTokenizer
from qwenvl.processing.tools import (
    MARKUP,
    default_system_prompt,
    hermes_messages,
    needs_hermes,
    special_strings_in,
    template_renders_tools,
    validate_tools,
)
from qwenvl.processing.video import VideoOptions, VideoRules, preprocess_video
from qwenvl.processing.video_qwen3 import Qwen3VideoOptions

_IMAGE_OPTS = ("min_pixels", "max_pixels")
VISION_START, VIDEO_PAD, VISION_END = "<|vision_start|>", "<|video_pad|>", "<|vision_end|>"
# Per-video message options of either rule set; other keys of a video part (e.g. qwen-vl-utils'
# resized_height) are ignored, as before.
_VIDEO_KEYS = {f.name for c in (VideoOptions, Qwen3VideoOptions) for f in dataclasses.fields(c)}
_VIDEO_SLOT = re.compile(re.escape(VISION_START + VIDEO_PAD + VISION_END) + "|" + re.escape(VIDEO_PAD))


def timestamped_video(timestamps: list[float]) -> str:
    """The prompt text of one video with text timestamps: one `<t seconds><vs><video_pad><ve>` per temporal
    patch, a single pad each (expanded to the group's slots later). Example: [0.25, 1.25] ->
    '<0.2 seconds><|vision_start|><|video_pad|><|vision_end|><1.2 seconds><|vision_start|>...'."""
    return "".join(f"<{t:.1f} seconds>{VISION_START}{VIDEO_PAD}{VISION_END}" for t in timestamps)


def insert_video_timestamps(segments: list[tuple[str, bool]], timestamps: list[list[float]]) -> list[tuple[str, bool]]:
    """Replace the k-th video placeholder in template text (allow_special pieces) by timestamped_video(k-th).

    A placeholder is the template's `<vs><video_pad><ve>`, or a bare `<video_pad>` for templates that
    write only the pad. Caller text is never searched. Raises ValueError if the counts differ.
    """
    stamps = iter(timestamps)

    def swap(_: re.Match) -> str:
        t = next(stamps, None)
        if t is None:
            raise ValueError("the chat template produced more video placeholders than there are videos")
        return timestamped_video(t)

    out = [(_VIDEO_SLOT.sub(swap, text) if trusted else text, trusted) for text, trusted in segments]
    if next(stamps, None) is not None:
        raise ValueError("the chat template dropped a video placeholder; check the template")
    return out


def count_video_placeholders(segments: list[tuple[str, bool]]) -> int:
    """How many video placeholders insert_video_timestamps would replace in these segments."""
    return sum(len(_VIDEO_SLOT.findall(text)) for text, trusted in segments if trusted)


def _trust_markup(rendered: RenderedChat, messages: list[dict]) -> RenderedChat:
    """Mark the caller-text segments that are MARKUP parts of `messages` as template text.

    render_chat_segments gives one (text, False) segment per non-empty caller text, with its span in
    content_spans; a message's k-th span is its k-th text part when the template prints each text part
    once, in order (Qwen2-VL's does). If the counts differ the segments are returned unchanged.
    """
    markup: set[tuple[int, int]] = set()
    for msg, spans in zip(messages, rendered.content_spans, strict=True):
        texts = [p for p in msg["content"] if p["type"] == "text"] if isinstance(msg["content"], list) else []
        if len(texts) == len(spans):
            markup |= {span for p, span in zip(texts, spans, strict=True) if p.get(MARKUP)}
    segments, pos = [], 0
    for piece, trusted in rendered.segments:
        segments.append((piece, trusted or (pos, pos + len(piece)) in markup))
        pos += len(piece)
    return dataclasses.replace(rendered, segments=segments)


class Qwen2VLProcessor:
    """Messages -> ModelInputs for the dynamic-resolution generations.

    cfg: the model config (token ids, vision geometry). tokenizer: the checkpoint's QwenTokenizer.
    template: the checkpoint's chat template (None: `default_template`). image_cfg: image settings (None:
    Qwen2-VL defaults with cfg's patch geometry). video_opts: VideoOptions (qwen-vl-utils) or
    Qwen3VideoOptions (None: VideoOptions()). rope: RopeSpec (None: Qwen2-VL semantics from cfg's ids and
    merge size; Qwen2.5-VL and Qwen3-VL must pass theirs). video_timestamps: Qwen3-VL's text timestamps.
    """

    prompt_format = "template"  # the checkpoint's Jinja chat template (train/masks.py builds labels by it)

    def __init__(self, cfg: QwenVLConfig, tokenizer: QwenTokenizer, template: str | None = None,
                 image_cfg: ImageProcessorConfig | None = None, video_opts: VideoRules | None = None, *,
                 rope: RopeSpec | None = None, default_template: str = QWEN2_VL_TEMPLATE,
                 video_timestamps: bool = False) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.template = template or default_template
        self.image_cfg = image_cfg or ImageProcessorConfig(patch_size=cfg.vision.patch_size,
                                                           temporal_patch_size=cfg.vision.temporal_patch_size,
                                                           merge_size=cfg.vision.spatial_merge_size)
        self.video_opts: VideoRules = video_opts or VideoOptions()
        self.rope = rope or RopeSpec(cfg.image_token_id, cfg.video_token_id, cfg.vision.spatial_merge_size)
        self.video_timestamps = video_timestamps

    @classmethod
    def from_folder(cls, folder: str | Path, cfg: QwenVLConfig, *, image_cfg: ImageProcessorConfig | None = None,
                    video_opts: VideoRules | None = None, **options: Any) -> Qwen2VLProcessor:
        """Load tokenizer, template and pre-processor configs from a checkpoint folder.

        image_cfg / video_opts are the defaults that the folder's preprocessor_config.json /
        video_preprocessor_config.json override key by key (the video file is read by the class of
        video_opts); `options` go to the constructor (rope, default_template, video_timestamps).
        """
        folder = Path(folder)
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            image_cfg = ImageProcessorConfig.from_preprocessor_config(json.loads(pre.read_text()), image_cfg)
        vid = folder / "video_preprocessor_config.json"
        if vid.is_file():
            base = video_opts or VideoOptions()
            video_opts = type(base).from_video_preprocessor_config(json.loads(vid.read_text()), base)
        return cls(cfg, QwenTokenizer.from_folder(folder), load_chat_template(folder), image_cfg, video_opts,
                   **options)

    def save(self, folder: str | Path) -> None:
        (Path(folder) / "preprocessor_config.json").write_text(
            json.dumps(self.image_cfg.to_preprocessor_config(), indent=2) + "\n")
        video = self.video_opts.to_video_preprocessor_config(self.image_cfg)
        if self.image_cfg.processor_class is not None:
            video["processor_class"] = self.image_cfg.processor_class
        (Path(folder) / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")

    # ------------------------------------------------------------------------------------------
    def __call__(self, messages: list[dict], *, add_generation_prompt: bool = True, min_pixels: int | None = None,
                 max_pixels: int | None = None, tools: list[dict] | None = None, **template_vars: Any) -> ModelInputs:
        """messages: HF / OpenAI chat messages (see messages.py). tools: OpenAI function tools, rendered
        through the template when it reads `tools`, else in the Hermes convention (module docstring); an
        assistant message last is rendered as a closed turn (then the generation prompt, if asked)."""
        msgs, items = normalize_messages(messages)
        pixels: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
        grids: dict[str, list[tuple[int, int, int]]] = {"image": [], "video": []}
        sizes, seconds, stamps = [], [], []
        for it in items:
            if it.kind == "image":
                img = load_image(it.source)
                opts = {k: it.options[k] for k in _IMAGE_OPTS if k in it.options}
                opts.setdefault("min_pixels", min_pixels)
                opts.setdefault("max_pixels", max_pixels)
                px, grid = process_image(img, self.image_cfg, **opts)
                sizes.append(img.size)
            else:
                # source_fps: the part's array / frame list is a whole clip at that rate, sampled like a file
                video = preprocess_video(it.source, self.image_cfg, self.video_options(it.options),
                                         it.options.get("source_fps"))
                px, grid = video.pixel_values, video.grid
                seconds.append(video.second_per_grid)
                stamps.append(video.timestamps)
            pixels[it.kind].append(px)
            grids[it.kind].append(grid)
        rendered = self.render(msgs, tools=tools, add_generation_prompt=add_generation_prompt, **template_vars)
        segments = insert_video_timestamps(rendered.segments, stamps) if self.video_timestamps else rendered.segments
        ids = self.expand(self.tokenizer.encode_segments(segments), grids["image"], grids["video"])
        pos, delta = mrope_positions(ids, self.rope, grids["image"], grids["video"], seconds)
        return ModelInputs(
            input_ids=ids, positions=pos, rope_delta=delta,
            image_pixels=torch.cat(pixels["image"]) if pixels["image"] else None, image_grid=grids["image"],
            video_pixels=torch.cat(pixels["video"]) if pixels["video"] else None, video_grid=grids["video"],
            image_sizes=sizes, second_per_grid=seconds, video_timestamps=stamps if self.video_timestamps else [],
            text="".join(piece for piece, _ in segments),
        )

    def render(self, msgs: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = True,
               with_message_spans: bool = False, **template_vars: Any) -> RenderedChat:
        """Render normalised messages (normalize_messages' first output) with tools, as __call__ does.

        With a template that does not read `tools` and a conversation that uses tools, the RenderedChat
        (spans included) is that of the rewritten conversation (tools.hermes_messages), not of msgs.
        """
        tools = validate_tools(tools)
        if template_renders_tools(self.template):
            self._check_template_strings(msgs, tools)
            return render_chat_segments(msgs, self.template, add_generation_prompt=add_generation_prompt,
                                        with_message_spans=with_message_spans, tools=tools, **template_vars)
        shown = self.rendered_messages(msgs, tools)
        rendered = render_chat_segments(shown, self.template, add_generation_prompt=add_generation_prompt,
                                        with_message_spans=with_message_spans, **template_vars)
        return rendered if shown is msgs else _trust_markup(rendered, shown)

    def rendered_messages(self, msgs: list[dict], tools: list[dict] | None) -> list[dict]:
        """The messages render() gives the template: msgs themselves, or their Hermes rewrite when the
        template does not read `tools` and the conversation uses tools (spans then follow the rewrite)."""
        if template_renders_tools(self.template) or not needs_hermes(msgs, tools):
            return msgs
        return hermes_messages(msgs, tools, default_system=default_system_prompt(self.template))

    def _check_template_strings(self, msgs: list[dict], tools: list[dict] | None) -> None:
        # A tools-aware template prints tool schemas and tool-call fields as template text, where every
        # special token would match; refuse turn / vision markup there (grounding tags stay allowed).
        banned = [t for t in self.tokenizer.special_tokens if t not in GROUNDING_TAGS]
        for where, value in [("tools", tools), *((f"message {i} tool_calls", m.get("tool_calls"))
                                                 for i, m in enumerate(msgs))]:
            found = special_strings_in(value, banned) if value else None
            if found:
                raise ValueError(f"{where} contains the special token {found!r}; it would be read as prompt markup")

    def video_options(self, overrides: dict) -> VideoRules:
        """self.video_opts with a message's per-video options (fps, nframes, ...). An option of the other
        rule set is an error, not ignored: qwen-vl-utils' per-frame max_pixels is not a clip budget."""
        fields = {f.name for f in dataclasses.fields(self.video_opts)}  # type: ignore[arg-type]
        wrong = sorted((set(overrides) & _VIDEO_KEYS) - fields)
        if wrong:
            raise ValueError(f"video option(s) {wrong} do not apply to {type(self.video_opts).__name__} "
                             f"(it takes {sorted(fields)})")
        kw = {k: v for k, v in overrides.items() if k in fields}
        return dataclasses.replace(self.video_opts, **kw) if kw else self.video_opts  # type: ignore[type-var]

    def slot_counts(self, image_grids: list, video_grids: list) -> tuple[list[int], list[int]]:
        """Slots per image placeholder and per video placeholder (one per temporal patch with timestamps)."""
        unit = self.cfg.vision.spatial_merge_size ** 2
        images = [t * h * w // unit for t, h, w in image_grids]
        if self.video_timestamps:
            return images, [h * w // unit for t, h, w in video_grids for _ in range(t)]
        return images, [t * h * w // unit for t, h, w in video_grids]

    def expand(self, ids: list[int], image_grids: list, video_grids: list) -> list[int]:
        """Replace the k-th <|image_pad|> (<|video_pad|>) by its slots (see slot_counts)."""
        images, videos = self.slot_counts(image_grids, video_grids)
        counts = {self.cfg.image_token_id: iter(images), self.cfg.video_token_id: iter(videos)}
        out: list[int] = []
        for tok in ids:
            if tok in counts:
                n = next(counts[tok], None)
                if n is None:
                    raise ValueError("the chat template produced more vision placeholders than there are "
                                     "images/videos in the messages")
                out += [tok] * n
            else:
                out.append(tok)
        if any(next(it, None) is not None for it in counts.values()):
            raise ValueError("the chat template dropped an image or video placeholder; check the template")
        return out

    def text_positions(self, n: int) -> torch.Tensor:
        """Positions [3, n] of n text-only tokens: M-RoPE with T = H = W."""
        return torch.arange(n).expand(3, -1).clone()

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        # box / ref tags are special tokens: the grounding parser needs skip_special=False
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def input_sizes(self, inputs: ModelInputs) -> list[tuple[int, int]]:
        """(W, H) in pixels of each image as the model saw it (Qwen2.5-VL boxes are in these units)."""
        p = self.image_cfg.patch_size
        return [(w * p, h * p) for _, h, w in inputs.image_grid]

    def stop_ids(self) -> list[int]:
        """Ids that end an answer: the tokenizer's eos ids (<|im_end|>, <|endoftext|>)."""
        return list(self.tokenizer.eos_ids)
