"""A `qwen.tiktoken`-format ranks file -> a Qwen2-VL tokenizer folder (tokenizer.json + tokenizer_config.json).

The v1 model reads the tiny vocabulary as tiktoken ranks; Qwen2-VL / Qwen2.5-VL read a Hugging Face
byte-level BPE `tokenizer.json`. Both must split text into the same ids, so the folder is derived from
the ranks rather than trained again. tiktoken merges the adjacent pair whose concatenation has the
lowest rank; a HF BPE merges the pair with the highest-priority merge rule. Giving every split of a
token into two lower-ranked tokens a merge rule at that token's rank makes the two rules agree.
The Qwen2-VL added tokens follow the regular ones in the official order (facts B.5): id = n + index.

Must not: train a vocabulary (tokenizer_train does), read data or touch the model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models

from qwenvl.config import QWEN2_5_VL
from qwenvl.processing.chat_template import QWEN2_VL_TEMPLATE
from qwenvl.processing.image import ImageProcessorConfig
from qwenvl.processing.tokenizer_v1 import load_ranks
from qwenvl.processing.video import VideoOptions
from qwenvl.train.tokenizer_train import _byte_decoder, qwen_byte_level

# Facts B.5: the Qwen2-VL / Qwen2.5-VL added tokens, in id order after the regular vocabulary.
QWEN2_VL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                     "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                     "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def ranks_to_tokenizer(ranks: dict[bytes, int], specials: tuple[str, ...] = QWEN2_VL_SPECIALS) -> Tokenizer:
    """Byte-level BPE over `ranks` (NFC, Qwen's split regex), specials added with ids n + index."""
    to_char = {b: c for c, b in _byte_decoder().items()}

    def s(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    rules: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = ranks.get(token[:cut]), ranks.get(token[cut:])
            if left is not None and right is not None and left < rank and right < rank:
                rules.append((rank, left, right, s(token[:cut]), s(token[cut:])))
    rules.sort()
    tok = Tokenizer(models.BPE(vocab={s(t): r for t, r in ranks.items()}, merges=[(a, b) for *_, a, b in rules],
                               fuse_unk=False, byte_fallback=False))
    qwen_byte_level(tok)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def write_qwen2_tokenizer(ranks_path: str | Path, folder: str | Path, min_pixels: int = 56 * 56,
                          max_pixels: int = 140 * 140, family: str = QWEN2_5_VL, video_frames: int = 4) -> Path:
    """Write tokenizer.json, tokenizer_config.json (chat template, eos <|im_end|>, pad <|endoftext|>) and
    (video_)preprocessor_config.json with the pixel budget into `folder`; returns the folder.

    family: whose processing defaults (patch size, normalisation, template) the files carry; Qwen3-VL
    budgets a whole clip, set here to video_frames frames of max_pixels each.
    """
    from qwenvl import families

    defaults = families.get(family).processing_defaults()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ranks = load_ranks(ranks_path)
    ranks_to_tokenizer(ranks).save(str(folder / "tokenizer.json"))
    n = len(ranks)
    decoder = {str(n + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for i, t in enumerate(QWEN2_VL_SPECIALS)}
    config = {"added_tokens_decoder": decoder, "additional_special_tokens": list(QWEN2_VL_SPECIALS[1:]),
              "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace",
              "model_max_length": 32768, "padding_side": "left", "split_special_tokens": False,
              "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
              "chat_template": defaults.get("default_template", QWEN2_VL_TEMPLATE)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    image = replace(defaults.get("image_cfg", ImageProcessorConfig()), min_pixels=min_pixels, max_pixels=max_pixels)
    (folder / "preprocessor_config.json").write_text(json.dumps(image.to_preprocessor_config(), indent=2) + "\n")
    # the same budget for video frames (the official video minimum, 100k pixels, would upscale tiny frames)
    video = defaults.get("video_opts", VideoOptions())
    if isinstance(video, VideoOptions):
        vid = replace(video, min_pixels=min_pixels, max_pixels=max_pixels).to_video_preprocessor_config()
    else:  # Qwen3-VL: one budget for the clip
        vid = replace(video, clip_min_pixels=min_pixels, clip_max_pixels=max_pixels * video_frames
                      ).to_video_preprocessor_config(image)
    (folder / "video_preprocessor_config.json").write_text(json.dumps(vid, indent=2) + "\n")
    return folder
