"""QwenTokenizer against two independent references built from the real Qwen vocabulary.

References: (a) tiktoken over dashscope's qwen.tiktoken ranks with the exact split regex (facts A.7);
(b) transformers' tokenizers loaded from the folder our fixture builds. Also: special ids come from
the folder, and user-typed special-token strings stay ordinary text (pain point 9).
"""

from __future__ import annotations

import ast
import json
import unicodedata
from pathlib import Path

import pytest

from qwenvl.processing.tokenizer import QwenTokenizer
from tests.fixtures.qwen2_tokenizer import PAT_STR, QWEN2_VL_SPECIAL_TOKENS, load_ranks, write_qwen2_tokenizer

# Mixed English / Chinese / code / emoji / numbers / whitespace. Decomposed accents (e + U+0301)
# are written as escapes so the NFC step is exercised; "\r\n" runs exercise CRLF handling.
MIXED_TEXT = (
    "The quick brown fox didn't jump; it's lazy, they're tired, we've waited, I'm sure you'll see, he'd go.\n"
    "SHOUTING CONTRACTIONS: IT'S, DON'T, THEY'RE, WE'VE, I'M, YOU'LL, HE'D. Mixed: It'S, We'Ve.\n"
    "Cafe\u0301, nai\u0308ve, cre\u0300me bru\u0302le\u0301e, Sc\u030chro\u0308dinger, A\u030angstro\u0308m, "
    "Pok\u00e9mon, fa\u00e7ade, se\u00f1or, \u00fcber, co\u00f6perate, r\u00e9sum\u00e9, \u00c5ngstr\u00f6m.\r\n"
    "Windows line one\r\nWindows line two\r\n\r\nAfter a blank CRLF line.\r\n"
    "Numbers: 0 7 42 3.14159 2.718281828 1,234,567.89 -17 +23 1e-9 6.022e23 0xFF 0b1011 "
    "100000000000000000000 2024-06-30 12:34:56 50% $19.99 \u20ac5,00 \u00a5100 #1 No.9 v2.5.1\n"
    "Whitespace runs:    four spaces,\ttab,\t\ttwo tabs,          ten spaces.   \n"
    "   leading spaces and trailing spaces   \n\n\n\nfour newlines above, then spaces+newlines  \n  \n"
    "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u5427\u3002"
    "\u4eba\u5de5\u667a\u80fd\u6b63\u5728\u6539\u53d8\u4e16\u754c\uff0c\u5927\u578b\u8bed\u8a00\u6a21\u578b"
    "\u80fd\u591f\u7406\u89e3\u56fe\u50cf\u548c\u89c6\u9891\u3002\n"
    "\u901a\u4e49\u5343\u95ee\u662f\u963f\u91cc\u4e91\u7814\u53d1\u7684\u5927\u8bed\u8a00\u6a21\u578b\uff0c"
    "\u652f\u6301\u4e2d\u6587\u3001\u82f1\u6587\u4ee5\u53ca\u591a\u79cd\u8bed\u8a00\u3002"
    "\u8fd9\u5f20\u56fe\u7247\u91cc\u6709\u4e00\u53ea\u732b\u548c\u4e24\u53ea\u72d7\uff0c"
    "\u5b83\u4eec\u5728\u8349\u5730\u4e0a\u73a9\u800d\u3002\u8bf7\u63cf\u8ff0\u56fe\u4e2d\u7684"
    "\u7269\u4f53\u4f4d\u7f6e\uff08\u5750\u6807\u4ece0\u52301000\uff09\u3002\n"
    "\u300a\u6625\u6653\u300b\u6625\u7720\u4e0d\u89c9\u6653\uff0c\u5904\u5904\u95fb\u557c\u9e1f\u3002"
    "\u591c\u6765\u98ce\u96e8\u58f0\uff0c\u82b1\u843d\u77e5\u591a\u5c11\u3002\n"
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3082\u5c11\u3057\u5165\u308c\u307e\u3059\u3002"
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\ub3c4 \uc788\uc2b5\ub2c8\ub2e4. "
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442. "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0646\u0635. \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac.\n"
    "Emoji: \U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
    "\U0001f1e8\U0001f1f3 \U0001f1fa\U0001f1f8 \u2764\ufe0f \U0001f525\U0001f525\U0001f525 \U0001f916\U0001f4f7"
    " \u2728 \u263a \U0001f9d1\u200d\U0001f4bb\n"
    "Math: \u2200x\u2208\u211d, x\u00b2 \u2265 0; \u2211\u1d62 a\u1d62 \u2264 \u221e; "
    "\u03b1+\u03b2=\u03b3; \u222b\u2080\u00b9 f(x) dx \u2248 0.5 \u00b1 0.01\n"
    "```python\n"
    "def smart_resize(height: int, width: int, factor: int = 28) -> tuple[int, int]:\n"
    '    """Round to multiples of `factor` keeping the pixel count in range."""\n'
    "    if max(height, width) / min(height, width) > 200:\n"
    "        raise ValueError(f'aspect ratio too large: {height}x{width}')\n"
    "    h_bar = max(factor, round(height / factor) * factor)\n"
    "    w_bar = max(factor, round(width / factor) * factor)\n"
    "    return h_bar, w_bar  # \u8fd4\u56de\u8c03\u6574\u540e\u7684\u5c3a\u5bf8\n"
    "\n"
    "class Cache:\n"
    "\tdef __init__(self):\n"
    "\t\tself.d = {}  # tab-indented\n"
    "\t\tself.hits, self.misses = 0, 0\n"
    "\n"
    "for i in range(10):\n"
    "    print(i ** 2, end=' ')\n"
    "x = [1, 2, 3]; y = {'a': 1, \"b\": [None, True, False]}; z = lambda q: q @ q.T\n"
    "```\n"
    "// C++: std::vector<int> v{1, 2, 3}; for (auto& e : v) { e <<= 2; } return 0;\n"
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%li%' ORDER BY id DESC;\n"
    "<div class=\"box\">&lt;tag&gt; &amp; <a href='https://example.com/a?b=1&c=2#frag'>link</a></div>\n"
    "JSON: {\"bbox_2d\": [12, 34, 567, 890], \"label\": \"\u732b\", \"score\": 0.987}\n"
    "Box format: <ref>cat</ref>(100,200),(300,400) and [x1, y1, x2, y2] = [0.1, 0.2, 0.3, 0.4]\n"
    "Punctuation runs: !!! ??? ... --- *** ___ ~~~ ((( ))) [[[ ]]] {{{ }}} ,,, ;;; ::: '''\n"
    "Quotes: \u201csmart quotes\u201d \u2018single\u2019 \u00abguillemets\u00bb \u300c\u5f15\u7528\u300d\n"
    "A long word: Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism.\n"
    "URLs: https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/tokenizer_config.json\n"
    "Paths: C:\\Users\\qwen\\Pictures\\cat.png /home/user/data/video_0001.mp4 ./a/b/../c\n"
    "Hex: deadbeef DEADBEEF 0123456789abcdef sha256:6cf5f2a2560a7d58\n"
    "Zero-width and odd spaces: a\u200bb c\u00a0d e\u2009f g\u3000h i\u2028j k\ufeffl\n"
    "Combining only: a\u0300\u0301\u0302 o\u0327 n\u0303 A\u030a\n"
    "Tabs\tbetween\twords\tand\ttrailing\ttab\t\n"
    "Mixed script words: GPT\u6a21\u578b, Qwen2-VL\u89c6\u89c9, 3\u4e2a\u82f9\u679c, iPhone15Pro\u6700\u5927.\n"
)


def _long_text() -> str:
    # Several distinct variants of the block (not just a copy) push the text past 2,000 tokens
    # while changing what sits next to each line boundary.
    variants = [
        MIXED_TEXT,
        MIXED_TEXT.upper(),
        MIXED_TEXT.replace("\n", " \n ").replace(" ", "  "),
        MIXED_TEXT.replace("\n", "\r\n"),
        "".join(reversed(MIXED_TEXT.splitlines(keepends=True))),
    ]
    return "\n".join(variants)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen2_tokenizer(tmp_path_factory.mktemp("qwen2_tok"))


@pytest.fixture(scope="module")
def tok(folder: Path) -> QwenTokenizer:
    return QwenTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def tiktoken_ref():
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding("qwen-ref", pat_str=PAT_STR, mergeable_ranks=load_ranks(), special_tokens={})


def test_ids_match_tiktoken_reference(tok: QwenTokenizer, tiktoken_ref) -> None:
    text = _long_text()
    want = tiktoken_ref.encode_ordinary(unicodedata.normalize("NFC", text))
    assert len(want) >= 2000
    assert tok.encode(text) == want
    assert tok.encode(text, allow_special=False) == want
    assert tok.decode(want) == unicodedata.normalize("NFC", text)


def test_ids_match_transformers(tok: QwenTokenizer, folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    text = _long_text() + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"
    ours = tok.encode(text)
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert auto.encode(text, add_special_tokens=False) == ours
    assert fast.encode(text, add_special_tokens=False) == ours
    assert tok.decode(ours) == auto.decode(ours)
    assert tok.decode(ours, skip_special=True) == auto.decode(ours, skip_special_tokens=True)
    assert tok.vocab_size == len(auto) == 151657


def test_decode_round_trip(tok: QwenTokenizer) -> None:
    for text in [MIXED_TEXT, "<|im_start|>assistant\nok<|im_end|>", "", " ", "\r\n\r\n", "\U0001f468\u200d\U0001f469"]:
        nfc = unicodedata.normalize("NFC", text)
        assert tok.decode(tok.encode(text)) == nfc
        assert tok.decode(tok.encode(text, allow_special=False)) == nfc
    assert tok.decode(tok.encode("<|im_start|>hi<|im_end|>"), skip_special=True) == "hi"


def test_special_ids_and_defaults_from_folder(tok: QwenTokenizer) -> None:
    for content, want in QWEN2_VL_SPECIAL_TOKENS.items():
        assert tok.special_tokens[content] == want
        assert tok.token_id(content) == want
        assert tok.encode(content) == [want]
    assert tok.eos_ids == [151645]
    assert tok.pad_id == 151643
    assert tok.token_id("\u0120the") == tok.encode(" the")[0]  # byte-level form of " the"
    with pytest.raises(KeyError, match="no_such_token"):
        tok.token_id("<|no_such_token|>")


def test_changed_ids_in_folder_are_honoured(tmp_path: Path) -> None:
    specials = dict(QWEN2_VL_SPECIAL_TOKENS)
    specials["<|image_pad|>"], specials["<|video_pad|>"] = 151656, 151655
    folder = write_qwen2_tokenizer(tmp_path, special_tokens=specials, eos_token="<|endoftext|>")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643], "pad_token_id": 7}))
    tok = QwenTokenizer.from_folder(folder)
    assert tok.token_id("<|image_pad|>") == 151656
    assert tok.encode("a<|image_pad|><|video_pad|>") == [64, 151656, 151655]
    assert tok.eos_ids == [151643, 151645]
    assert tok.pad_id == 151643  # tokenizer_config pad_token wins over generation_config


def test_tokens_missing_from_tokenizer_json_and_id_gaps(tmp_path: Path) -> None:
    # Pain point 9: some published folders list a token in tokenizer_config.json only. The tokenizers
    # library would then renumber every later added token (and close id gaps); the loader must not.
    specials = {**QWEN2_VL_SPECIAL_TOKENS, "<|image_pad|>": 151700}
    folder = write_qwen2_tokenizer(tmp_path, special_tokens=specials, omit_from_tokenizer_json=("<|vision_pad|>",))
    tok = QwenTokenizer.from_folder(folder)
    assert tok.encode("<|vision_pad|><|image_pad|><|video_pad|>") == [151654, 151700, 151656]
    assert tok.decode([151700, 151654]) == "<|image_pad|><|vision_pad|>"
    assert tok.vocab_size == 151701


def test_conflicting_ids_and_missing_files_are_errors(tmp_path: Path) -> None:
    folder = write_qwen2_tokenizer(tmp_path / "a")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["151700"] = config["added_tokens_decoder"].pop("151655")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_pad"):
        QwenTokenizer.from_folder(folder)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        QwenTokenizer.from_folder(tmp_path / "empty")


def test_user_typed_special_strings_stay_text(tok: QwenTokenizer, tiktoken_ref) -> None:
    for content in QWEN2_VL_SPECIAL_TOKENS:
        text = f"Please explain {content} and{content}{content}."
        ids = tok.encode(text, allow_special=False)
        assert not set(ids) & set(tok.special_tokens.values()), content
        assert ids == tiktoken_ref.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert tok.encode(text).count(tok.special_tokens[content]) == 3  # trusted text: real ids


def test_encode_segments(tok: QwenTokenizer) -> None:
    trusted = [("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>", True), ("<|im_end|>\n", True)]
    typed = "\n\n  Is <|image_pad|> or <|im_end|> an image?"
    ids = tok.encode_segments([trusted[0], (typed, False), trusted[1]])
    assert ids.count(151655) == 1 and ids.count(151645) == 1
    assert tok.decode(ids) == trusted[0][0] + typed + trusted[1][0]
    # Without special strings in user text the ids equal encoding the joined string: "\n" + "\n\n"
    # across the piece edge still merges into one token, as in the reference.
    plain = [("<|im_start|>user\n", True), ("\n\n  hello", False), (" world<|im_end|>\n", True)]
    assert tok.encode_segments(plain) == tok.encode("".join(t for t, _ in plain))
    assert tok.encode_segments([(MIXED_TEXT, True)]) == tok.encode(MIXED_TEXT)
    assert tok.encode_segments([]) == []


def test_grounding_tags_in_caller_text_are_special(tok: QwenTokenizer) -> None:
    """Box / ref markers in a question or an earlier answer get their ids (as transformers gives them);
    chat-structure and vision tokens in the same text stay text."""
    typed = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> <|image_pad|>"
    ids = tok.encode_segments([(typed, False)])
    for name in ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"):
        assert ids.count(tok.special_tokens[name]) == 1, name
    assert tok.special_tokens["<|image_pad|>"] not in ids
    assert tok.decode(ids) == typed


def test_modules_do_not_import_transformers() -> None:
    # transformers is a test-only reference; check the imports statically (importing qwenvl
    # would pull in torch through the package __init__ and cost seconds).
    root = Path(__file__).resolve().parents[2] / "qwenvl" / "processing"
    for name in ("tokenizer.py", "chat_template.py"):
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] == "transformers"}, name
