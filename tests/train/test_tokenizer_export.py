"""The tiny ranks as a Qwen2-VL tokenizer folder: same ids as the v1 tiktoken tokenizer over the same ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from qwenvl.families import from_hf_dict
from qwenvl.processing.processor import Qwen2VLProcessor
from qwenvl.processing.tokenizer import QwenTokenizer
from qwenvl.processing.tokenizer_v1 import QwenV1Tokenizer, load_ranks
from qwenvl.train.tokenizer_export import QWEN2_VL_SPECIALS, write_qwen2_tokenizer
from qwenvl.train.tokenizer_train import train_ranks
from tests.train.test_tokenizer_train import corpus

# Unlike the corpus: unseen words, digits runs, spaces, newlines, emoji, CJK, punctuation runs.
PROBES = ["What colour is the hexagon at the bottom right?", "  two  spaces\n\nand\tnewlines\r\n",
          "1234567890 / 3.14159 = x", "图中有几个紫色的三角形？答：7个。", "emoji 🙂🙂 and café naïve",
          "<ref>the blue star</ref><box>(12,345),(678,999)</box>", "!!!???...;;; ''\"\"", "RFJAN8N nr8d 990173"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    ranks = train_ranks(corpus(), 400, root / "qwen.tiktoken")
    return ranks, write_qwen2_tokenizer(ranks, root / "qwen2", min_pixels=28 * 28, max_pixels=140 * 140)


def test_ids_equal_tiktoken_over_the_same_ranks(folder):
    ranks, out = folder
    v1, v2 = QwenV1Tokenizer.from_file(ranks), QwenTokenizer.from_folder(out)
    texts = [*corpus(), *PROBES]
    for t in texts:
        assert v2.encode(t, allow_special=False) == v1.encode(t, allow_special=False), t
        assert v2.decode(v2.encode(t, allow_special=False)) == t
    n = len(load_ranks(ranks))
    assert [v2.token_id(t) for t in QWEN2_VL_SPECIALS] == list(range(n, n + len(QWEN2_VL_SPECIALS)))
    assert v2.eos_ids == [n + 2] and v2.pad_id == n  # <|im_end|>, <|endoftext|>
    # a user typing a vision token gets text, not the special id
    assert v2.token_id("<|image_pad|>") not in v2.encode("<|image_pad|>", allow_special=False)


def test_folder_drives_a_qwen2_5_vl_processor(folder, tmp_path):
    _, out = folder
    arch = json.loads((Path(__file__).parents[2] / "recipes" / "arch" / "qwen2_5_vl_tiny.json").read_text())
    n = len(load_ranks(folder[0]))
    arch["text_config"]["vocab_size"] = n + 64
    for key, k in (("image_token_id", 12), ("video_token_id", 13), ("vision_start_token_id", 9),
                   ("vision_end_token_id", 10)):
        arch[key] = n + k
    proc = Qwen2VLProcessor.from_folder(out, from_hf_dict(arch))
    Image.new("RGB", (300, 200), "red").save(tmp_path / "a.png")
    frames = [str(tmp_path / "a.png")] * 4
    inp = proc([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "a.png")},
                                             {"type": "video", "video": frames},
                                             {"type": "text", "text": "What colour?"}]}])
    # the folder's budget holds for images and for video frames (no upscaling to the official 100k-pixel floor)
    (t, h, w), (vt, vh, vw) = inp.image_grid[0], inp.video_grid[0]
    assert t == 1 and h * w * 14 * 14 <= 140 * 140 and vt == 2 and vh * vw * 14 * 14 <= 140 * 140
    assert inp.input_ids.count(n + 12) == h * w // 4 and inp.input_ids.count(n + 13) == vt * vh * vw // 4
    assert inp.text.startswith("<|im_start|>system\n")


def test_bad_ranks_file_is_named(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-base64 1\n")
    with pytest.raises(ValueError, match="bad.tiktoken:2"):
        load_ranks(bad)
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match="not exactly 0..1"):
        load_ranks(gap)
