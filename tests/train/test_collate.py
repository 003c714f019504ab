"""Padding and packing: layout checks, and packed loss == unpacked loss on tiny random models (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.families.qwen_vl import v1_from_hf_dict
from qwenvl.model.qwenvl import QwenVLModel
from qwenvl.processing.processor import Qwen2VLProcessor
from qwenvl.processing.processor_v1 import QwenV1Processor
from qwenvl.processing.tokenizer_v1 import QwenV1Tokenizer
from qwenvl.train.batch import IGNORE, forward_loss
from qwenvl.train.collate import collate, pack_rows
from qwenvl.train.data import TextDataset
from qwenvl.train.masks import build_example
from qwenvl.train.tokenizer_train import train_ranks
from qwenvl.weights import init_buffers, load_model, read_config
from tests.train.test_tokenizer_train import corpus


def image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def chat(*turns) -> list[dict]:
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": c} for k, c in enumerate(turns)]


def img(pil) -> dict:
    return {"type": "image", "image": pil}


def txt(s: str) -> dict:
    return {"type": "text", "text": s}


def check_rows(rows: list[list[int]], lengths: list[int], max_len: int) -> None:
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= max_len for r in rows)


def assert_same_loss(model, examples, pad_id: int, max_len: int, singles: bool = True) -> None:
    """Mean over targets: packed batch == padded batch (== sum of single-example sums / all targets)."""
    padded = collate(examples, pad_id, packing=False)
    packed = collate(examples, pad_id, packing=True, max_len=max_len)
    assert packed.input_ids.shape[0] < len(examples) and packed.num_targets == padded.num_targets
    with torch.no_grad():
        want = forward_loss(model, padded)
        if singles:
            total = sum(forward_loss(model, collate([ex], pad_id), reduction="sum") for ex in examples)
            torch.testing.assert_close(want, total / padded.num_targets, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(forward_loss(model, packed), want, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------- layout


def test_pack_rows_first_fit_in_order():
    assert pack_rows([5, 7, 3, 2, 6], 10) == [[0, 2, 3], [1], [4]]
    check_rows(pack_rows([5, 7, 3, 2, 6], 10), [5, 7, 3, 2, 6], 10)
    with pytest.raises(ValueError, match="more than max_len"):
        pack_rows([5, 11], 10)


@pytest.fixture(scope="module")
def v25(tiny_ckpt):
    folder, _ = tiny_ckpt("qwen2_5_vl")
    proc = Qwen2VLProcessor.from_folder(folder, read_config(folder))
    return proc, load_model(folder)


@pytest.fixture(scope="module")
def v25_examples(v25):
    proc, _ = v25
    frames = [image(56, 56, 10 + k) for k in range(4)]
    convs = [
        chat([img(image(56, 56, 1)), txt("What is this?")], "A noisy square."),
        chat([{"type": "video", "video": frames, "min_pixels": 56 * 56, "max_pixels": 56 * 56},
              img(image(84, 56, 2)), txt("Compare the clip and the picture.")],
             "They are both noise, but the picture is wider than the clip and it has more columns.",
             [txt("Sure?")], "Yes."),
        chat("Say hi.", "Hi!"),
        chat([img(image(56, 112, 3)), txt("And this one?")], "A tall one."),
    ]
    return [build_example(proc, c) for c in convs]


def row_len(lengths: list[int]) -> int:
    return max(lengths[1], lengths[0] + lengths[2] + lengths[3])


def test_padded_batch_layout(v25_examples):
    exs = v25_examples
    b = collate(exs, pad_id=151643)
    lengths = [len(ex) for ex in exs]
    assert b.input_ids.shape == (4, max(lengths)) and b.positions.shape == (3, 4, max(lengths))
    assert b.segment_ids is None
    for r, n in enumerate(lengths):
        assert b.key_valid[r].tolist() == [True] * n + [False] * (max(lengths) - n)
        assert (b.labels[r, n:] == IGNORE).all() and (b.input_ids[r, n:] == 151643).all()
        assert b.labels[r, :n].tolist() == exs[r].labels
    assert b.image_grid == [g for ex in exs for g in ex.inputs.image_grid]
    assert b.video_grid == exs[1].inputs.video_grid


def test_packed_batch_layout(v25_examples):
    exs = v25_examples
    lengths = [len(ex) for ex in exs]
    # the video example (1) does not fit after example 0 and opens row 1; examples 2 and 3 still fit into
    # row 0, so the images are read in row-major order 0, 3, 1, which is not the example order
    max_len = row_len(lengths)
    assert lengths[0] + lengths[1] > max_len
    rows = pack_rows(lengths, max_len)
    b = collate(exs, pad_id=151643, packing=True, max_len=max_len)
    order = [i for row in rows for i in row]
    assert rows == [[0, 2, 3], [1]]
    assert b.image_grid == [g for i in order for g in exs[i].inputs.image_grid]  # row-major
    for r, row in enumerate(rows):
        pos = 0
        for seg, i in enumerate(row, start=1):
            n = lengths[i]
            assert (b.segment_ids[r, pos:pos + n] == seg).all()
            assert torch.equal(b.positions[:, r, pos:pos + n], exs[i].inputs.positions)  # restart per sample
            assert b.labels[r, pos] == IGNORE and b.labels[r, pos + 1:pos + n].tolist() == exs[i].labels[1:]
            pos += n
        assert not b.key_valid[r, pos:].any() and (b.segment_ids[r, pos:] == 0).all()


def test_packed_loss_equals_unpacked_loss_qwen25(v25, v25_examples):
    proc, model = v25
    # (single-example losses are checked in the v1 test; the 151,936-row logits make them slow here)
    assert_same_loss(model, v25_examples, proc.tokenizer.pad_id, row_len([len(ex) for ex in v25_examples]),
                     singles=False)


# ------------------------------------------------------------------------------- v1


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    tok = QwenV1Tokenizer.from_file(train_ranks(corpus(), 400, tmp_path_factory.mktemp("v1tok") / "qwen.tiktoken"))
    n = len(tok.ranks)
    cfg = v1_from_hf_dict({
        "model_type": "qwen", "vocab_size": (tok.vocab_size + 63) // 64 * 64, "hidden_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 192,
        "visual": {"heads": 2, "image_size": 28, "image_start_id": n + 214, "layers": 1, "mlp_ratio": 2.0,
                   "output_dim": 128, "patch_size": 14, "width": 32},  # n_queries 256: the tokenizer's span
    })
    assert cfg.image_start_id == tok.img_start_id
    torch.manual_seed(0)
    model = QwenVLModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.08 * torch.randn(p.shape) + (1.0 if p.dim() == 1 and p.shape[0] in (32, 128) else 0.0))
    init_buffers(model, "cpu")
    return QwenV1Processor(cfg, tok), model.eval()


def test_packed_loss_equals_unpacked_loss_v1(v1, tmp_path):
    proc, model = v1
    paths = []
    for k in range(3):
        image(40, 30, k).save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.png"))
    convs = [
        chat([img(paths[0]), txt("What colour is the circle?")], "The circle is red."),
        chat("How many squares are there?", "There are 3 squares."),
        chat([img(paths[1]), txt("Where is the star?")], "<ref>the star</ref><box>(10,20),(300,400)</box>",
             [img(paths[2]), txt("And here?")], "At the top left."),
    ]
    exs = [build_example(proc, c) for c in convs]
    # stage-0 text examples supervise every token, their first one included: packing must drop that target
    exs += list(TextDataset.from_texts(["The star is blue.", "图中有3个红色的圆形。"], proc, 64, shuffle=False))
    assert exs[3].labels[0] != IGNORE
    lengths = [len(ex) for ex in exs]
    assert exs[2].inputs.image_pixels.shape[0] == 2 and lengths[2] > sum(lengths) - lengths[2]
    packed = collate(exs, proc.tokenizer.eod_id, packing=True, max_len=lengths[2])
    assert packed.positions.shape == packed.input_ids.shape  # 1-D positions [B, T]
    assert packed.input_ids.shape[0] == 2 and packed.positions[0, lengths[0]] == 0
    assert_same_loss(model, exs, proc.tokenizer.eod_id, lengths[2])
