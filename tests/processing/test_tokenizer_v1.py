"""QwenV1Tokenizer against a plain tiktoken Encoding built here from the same ranks file (architecture-facts A.7)."""

from __future__ import annotations

import base64
import os
import random
import shutil
import unicodedata

import pytest
import tiktoken

from qwenvl.processing.tokenizer_v1 import IMAGE_TAGS, QwenV1Tokenizer

# Written out again here (not imported) so a typo in the module cannot hide in the reference.
REF_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
REF_SPECIALS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    + [f"<|extra_{i}|>" for i in range(205)]
    + ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"]
)


def _ranks_path() -> str:
    dashscope = pytest.importorskip("dashscope")
    return os.path.join(os.path.dirname(dashscope.__file__), "resources", "qwen.tiktoken")


@pytest.fixture(scope="module")
def tok() -> QwenV1Tokenizer:
    return QwenV1Tokenizer.from_file(_ranks_path())


@pytest.fixture(scope="module")
def ref() -> tiktoken.Encoding:
    with open(_ranks_path(), "rb") as f:
        ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())}
    specials = {s: len(ranks) + i for i, s in enumerate(REF_SPECIALS)}
    return tiktoken.Encoding("ref", pat_str=REF_PAT, mergeable_ranks=ranks, special_tokens=specials)


def _ref_encode(ref: tiktoken.Encoding, text: str) -> list[int]:
    """The original algorithm: encode with every special allowed, then replace each closed
    <img>...</img> token run by <img> + path bytes as ids + <imgpad> * rest + </img>."""
    ids = ref.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    start, end, pad = (ref.encode_single_token(t) for t in ("<img>", "</img>", "<imgpad>"))
    out, i = [], 0
    while i < len(ids):
        if ids[i] == start:
            j = ids.index(end, i)
            path = ref.decode_bytes(ids[i + 1 : j])
            out += [start, *path, *[pad] * (256 - len(path)), end]
            i = j + 1
        else:
            out.append(ids[i])
            i += 1
    return out


FRAGMENTS = [
    "The quick brown fox jumps over the lazy dog. ",
    "It's what they'd've wanted, isn't it? I'M SURE WE'LL see. ",
    "我们今天去公园散步，天气非常好。",
    "通义千问是一个大型语言模型，支持中文和英文。",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }\r\n",
    "🙂🚀👩‍👩‍👧 emoji 🎉🎉 ",
    "Price: $1,234.56 (≈ €1 100) on 2024-03-15T12:00:00Z\t",
    "   leading spaces and trailing   \n\n\n",
    "caf\u0065\u0301 na\u00efve re\u0301sume\u0301 ",  # combining accents: NFC must compose them
    "日本語のテキストも少し。한국어 텍스트도. Ελληνικά. Русский текст. ",
    "URL https://example.com/a/b?c=d&e=f#g and path /tmp/x_y-z.png ",
    "1234567890 3.14159 -42 1e-9 ",
    "<|im_start|>user\nhi<|im_end|><|extra_12|><|endoftext|> <quad>(1,2)</quad> ",
]


def test_special_ids_and_vocab(tok: QwenV1Tokenizer) -> None:
    assert tok.eod_id == tok.token_id("<|endoftext|>") == 151643
    assert (tok.im_start_id, tok.im_end_id) == (151644, 151645)
    assert tok.token_id("<|extra_0|>") == 151646 and tok.token_id("<|extra_204|>") == 151850
    expected = dict(zip(IMAGE_TAGS, range(151851, 151860), strict=True))
    assert {t: tok.token_id(t) for t in IMAGE_TAGS} == expected
    assert (tok.img_start_id, tok.img_end_id, tok.img_pad_id) == (151857, 151858, 151859)
    assert tok.vocab_size == 151860
    assert tok.token_id("!") == 0  # rank 0 is b"!" (byte tokens are not in byte order)
    with pytest.raises(KeyError):
        tok.token_id("not one token at all")


def test_matches_tiktoken_on_mixed_text(tok: QwenV1Tokenizer, ref: tiktoken.Encoding) -> None:
    rng = random.Random(0)
    total = 0
    texts = ["".join(rng.choices(FRAGMENTS, k=rng.randint(1, 8))) for _ in range(60)] + FRAGMENTS
    for text in texts:
        ids = tok.encode(text)
        assert ids == _ref_encode(ref, text), text
        assert tok.encode(text, allow_special=False) == ref.encode_ordinary(unicodedata.normalize("NFC", text))
        assert tok.decode(ids) == unicodedata.normalize("NFC", text)
        total += len(ids)
    assert total >= 2000


def test_matches_tiktoken_with_image_spans_and_boxes(tok: QwenV1Tokenizer, ref: tiktoken.Encoding) -> None:
    rng = random.Random(1)
    paths = ["a.jpg", "/data/图片/猫 cat.png", "https://example.com/x.jpeg?size=large", "p" * 256]
    total = 0
    for _ in range(30):
        parts = []
        for _ in range(rng.randint(1, 5)):
            kind = rng.random()
            if kind < 0.3:
                parts.append(f"Picture {rng.randint(1, 9)}: <img>{rng.choice(paths)}</img>\n")
            elif kind < 0.5:
                parts.append(
                    f"<ref>{rng.choice(FRAGMENTS)}</ref><box>({rng.randint(0, 999)},7),(999,{rng.randint(0, 9)})</box>"
                )
            else:
                parts.append(rng.choice(FRAGMENTS))
        text = "".join(parts)
        ids = tok.encode(text)
        assert ids == _ref_encode(ref, text), text
        total += len(ids)
    assert total >= 2000


def test_image_span_layout_and_round_trip(tok: QwenV1Tokenizer) -> None:
    path = "/data/图片/猫.png"
    data = path.encode("utf-8")
    ids = tok.encode(f"see <img>{path}</img> here")
    span = ids[ids.index(tok.img_start_id) : ids.index(tok.img_end_id) + 1]
    assert len(span) == 258
    assert span[1 : 1 + len(data)] == list(data)
    assert span[1 + len(data) : -1] == [tok.img_pad_id] * (256 - len(data))
    assert tok.image_paths(ids) == [path]
    assert tok.decode(ids) == f"see <img>{path}</img> here"
    assert tok.decode(ids, skip_special=True) == "see  here"
    (s,) = tok.image_spans(ids)
    assert ids[s.start] == tok.img_start_id and ids[s.end] == tok.img_end_id and s.end - s.start == 257


def test_several_images_keep_order(tok: QwenV1Tokenizer) -> None:
    ids = tok.encode("<img>b.png</img><img>a.png</img>x<img></img>")
    assert tok.image_paths(ids) == ["b.png", "a.png", ""]
    assert len(ids) == 3 * 258 + 1


def test_path_length_limit(tok: QwenV1Tokenizer) -> None:
    assert len(tok.encode("<img>" + "é" * 128 + "</img>")) == 258  # exactly 256 bytes is fine
    with pytest.raises(ValueError, match="257 UTF-8 bytes"):
        tok.encode("<img>" + "x" * 257 + "</img>")


def test_unclosed_image_tag(tok: QwenV1Tokenizer) -> None:
    with pytest.raises(ValueError, match="unclosed image token"):
        tok.encode("look <img>a.jpg")
    # A stray closing tag is just a special token, as in the original.
    assert tok.encode("x </img>")[-1] == tok.img_end_id


def test_literal_tags_in_user_text_stay_text(tok: QwenV1Tokenizer, ref: tiktoken.Encoding) -> None:
    text = "How do I write <img> or <|im_end|> or <imgpad> in HTML? <img>not-an-image</img>"
    ids = tok.encode(text, allow_special=False)
    assert ids == ref.encode_ordinary(text)
    assert not set(ids) & set(tok.id_to_special)
    assert tok.image_paths(ids) == []
    assert tok.decode(ids) == text


def test_pieces_mix_markup_and_user_text(tok: QwenV1Tokenizer) -> None:
    tags = set(IMAGE_TAGS)
    pieces = [("Picture 1: <img>", tags), ("a.jpg", False), ("</img>\n", tags), ("what is <img>?", False)]
    ids = tok.encode_pieces(pieces)
    assert tok.image_paths(ids) == ["a.jpg"]
    assert ids.count(tok.img_start_id) == 1
    # Without tag literals, pieces equal encoding the joined string (plain runs merge across pieces).
    plain = [("Picture 1: <img>", tags), ("a.jpg", False), ("</img>\n", tags), ("\n\nwhat is it?", False)]
    assert tok.encode_pieces(plain) == tok.encode("".join(t for t, _ in plain), allow_special=tags)
    # Inside chat content only the image/box tags are special: <|im_end|> is text there.
    assert tok.im_end_id not in tok.encode("a<|im_end|>b", allow_special=tags)
    with pytest.raises(ValueError, match="not v1 special tokens"):
        tok.encode("x", allow_special={"<|box_start|>"})


def test_decode_is_lenient(tok: QwenV1Tokenizer) -> None:
    assert tok.decode([40, 151900, 40]) == tok.decode([40]) + "\ufffd" + tok.decode([40])
    truncated = tok.encode("<img>a.jpg</img>")[:10]  # a stream cut inside a span: no crash
    assert isinstance(tok.decode(truncated), str) and tok.image_paths(truncated) == []
    assert tok.decode(tok.encode("<|im_start|>user")) == "<|im_start|>user"


def test_from_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="qwen.tiktoken"):
        QwenV1Tokenizer.from_folder(tmp_path)
    shutil.copy(_ranks_path(), tmp_path / "qwen.tiktoken")
    assert QwenV1Tokenizer.from_folder(tmp_path).encode("hello world") == [14990, 1879]
