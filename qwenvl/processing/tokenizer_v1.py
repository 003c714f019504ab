"""Qwen-VL v1 tokenizer: tiktoken BPE over `qwen.tiktoken`, v1 special tokens, image-span expansion.

Mirrors the behaviour of the original `tokenization_qwen.py` as described in architecture-facts A.7:
NFC-normalised text, the exact PAT_STR, special ids `len(ranks) + index`, and every `<img>path</img>`
expanded to `<img>` + the path's UTF-8 bytes as ids 0..255 + `<imgpad>` up to 256 + `</img>` (258 ids).

Text can be encoded as pieces with different trust (`encode_pieces`): a user's text is encoded with no
special tokens at all, so a literal `<img>` typed by a user stays plain text and never opens an image
(pain point 9). Adjacent plain text from different pieces is merged before BPE, so the ids equal the
original tokenizer's whenever the user text contains no tag literals.

Must not: download anything, know about chat roles (see chat_v1.py), or touch images/tensors.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import tiktoken

PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_PAD = "<img>", "</img>", "<imgpad>"
# The tags the original allows as special inside chat content (its IMAGE_ST); order matters for ids.
IMAGE_TAGS: tuple[str, ...] = (
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
    IMG_START,
    IMG_END,
    IMG_PAD,
)
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    *(f"<|extra_{i}|>" for i in range(205)),
    *IMAGE_TAGS,
)
IMG_TOKEN_SPAN = 256  # ids between <img> and </img>: path bytes then <imgpad> padding

# allow_special: True = every special token, False = none (plain text), or an explicit set of strings.
AllowSpecial = bool | Collection[str]


@dataclass(frozen=True)
class ImageSpan:
    """One closed image span in an id list: ids[start] is <img>, ids[end] is </img>."""

    start: int
    end: int
    path: str


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a `qwen.tiktoken` file: one `base64(token) rank` per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:  # wrong field count, bad base64 (binascii.Error) and a non-integer rank are all ValueErrors
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: expected 'base64token rank', got {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not exactly 0..{len(ranks) - 1}")
    return ranks


@lru_cache(maxsize=64)
def _special_regex(tokens: frozenset[str]) -> re.Pattern[str] | None:
    if not tokens:
        return None
    # Longest first so no token can shadow a longer one that starts the same way.
    alternation = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(f"({alternation})")


class QwenV1Tokenizer:
    """Qwen-VL v1 tokenizer. `encode`/`decode` work on plain Python lists of ids."""

    def __init__(self, ranks: dict[bytes, int], image_span: int = IMG_TOKEN_SPAN) -> None:
        self.ranks = ranks
        self.image_span = image_span  # = the model's n_queries (256 for the released models)
        self.special_tokens = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.id_to_special = {i: tok for tok, i in self.special_tokens.items()}
        self.enc = tiktoken.Encoding(
            "qwen_v1", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.eod_id = self.special_tokens[ENDOFTEXT]
        self.im_start_id = self.special_tokens[IM_START]
        self.im_end_id = self.special_tokens[IM_END]
        self.img_start_id = self.special_tokens[IMG_START]
        self.img_end_id = self.special_tokens[IMG_END]
        self.img_pad_id = self.special_tokens[IMG_PAD]

    @classmethod
    def from_file(cls, path: str | Path, image_span: int = IMG_TOKEN_SPAN) -> QwenV1Tokenizer:
        return cls(load_ranks(path), image_span)

    @classmethod
    def from_folder(cls, folder: str | Path, image_span: int = IMG_TOKEN_SPAN) -> QwenV1Tokenizer:
        path = Path(folder) / "qwen.tiktoken"
        if not path.is_file():
            raise FileNotFoundError(f"no qwen.tiktoken in {folder} (a Qwen-VL v1 checkpoint folder has one)")
        return cls.from_file(path, image_span)

    @property
    def vocab_size(self) -> int:
        """Real vocabulary (151,860); the model's embedding may have more (padded) rows."""
        return len(self.ranks) + len(SPECIAL_TOKENS)

    def token_id(self, token: str) -> int:
        """Id of a special token or of a string that is exactly one regular token."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        rank = self.ranks.get(token.encode("utf-8"))
        if rank is None:
            raise KeyError(f"{token!r} is neither a special token nor a single regular token")
        return rank

    # ---------------------------------------------------------------- encoding

    def encode(self, text: str, allow_special: AllowSpecial = True) -> list[int]:
        """Text -> ids. allow_special=True mirrors the original `tokenize` (all specials, image spans
        expanded); False treats every tag literally as text, so it can never open an image."""
        return self.encode_pieces([(text, allow_special)])

    def encode_pieces(self, pieces: Sequence[tuple[str, AllowSpecial]]) -> list[int]:
        """Encode concatenated pieces, each with its own set of recognised special tokens.

        Used by the chat builder: markup pieces ("Picture 1: <img>", "</img>\\n") allow the image tags,
        user pieces allow nothing. Plain text runs are merged across piece borders before BPE.
        Raises ValueError for an unclosed `<img>` or a path longer than 256 UTF-8 bytes.
        """
        items = self._lex(pieces)
        ids: list[int] = []
        i = 0
        while i < len(items):
            is_special, text = items[i]
            if not is_special:
                ids.extend(self.enc.encode_ordinary(text))
            elif text == IMG_START:
                close = next((j for j in range(i + 1, len(items)) if items[j] == (True, IMG_END)), None)
                if close is None:
                    raise ValueError(
                        "unclosed image token: '<img>' without a following '</img>'; pass user text with "
                        "allow_special=False to keep a literal '<img>'"
                    )
                # Anything between the tags is the path, whatever it tokenised as.
                path = "".join(t for _, t in items[i + 1 : close])
                ids.extend(self._image_span_ids(path))
                i = close
            else:
                ids.append(self.special_tokens[text])
            i += 1
        return ids

    def _lex(self, pieces: Sequence[tuple[str, AllowSpecial]]) -> list[tuple[bool, str]]:
        """Split pieces into (is_special, text) items, merging adjacent plain text."""
        items: list[tuple[bool, str]] = []
        for text, allow in pieces:
            text = unicodedata.normalize("NFC", text)
            allowed = frozenset(self.special_tokens if allow is True else () if allow is False else allow)
            unknown = allowed - self.special_tokens.keys()
            if unknown:
                raise ValueError(f"not v1 special tokens: {sorted(unknown)}")
            pattern = _special_regex(allowed)
            parts = pattern.split(text) if pattern else [text]
            # re.split with one capture group alternates text, special, text, ...
            for k, part in enumerate(parts):
                is_special = k % 2 == 1
                if not is_special and not part:
                    continue
                if not is_special and items and not items[-1][0]:
                    items[-1] = (False, items[-1][1] + part)
                else:
                    items.append((is_special, part))
        return items

    def _image_span_ids(self, path: str) -> list[int]:
        """`<img>` + one id per UTF-8 byte of path + `<imgpad>` padding + `</img>`: image_span + 2 ids."""
        data = path.encode("utf-8")
        if len(data) > self.image_span:
            raise ValueError(
                f"image path is {len(data)} UTF-8 bytes; Qwen-VL v1 holds at most {self.image_span} "
                f"(path starts {path[:60]!r})"
            )
        # Ids 0..255 are reused as a byte carrier; their surface forms as BPE tokens do not matter.
        body = list(data) + [self.img_pad_id] * (self.image_span - len(data))
        return [self.img_start_id, *body, self.img_end_id]

    # ---------------------------------------------------------------- decoding

    def image_spans(self, ids: Sequence[int]) -> list[ImageSpan]:
        """Closed image spans in ids, in order. An unclosed trailing `<img>` is ignored."""
        spans: list[ImageSpan] = []
        i = 0
        while i < len(ids):
            if ids[i] == self.img_start_id:
                close = next((j for j in range(i + 1, len(ids)) if ids[j] == self.img_end_id), None)
                if close is None:
                    break
                body = ids[i + 1 : close]
                n = next((k for k, t in enumerate(body) if t == self.img_pad_id), len(body))
                data = bytes(t for t in body[:n] if 0 <= t < 256)
                spans.append(ImageSpan(i, close, data.decode("utf-8", errors="replace")))
                i = close
            i += 1
        return spans

    def image_paths(self, ids: Sequence[int]) -> list[str]:
        """The image paths carried by the closed image spans of ids."""
        return [s.path for s in self.image_spans(ids)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Ids -> text. Image spans decode back to `<img>path</img>` (or vanish with skip_special).

        Ids outside the real vocabulary (a model's padded embedding rows) decode to U+FFFD rather
        than raising, so a sampled out-of-vocab id cannot crash a server.
        """
        out: list[str] = []
        run: list[int] = []  # ordinary ids decoded together so multi-byte characters survive

        def flush() -> None:
            if run:
                out.append(self.enc.decode_bytes(run).decode("utf-8", errors="replace"))
                run.clear()

        spans = {s.start: s for s in self.image_spans(ids)}
        i = 0
        while i < len(ids):
            t = int(ids[i])
            if i in spans:
                flush()
                if not skip_special:
                    out.append(f"{IMG_START}{spans[i].path}{IMG_END}")
                i = spans[i].end + 1
                continue
            if t in self.id_to_special:
                flush()
                if not skip_special:
                    out.append(self.id_to_special[t])
            elif 0 <= t < len(self.ranks):
                run.append(t)
            else:
                flush()
                out.append("\ufffd")
            i += 1
        flush()
        return "".join(out)

    # ---------------------------------------------------------------- for a grammar library

    def token_bytes(self) -> list[bytes]:
        """The bytes of every id < vocab_size: the ranks' keys, then each special token as its text."""
        out = [b""] * self.vocab_size
        for data, rank in self.ranks.items():
            out[rank] = data
        for tok, i in self.special_tokens.items():
            out[i] = tok.encode("utf-8")
        return out

    def special_ids(self) -> frozenset[int]:
        """Every v1 special token (<|im_end|>, <img>, <|extra_0|>, ...): never part of generated text."""
        return frozenset(self.special_tokens.values())

    def encode_bytes(self, data: bytes) -> list[int]:
        """Canonical ids of raw bytes, no NFC (the bytes round-trip), no specials; bytes that are not
        UTF-8 go one byte token each (every byte is a rank)."""
        try:
            return self.enc.encode_ordinary(data.decode("utf-8"))
        except UnicodeDecodeError:
            return [self.ranks[bytes([b])] for b in data]
