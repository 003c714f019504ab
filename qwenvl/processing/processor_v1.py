"""Qwen-VL (v1) processor: chat messages -> ModelInputs (ids with 256-slot image spans, 448 px pixels).

v1 carries each image's path inside the token ids (<img> + path bytes + <imgpad>... + </img>); the
model overwrites all slots between the tags with image features, so the bytes only locate the image.
Images given as PIL objects or data URLs get a short stand-in name. Positions are plain 1-D.
Tools, tool calls and tool results are written in Qwen's Hermes convention (tools.hermes_messages, the
text Qwen3-VL's template writes) before the turns are built; v1's vocabulary has no tool tokens, so the
tags are plain text. The conversation must end with a user (or tool) message: v1 cannot continue an answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from qwenvl.config import QwenVLConfig
from qwenvl.inputs import ModelInputs
from qwenvl.processing.chat_v1 import DEFAULT_SYSTEM, decode_response, make_context, messages_to_v1, stop_words_ids
from qwenvl.processing.image import load_image, process_image_fixed
from qwenvl.processing.messages import normalize_messages
from qwenvl.processing.tokenizer_v1 import QwenV1Tokenizer
from qwenvl.processing.tools import hermes_messages, needs_hermes, validate_tools


def _stand_in(source, k: int, span: int) -> str:
    """The text that goes between <img> and </img>: the path itself when it fits the span."""
    if isinstance(source, (str, Path)) and not str(source).startswith("data:"):
        s = str(source)
        if len(s.encode()) <= span:
            return s
    return f"image-{k}"[:span]


class QwenV1Processor:
    prompt_format = "chatml_v1"  # make_context turns, not a Jinja template (train/masks.py builds labels by it)

    def __init__(self, cfg: QwenVLConfig, tokenizer: QwenV1Tokenizer, chat_format: str = "chatml",
                 tiktoken_path: Path | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.chat_format = chat_format
        self.tiktoken_path = tiktoken_path

    @classmethod
    def from_folder(cls, folder: str | Path, cfg: QwenVLConfig) -> QwenV1Processor:
        import json

        folder = Path(folder)
        gen = folder / "generation_config.json"
        fmt = json.loads(gen.read_text()).get("chat_format", "chatml") if gen.is_file() else "chatml"
        tok = QwenV1Tokenizer.from_folder(folder, cfg.vision.n_queries)
        return cls(cfg, tok, fmt, folder / "qwen.tiktoken")

    def save(self, folder: str | Path) -> None:
        dst = Path(folder) / "qwen.tiktoken"
        if self.tiktoken_path is not None and self.tiktoken_path.resolve() != dst.resolve():
            shutil.copyfile(self.tiktoken_path, dst)

    def __call__(self, messages: list[dict], *, add_generation_prompt: bool = True, tools: list[dict] | None = None,
                 **_: object) -> ModelInputs:
        """messages: HF / OpenAI chat messages ending with a user or tool message; tools: OpenAI function tools."""
        if not add_generation_prompt:
            raise ValueError("Qwen-VL v1 prompts always end with the assistant turn opener")
        msgs, items = normalize_messages(messages)
        if msgs[-1]["role"] == "assistant":
            raise ValueError(f"message {len(msgs) - 1}: Qwen-VL v1 cannot continue an assistant message; "
                             "the conversation must end with a user or tool message")
        msgs = self.rendered_messages(msgs, validate_tools(tools))
        if any(it.kind == "video" for it in items):
            raise ValueError("Qwen-VL v1 does not take video; use a Qwen2-VL / Qwen2.5-VL checkpoint")
        images = iter(range(len(items)))
        for m in msgs:  # give every image part a string "path" for the id stream
            if isinstance(m["content"], list):
                span = self.tokenizer.image_span
                m["content"] = [dict(p, image=_stand_in(p["image"], next(images), span)) if p["type"] == "image"
                                else p for p in m["content"]]
        chat = messages_to_v1(msgs)
        text, ids = make_context(self.tokenizer, chat.query, chat.history, chat.system, chat_format=self.chat_format)
        spans = self.tokenizer.image_spans(ids)
        if len(spans) != len(items):
            raise ValueError(f"prompt has {len(spans)} image spans for {len(items)} images")
        pil = [load_image(it.source) for it in items]
        size = self.cfg.vision.image_size
        pixels = torch.stack([process_image_fixed(im, size) for im in pil]) if pil else None
        return ModelInputs(input_ids=ids, positions=torch.arange(len(ids)), image_pixels=pixels,
                           image_sizes=[im.size for im in pil], text=text)

    def rendered_messages(self, msgs: list[dict], tools: list[dict] | None) -> list[dict]:
        """The messages the turns are built from: msgs, or their Hermes rewrite when tools are in play."""
        return hermes_messages(msgs, tools, default_system=DEFAULT_SYSTEM) if needs_hermes(msgs, tools) else msgs

    def stop_ids(self) -> list[int]:
        return [s[0] for s in stop_words_ids(self.tokenizer, self.chat_format) if len(s) == 1] + \
            [self.tokenizer.eod_id]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        if skip_special:
            return decode_response(self.tokenizer, ids, self.chat_format)
        return self.tokenizer.decode(ids)

    def input_sizes(self, inputs: ModelInputs) -> list[tuple[int, int]]:
        return []  # v1 boxes are per-mille of the original image

    def text_positions(self, n: int) -> torch.Tensor:
        """Positions of n text-only tokens: 1-D RoPE."""
        return torch.arange(n)
