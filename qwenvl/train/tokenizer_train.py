"""Train the shipped tiny models' vocabulary: a small byte-level BPE, exported as a `qwen.tiktoken` ranks file.

The BPE is learned with the `tokenizers` library (NFC, Qwen's split regex, byte-level), then written in
the format `QwenV1Tokenizer.from_file` reads: one `base64(token_bytes) rank` per line, ranks 0..n-1.
Ranks 0..255 are the 256 single bytes in byte order (so v1 image spans, which reuse ids 0..255 as a
byte carrier, keep working), then every merged token in the order the trainer learned it. tiktoken
merges the pair whose concatenation has the lowest rank, so learn order is the right rank order; the
v1 special tokens then get ids n + index exactly as for the real 151,643-rank vocabulary.

Must not: know chat formats, read data files (callers pass the texts), or touch the model.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from qwenvl.processing.tokenizer_v1 import PAT_STR


def _byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level alphabet: each of the 256 printable stand-in characters -> its byte."""
    # GPT-2's table: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards in byte order.
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _normalized(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield unicodedata.normalize("NFC", t)


def qwen_byte_level(tok: Tokenizer) -> Tokenizer:
    """Qwen's text pipeline on a BPE model: NFC, the split regex, byte-level alphabet and decoder."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE (`tokenizers.Tokenizer`) with at most vocab_size tokens, 256 single bytes included."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (every single byte is a token), got {vocab_size}")
    tok = qwen_byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_normalized(texts), trainer=trainer)
    return tok


def bpe_to_ranks(tok: Tokenizer) -> dict[bytes, int]:
    """A trained byte-level BPE -> tiktoken mergeable ranks: 256 bytes (rank = byte), then merges in order."""
    decode = _byte_decoder()
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tok.to_str())["model"]["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = bytes(decode[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    return ranks


def write_ranks(ranks: dict[bytes, int], out_path: str | Path) -> Path:
    """Write `base64(token) rank` lines in rank order."""
    out_path = Path(out_path)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("ranks must be exactly 0..n-1")
    lines = [f"{base64.b64encode(t).decode('ascii')} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(lines), encoding="ascii")
    return out_path


def train_ranks(texts: Iterable[str], vocab_size: int, out_path: str | Path, min_frequency: int = 2) -> Path:
    """Train a byte-level BPE on texts and write it as a qwen.tiktoken-format file of <= vocab_size ranks.

    vocab_size counts regular tokens (the 256 bytes included); QwenV1Tokenizer adds its 217 special
    tokens after them. Fewer ranks come out when the corpus has no more pairs seen min_frequency times.
    """
    return write_ranks(bpe_to_ranks(train_bpe(texts, vocab_size, min_frequency)), out_path)
