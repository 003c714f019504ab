"""The qwenvl-tiny vocabulary: a byte-level BPE exported as qwen.tiktoken ranks that QwenV1Tokenizer loads."""

from __future__ import annotations

import base64

import pytest
from tokenizers import pre_tokenizers

from qwenvl.processing.tokenizer_v1 import IMG_PAD, SPECIAL_TOKENS, QwenV1Tokenizer, load_ranks
from qwenvl.train.tokenizer_train import _byte_decoder, bpe_to_ranks, train_bpe, train_ranks

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}


def corpus() -> list[str]:
    """Corpus-like text: questions and answers in English and Chinese, numbers and boxes."""
    out = []
    for i, c in enumerate(COLOURS):
        for j, s in enumerate(SHAPES):
            n = 3 * i + j
            out += [f"What colour is the {s} at the top left?", f"The {s} is {c}.",
                    f"How many {s}s are there? There are {n} {s}s.",
                    f"图中有{n}个{ZH[c]}的形状。",
                    f"<ref>the {c} {s}</ref><box>({10 * i},{20 * j}),({300 + i},{400 + j})</box>"]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = train_ranks(corpus(), 400, tmp_path_factory.mktemp("vocab") / "qwen.tiktoken")
    return path, QwenV1Tokenizer.from_file(path)


def test_byte_alphabet_is_the_libraries():
    assert set(_byte_decoder()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(_byte_decoder().values()) == list(range(256))


def test_file_format_and_vocab_size(tiny):
    path, tok = tiny
    lines = path.read_text().splitlines()
    ranks = load_ranks(path)  # checks ranks are exactly 0..n-1
    assert 256 < len(ranks) <= 400 and len(lines) == len(ranks)
    assert all(ranks[bytes([b])] == b for b in range(256))  # every single byte, rank = byte value
    token, rank = lines[300].split()
    assert ranks[base64.b64decode(token)] == int(rank) == 300


def test_special_ids_follow_the_ranks(tiny):
    _, tok = tiny
    n = len(tok.ranks)
    assert all(tok.special_tokens[t] == n + k for k, t in enumerate(SPECIAL_TOKENS))
    assert tok.vocab_size == n + 217 and tok.eod_id == n and tok.im_end_id == n + 2


def test_round_trip_and_compression(tiny):
    _, tok = tiny
    for text in ["The purple triangle is at the top left. 图中有12个蓝色的形状。 0123456789",
                 "unseen words: zebra, 東京, émoji 🙂\n\n  tabs\tand spaces  ", *corpus()[:20]]:
        ids = tok.encode(text, allow_special=False)
        assert tok.decode(ids) == text
        assert max(ids) < len(tok.ranks)
    seen = " ".join(corpus())
    assert len(tok.encode(seen, allow_special=False)) < len(seen.encode()) / 2  # merges are actually used


def test_tiktoken_encoding_equals_the_trained_bpe():
    """Ranks in learn order make tiktoken's lowest-rank-first merging reproduce the trained BPE."""
    hf = train_bpe(corpus(), 400)
    ranks = bpe_to_ranks(hf)
    tok, dec = QwenV1Tokenizer(ranks), _byte_decoder()
    for text in [*corpus(), "The purple triangle is at the top left. 图中有12个蓝色的形状。 0123456789"]:
        want = [ranks[bytes(dec[c] for c in piece)] for piece in hf.encode(text).tokens]
        assert tok.encode(text, allow_special=False) == want


def test_image_span_expansion_with_the_small_vocab(tiny):
    _, tok = tiny
    ids = tok.encode("Picture 1: <img>imgs/a.png</img>\nWhat colour is the star?")
    (span,) = tok.image_spans(ids)
    assert span.end - span.start == 257 and span.path == "imgs/a.png"
    assert ids[span.start + 1:span.start + 11] == list(b"imgs/a.png")
    assert ids[span.start + 11:span.end] == [tok.special_tokens[IMG_PAD]] * 246
    assert tok.decode(ids) == "Picture 1: <img>imgs/a.png</img>\nWhat colour is the star?"


def test_vocab_size_below_bytes_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="256"):
        train_ranks(["abc"], 100, tmp_path / "x.tiktoken")
