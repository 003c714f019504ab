"""Structured output: JSON-schema and tool-call grammars over llguidance, a token matcher per request.

    vocab = Vocab.from_tokenizer(processor.tokenizer, processor.stop_ids())   # or Pipeline.vocab
    g = Grammar.json(schema, vocab)                    # compiled once (ValueError naming a bad schema)
    engine.submit(inputs, params, constraint=g.constraint())                  # a fresh matcher per request

llguidance was picked over xgrammar by bench/bench_grammar.py (per-token mask cost, compile time, no
dependencies). The JSON text is laid out like `json.dumps` (", " and ": ", no other whitespace), so a
model cannot spin in whitespace and the output reads like the training data of tool calls. Special
tokens (Vocab.special_ids) never spell text: a JSON string cannot contain <|im_end|>. Once the
grammar is complete the matcher allows only the eos ids, so the request ends with "stop".
Must not: touch logits, the model or the engine's state; import processing/ (tokenizers are duck-typed).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from qwenvl.engine.constraint import TokenConstraint

# JSON layout: like json.dumps (and Qwen's tool-call template); no free whitespace.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_OPEN, TOOL_CLOSE = "<tool_call>\n", "\n</tool_call>"


@dataclass(frozen=True)
class Vocab:
    """What the grammar library needs of a tokenizer: each id's bytes (index = id; special tokens as
    their text), the ids that end generation, the special ids (never text). encode: raw bytes ->
    canonical ids, so text the grammar forces is tokenized as the tokenizer would (None: one byte
    token per byte)."""

    token_bytes: list[bytes]
    eos_ids: tuple[int, ...]
    special_ids: frozenset[int]
    encode: Callable[[bytes], list[int]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
        object.__setattr__(self, "special_ids", frozenset(int(i) for i in self.special_ids))
        n = len(self.token_bytes)
        bad = [i for i in (*self.eos_ids, *self.special_ids) if not 0 <= i < n]
        if not self.eos_ids or bad:
            raise ValueError(f"a Vocab needs eos ids, and eos / special ids inside its {n} tokens (bad: {bad[:5]})")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, eos_ids: list[int] | tuple[int, ...]) -> Vocab:
        """From a qwenvl tokenizer (QwenTokenizer or QwenV1Tokenizer: token_bytes(), special_ids(),
        encode_bytes()) and the ids that end an answer (processor.stop_ids())."""
        return cls(tokenizer.token_bytes(), tuple(eos_ids), tokenizer.special_ids(), tokenizer.encode_bytes)


class _Tokens:
    """The object llguidance's TokenizerWrapper reads: tokens, eos / bos, special ids, and a call that
    tokenizes bytes (for text the grammar forces)."""

    def __init__(self, vocab: Vocab) -> None:
        self.tokens = vocab.token_bytes
        self.eos_token_id, self.bos_token_id = vocab.eos_ids[0], None
        self.special_token_ids = sorted(vocab.special_ids)
        self._encode = vocab.encode
        self._byte_ids: dict[int, int] | None = None

    def __call__(self, data: bytes | str) -> list[int]:
        data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if self._encode is not None:
            return list(self._encode(data))
        if self._byte_ids is None:
            self._byte_ids = {t[0]: i for i, t in reversed(list(enumerate(self.tokens))) if len(t) == 1}
        return [self._byte_ids[b] for b in data]


_LOCK = threading.Lock()  # guards the per-Vocab tokenizer cache and template copies


def _ll_tokenizer(vocab: Vocab):
    """The llguidance tokenizer of a Vocab, built once (~1 s for a 150k vocabulary) and kept on it."""
    import llguidance

    with _LOCK:
        tok = vocab.__dict__.get("_ll")
        if tok is None:
            tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Tokens(vocab)), n_vocab=len(vocab.token_bytes),
                                         eos_token=list(vocab.eos_ids))
            object.__setattr__(vocab, "_ll", tok)
        return tok


def _schema_text(schema: Any, what: str) -> str:
    if not isinstance(schema, dict):
        raise ValueError(f"{what} must be a JSON object (a dict), got {type(schema).__name__}")
    try:
        return json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serializable: {exc}") from None


class Grammar:
    """A compiled grammar over one Vocab: compiled once, shared by requests; .constraint() (thread-safe)
    gives each request its own matcher."""

    def __init__(self, grammar: str, vocab: Vocab, what: str) -> None:
        """grammar: llguidance's grammar text (from grammar_from_json_schema / grammar_from_lark); what:
        names it in errors. ValueError with llguidance's message when it does not compile."""
        import llguidance

        self.vocab, self.what = vocab, what
        tok = _ll_tokenizer(vocab)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tok)
        if failed:
            raise ValueError(f"invalid {what}: {messages[0] if messages else 'does not compile'}")
        self._template = llguidance.LLMatcher(tok, grammar, log_level=0)
        if self._template.is_error():
            raise ValueError(f"invalid {what}: {self._template.get_error()}")

    @classmethod
    def json(cls, schema: dict | None, vocab: Vocab) -> Grammar:
        """JSON text matching schema; None = any JSON object (OpenAI's json_object mode)."""
        import llguidance

        text = _schema_text({"type": "object"} if schema is None else schema, "a JSON schema")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
        except ValueError as exc:
            raise ValueError(f"invalid JSON schema: {exc}") from None
        return cls(grammar, vocab, "JSON schema")

    @classmethod
    def tool_call(cls, tools: list[dict], vocab: Vocab, name: str | None = None) -> Grammar:
        """`<tool_call>\\n{"name": "<tool>", "arguments": <its parameters>}\\n</tool_call>` over OpenAI
        tools ([{"type": "function", "function": {"name", "description", "parameters"}}]); name: force
        that tool. ValueError for malformed tools, an unknown name or a bad parameters schema."""
        import llguidance

        found = _tool_schemas(tools)
        if name is not None:
            if name not in found:
                raise ValueError(f"tool_choice names {name!r}, which is not among the tools {sorted(found)}")
            found = {name: found[name]}
        calls = [{"type": "object", "properties": {"name": {"const": n}, "arguments": p},
                  "required": ["name", "arguments"], "additionalProperties": False} for n, p in found.items()]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        text = _schema_text({**schema, "x-guidance": JSON_OPTIONS}, "the tools' parameters")
        lark = f"start: {json.dumps(TOOL_OPEN)} call {json.dumps(TOOL_CLOSE)}\ncall: %json {text}\n"
        return cls(llguidance.LLMatcher.grammar_from_lark(lark), vocab, "tool parameters schema")

    def constraint(self) -> GrammarConstraint:
        """A fresh matcher at the start of the grammar, for one request."""
        with _LOCK:
            matcher = self._template.deep_copy()
        return GrammarConstraint(matcher, self.vocab)


def _tool_schemas(tools: Any) -> dict[str, dict]:
    """name -> parameters schema of OpenAI function tools, checked (ValueError naming the problem)."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    out: dict[str, dict] = {}
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ValueError(f"tools[{k}] must be {{'type': 'function', 'function': {{...}}}}, got {tool!r:.80}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools[{k}].function.name must be a non-empty string")
        if name in out:
            raise ValueError(f"tools[{k}]: two tools are named {name!r}")
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        if not isinstance(params, dict):
            raise ValueError(f"tools[{k}].function.parameters must be a JSON schema object")
        out[name] = params
    return out


def _first_line(error: str) -> str:
    return error.strip().splitlines()[0] if error.strip() else ""  # llguidance appends its state dump


class GrammarConstraint(TokenConstraint):
    """One request's matcher (a TokenConstraint). The mask covers the model's V: ids past the
    vocabulary (padding rows) are never allowed; once the grammar is complete only the eos ids are."""

    def __init__(self, matcher: Any, vocab: Vocab) -> None:
        self._m = matcher
        self._n = len(vocab.token_bytes)
        self._eos = torch.tensor(vocab.eos_ids)
        self._eos_set = frozenset(vocab.eos_ids)
        self._bits = torch.zeros((self._n + 31) // 32, dtype=torch.int32)
        self.finished = False  # an eos was taken at the end of the grammar

    @property
    def complete(self) -> bool:
        """The text so far is a whole document of the grammar and nothing may follow it."""
        return self.finished or self._m.is_stopped()

    def _check(self) -> None:
        if self._m.is_error():
            raise ValueError(f"grammar matcher failed: {_first_line(self._m.get_error())}")

    def mask(self, vocab_size: int) -> torch.Tensor:
        """bool [vocab_size]: the tokens the grammar allows next (eos where it may end here)."""
        if vocab_size < self._n:
            raise ValueError(f"logits have {vocab_size} columns but the grammar's vocabulary has {self._n} tokens")
        self._check()
        if self.complete:
            out = torch.zeros(vocab_size, dtype=torch.bool)
            out[self._eos] = True
            return out
        self._m.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        self._check()
        # one bit per token, little-endian within each int32 -> one 0/1 byte per token (zeros past the
        # buffer up to vocab_size), viewed as bool without a copy
        bits = np.unpackbits(self._bits.numpy().view(np.uint8), count=vocab_size, bitorder="little")
        bits[self._n:] = 0
        return torch.from_numpy(bits).view(torch.bool)

    def advance(self, token: int) -> None:
        """Take the sampled token; ValueError (with the matcher's reason) if the grammar forbids it."""
        if token in self._eos_set and (self.finished or self._m.is_accepting()):
            self.finished = True  # the end of the document: later masks allow only eos
            return
        if self.finished or not self._m.consume_token(int(token)):
            reason = _first_line(self._m.get_error()) or "the grammar is complete"
            raise ValueError(f"token {token} is not allowed by the grammar here: {reason}")
