"""Qwen2-VL / Qwen2.5-VL tokenizer: a thin wrapper over a Hugging Face `tokenizer.json`.

Text -> ids and ids -> text for the Qwen2 byte-level BPE. Special tokens and their ids are read from
the checkpoint folder (tokenizer.json `added_tokens` + tokenizer_config.json `added_tokens_decoder`),
never from constants, because published folders disagree (pain point 9).

The one safety rule (pain point 9): text a user typed is encoded with `allow_special=False`, so a
literal "<|image_pad|>" or "<|im_end|>" in it becomes ordinary text tokens, never the special id.
`encode_segments` encodes a rendered chat whose pieces are marked trusted (template) or not (user).

Must not: download files, know chat templates or images, or import transformers. Qwen-VL (v1) uses
a tiktoken file (`qwen.tiktoken`) and its own image-tag scheme; that tokenizer lives elsewhere.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

# Special tokens that may appear in caller text (questions, earlier answers): they mark boxes and
# referring phrases, never chat structure or vision slots.
GROUNDING_TAGS = frozenset({"<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                            "<|quad_start|>", "<|quad_end|>"})


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _token_content(value: Any) -> str | None:
    """tokenizer_config stores tokens as a string or as a serialized AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class QwenTokenizer:
    """Encode/decode for Qwen2-family checkpoints.

    Attributes:
        special_tokens: every added token (special or not) -> id, as declared by the folder. All of
            them are escaped in user text, because any of them would otherwise match as a unit.
        vocab_size: max id + 1 over regular and added tokens (the ids this tokenizer can emit;
            the model's embedding table is usually larger, e.g. 151936).
        eos_ids: ids that end generation: tokenizer_config `eos_token`, then generation_config.json
            `eos_token_id` entries if that file is present.
        pad_id: tokenizer_config `pad_token`, else generation_config `pad_token_id`, else eos_ids[0].
    """

    def __init__(self, tokenizer: Tokenizer, special_tokens: dict[str, int], eos_ids: list[int], pad_id: int):
        self._tok = tokenizer
        self.special_tokens = dict(special_tokens)
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        ids = [*tokenizer.get_vocab(with_added_tokens=True).values(), *self.special_tokens.values()]
        self.vocab_size = max(ids) + 1
        # Longest first: Python's regex alternation takes the first alternative that matches at a
        # position, so this gives leftmost-longest matching, as the tokenizers library does.
        by_length = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, by_length))) if by_length else None
        grounding = [t for t in by_length if t in GROUNDING_TAGS]
        self._grounding_re = re.compile("|".join(map(re.escape, grounding))) if grounding else None

    @classmethod
    def from_folder(cls, folder: str | Path) -> QwenTokenizer:
        """Load from a checkpoint folder holding tokenizer.json and tokenizer_config.json."""
        folder = Path(folder)
        tok_path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
        for path in (tok_path, config_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: a Qwen2-VL/Qwen2.5-VL checkpoint folder needs tokenizer.json and "
                    "tokenizer_config.json (Qwen-VL v1 folders ship qwen.tiktoken instead)"
                )
        config = _read_json(config_path)
        tokenizer = Tokenizer.from_file(str(tok_path))
        declared = {e["content"]: int(i) for i, e in (config.get("added_tokens_decoder") or {}).items()}
        added = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}
        if added != declared:
            # Slow path (parses the 7 MB JSON): tokens missing from tokenizer.json, ids that the
            # tokenizers library renumbered, or files that disagree.
            tokenizer, added = _reconcile_added_tokens(tok_path, config.get("added_tokens_decoder") or {})
        eos_ids, pad_id = _eos_and_pad(folder, config, tokenizer)
        return cls(tokenizer, added, eos_ids, pad_id)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Text -> ids. allow_special=False for user-typed text: special-token strings stay text."""
        if allow_special:
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._encode_ordinary(text)

    def encode_segments(self, segments: Iterable[tuple[str, bool]]) -> list[int]:
        """Encode `(text, allow_special)` pieces, e.g. `RenderedChat.segments`, as one sequence.

        Every special token is matched inside pieces with allow_special=True. Inside caller text
        (allow_special=False) only the grounding tags (GROUNDING_TAGS: ref / box / quad markers) are,
        as Qwen-VL v1 allows them in content: they cannot open turns or vision slots, and without
        them a user's or an earlier answer's box would not be what the model was trained on. All
        text between two matched special tokens is BPE-encoded as one run even when it spans several
        pieces, so ids equal `encode("".join(texts))` whenever caller text holds no other special string.
        """
        ids: list[int] = []
        run: list[str] = []
        for text, allow_special in segments:
            pattern = self._special_re if allow_special else self._grounding_re
            if pattern is None:
                run.append(text)
                continue
            start = 0
            for match in pattern.finditer(text):
                run.append(text[start : match.start()])
                ids += self._encode_ordinary("".join(run))
                run = []
                ids.append(self.special_tokens[match.group()])
                start = match.end()
            run.append(text[start:])
        ids += self._encode_ordinary("".join(run))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Ids -> text; skip_special drops tokens flagged special (e.g. <|im_end|>)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int:
        """Id of a special or regular token string; KeyError naming the token if absent."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        found = self._tok.token_to_id(token)
        if found is None:
            raise KeyError(f"token {token!r} is not in this tokenizer's vocabulary")
        return found

    def _encode_ordinary(self, text: str) -> list[int]:
        # The tokenizer.json pipeline minus the added-token matcher: normalize (NFC), split with the
        # pre-tokenizer (regex + byte-level), BPE each piece. Same ids as tokenizers would give text
        # with no special-token strings in it.
        if not text:
            return []
        if self._tok.normalizer is not None:
            text = self._tok.normalizer.normalize_str(text)
        pieces = self._tok.pre_tokenizer.pre_tokenize_str(text) if self._tok.pre_tokenizer else [(text, None)]
        model = self._tok.model
        return [token.id for piece, _ in pieces for token in model.tokenize(piece)]

    # -- what a grammar library needs (qwenvl.engine.grammar.Vocab) -------------------------------
    def token_bytes(self) -> list[bytes]:
        """The bytes of every id < vocab_size: regular tokens through the byte-level alphabet back to
        bytes, added tokens as their content's UTF-8 (ids the folder leaves unused: b"")."""
        out = [b""] * self.vocab_size
        for token, i in self._tok.get_vocab(with_added_tokens=False).items():
            out[i] = bytes(_UNICODE_TO_BYTE[c] for c in token)
        for token, i in self.special_tokens.items():
            out[i] = token.encode("utf-8")
        return out

    def special_ids(self) -> frozenset[int]:
        """Added tokens flagged special (<|im_end|>, <|image_pad|>, ...): never part of generated text.
        Non-special added tokens (Qwen2.5's <tool_call>) stay text a grammar may spell."""
        return frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special) | \
            frozenset(i for t, i in self.special_tokens.items() if t not in self._plain_added)

    def encode_bytes(self, data: bytes) -> list[int]:
        """Canonical ids of raw bytes (no normalization, so the bytes round-trip): non-special added
        tokens match as units, the rest is BPE. Bytes that are not UTF-8 go one byte token each."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return [self._byte_ids[b] for b in data]
        ids: list[int] = []
        parts = self._plain_re.split(text) if self._plain_re is not None else [text]
        for k, part in enumerate(parts):  # split with a capture group: text, added token, text, ...
            if k % 2:
                ids.append(self.special_tokens[part])
            elif part:
                pieces = self._tok.pre_tokenizer.pre_tokenize_str(part) if self._tok.pre_tokenizer else [(part, None)]
                ids += [t.id for piece, _ in pieces for t in self._tok.model.tokenize(piece)]
        return ids

    @functools.cached_property
    def _plain_added(self) -> frozenset[str]:
        flagged = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        return frozenset(self.special_tokens) - flagged

    @functools.cached_property
    def _plain_re(self) -> re.Pattern[str] | None:
        plain = sorted(self._plain_added, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, plain)) + ")") if plain else None

    @functools.cached_property
    def _byte_ids(self) -> dict[int, int]:
        return {b: self._tok.token_to_id(c) for b, c in _BYTE_TO_UNICODE.items()}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the other 68 to U+0100 and up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_UNICODE = _bytes_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}


def _reconcile_added_tokens(tok_path: Path, config_decoder: dict[str, dict]) -> tuple[Tokenizer, dict[str, int]]:
    """Load tokenizer.json so every added token sits at the id the folder declares.

    Ids come from tokenizer.json `added_tokens[*].id` and tokenizer_config.json
    `added_tokens_decoder`; a token both declare with different ids is an error. The tokenizers
    library ignores those `id` fields and numbers added tokens consecutively after the model vocab,
    so a token missing from tokenizer.json (pain point 9) would shift every later id. Placing each
    added token in the BPE vocab at its declared id makes the library keep that id; no merge
    produces these strings, so ordinary text never maps to them.
    """
    data = _read_json(tok_path)
    entries = {e["content"]: e for e in data.get("added_tokens", [])}
    wanted = {content: int(e["id"]) for content, e in entries.items()}
    for i, e in config_decoder.items():
        content = e["content"]
        if content in wanted and wanted[content] != int(i):
            raise ValueError(
                f"{content!r} has id {wanted[content]} in tokenizer.json but {i} in tokenizer_config.json"
            )
        wanted[content] = int(i)
        entries.setdefault(content, {"id": int(i), "content": content, **_added_token_flags(e)})
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        for content, i in wanted.items():
            if vocab.setdefault(content, i) != i:
                raise ValueError(f"{content!r} has id {vocab[content]} in the model vocab but is declared as {i}")
    data["added_tokens"] = sorted(entries.values(), key=lambda e: int(e["id"]))
    tokenizer = Tokenizer.from_str(json.dumps(data))
    for content, i in wanted.items():
        if tokenizer.token_to_id(content) != i:
            raise ValueError(f"could not place added token {content!r} at its declared id {i}")
    return tokenizer, wanted


def _added_token_flags(entry: dict[str, Any]) -> dict[str, bool]:
    defaults = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    return {key: bool(entry.get(key, default)) for key, default in defaults.items()}


def _eos_and_pad(folder: Path, config: dict[str, Any], tokenizer: Tokenizer) -> tuple[list[int], int]:
    def lookup(token: str, source: str) -> int:
        found = tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"{source} names {token!r}, which is not in tokenizer.json")
        return found

    eos_ids: list[int] = []
    eos = _token_content(config.get("eos_token"))
    if eos:
        eos_ids.append(lookup(eos, "tokenizer_config.json eos_token"))
    gen_path = folder / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.is_file() else {}
    gen_eos = gen.get("eos_token_id")
    for i in gen_eos if isinstance(gen_eos, list) else [] if gen_eos is None else [gen_eos]:
        if int(i) not in eos_ids:
            eos_ids.append(int(i))
    if not eos_ids:
        raise ValueError(f"no eos token in {folder}: set eos_token in tokenizer_config.json")
    pad = _token_content(config.get("pad_token"))
    if pad:
        pad_id = lookup(pad, "tokenizer_config.json pad_token")
    elif gen.get("pad_token_id") is not None:
        pad_id = int(gen["pad_token_id"])
    else:
        pad_id = eos_ids[0]
    return eos_ids, pad_id
