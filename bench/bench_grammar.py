"""Constrained decoding CPU cost: llguidance vs xgrammar, per token, on Qwen vocabularies.

    python bench/bench_grammar.py [--reps N]        # ~1 min on 2 cores; needs llguidance, xgrammar, dashscope

For each vocabulary (the shipped qwenvl-tiny-qwen-vl v1 tiktoken vocab, the shipped qwenvl-tiny (Qwen2.5-VL)
tokenizers vocab, the real 151,643-rank Qwen vocabulary from dashscope's qwen.tiktoken) prints: the
one-off tokenizer build time, then per library the compile time of a JSON schema with nested
objects / arrays / enums / integers, and the per-token cost of mask computation + advance while a
valid sample document is forced token by token (N fresh matchers, mean and p99 in microseconds;
"mask" is the library's bitmask into a preallocated buffer, "adv" the token commit). The row
"qwenvl constraint" is engine/grammar.py's GrammarConstraint (llguidance + the bool [V] mask at the
model's padded V) as the engine calls it. Both libraries produce compact JSON (", " / ": ").
Run without other CPU load; the numbers are what bench/RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from qwenvl.engine.grammar import JSON_OPTIONS, Grammar, Vocab
from qwenvl.processing.tokenizer import QwenTokenizer
from qwenvl.processing.tokenizer_v1 import QwenV1Tokenizer

ASSETS = os.path.join(os.path.dirname(__file__), "..", "qwenvl", "assets")
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "geo": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"]}},
            "required": ["city", "zip", "geo"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "orders": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "status": {"enum": ["open", "shipped", "cancelled"]},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}, "required": ["sku", "qty"]}}},
            "required": ["id", "status", "items"]}},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "tags", "orders", "active"],
}
DOC = {"name": "Ada Lovelace", "age": 36, "role": "editor",
       "address": {"city": "London", "zip": "12345", "geo": {"lat": 51.5072, "lon": -0.1276}},
       "tags": ["math", "engines", "poetry"],
       "orders": [{"id": 1, "status": "shipped", "items": [{"sku": "AE-1", "qty": 2}, {"sku": "NOTE-G", "qty": 1}]},
                  {"id": 2, "status": "open", "items": [{"sku": "BERN", "qty": 7}]}],
       "active": True}


def vocabs() -> list[tuple[str, object]]:
    import dashscope

    path = os.path.join(os.path.dirname(dashscope.__file__), "resources", "qwen.tiktoken")
    return [("qwenvl-tiny-qwen-vl (v1 tiktoken)",
             QwenV1Tokenizer.from_folder(os.path.join(ASSETS, "qwenvl-tiny-qwen-vl"))),
            ("qwenvl-tiny (Qwen2.5-VL, tokenizers)",
             QwenTokenizer.from_folder(os.path.join(ASSETS, "qwenvl-tiny"))),
            ("Qwen 151,643 ranks (v1 tiktoken)", QwenV1Tokenizer.from_file(path))]


def stats(us: list[float]) -> str:
    a = np.array(us)
    return f"mean {a.mean():8.1f}  p99 {np.percentile(a, 99):8.1f}"


def force(new_matcher, mask, adv, ids: list[int], reps: int) -> tuple[list[float], list[float]]:
    """Per token: µs of mask, µs of advance, over reps fresh matchers; checks each token is allowed."""
    t_mask, t_adv = [], []
    for _ in range(reps):
        m = new_matcher()
        for tok in ids:
            t0 = time.perf_counter()
            allowed = mask(m)
            t1 = time.perf_counter()
            if not allowed(tok):
                raise AssertionError(f"token {tok} of the sample document was masked out")
            adv(m, tok)
            t2 = time.perf_counter()
            t_mask.append((t1 - t0) * 1e6)
            t_adv.append((t2 - t1) * 1e6)
    return t_mask, t_adv


def bit(bits: np.ndarray):
    return lambda tok: bool((int(bits[tok // 32]) >> (tok % 32)) & 1)


def bench_llguidance(vocab: Vocab, ids: list[int], reps: int) -> None:
    import llguidance

    t0 = time.perf_counter()
    Grammar.json({"type": "object"}, vocab)  # builds and caches the LLTokenizer on the Vocab
    t1 = time.perf_counter()
    g = Grammar.json(SCHEMA, vocab)
    t2 = time.perf_counter()
    print(f"  llguidance {llguidance.__version__ if hasattr(llguidance, '__version__') else ''}: "
          f"tokenizer build {1e3 * (t1 - t0):.0f} ms (includes a trivial compile), schema compile "
          f"{1e3 * (t2 - t1):.1f} ms")
    buf = np.zeros((len(vocab.token_bytes) + 31) // 32, dtype=np.int32)

    def mask(c):
        m = c._m
        m.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)
        return bit(buf)

    tm, ta = force(g.constraint, mask, lambda c, t: c._m.consume_token(t), ids, reps)
    print(f"    raw       mask {stats(tm)}   adv {stats(ta)}   µs/token")
    v_model = (len(vocab.token_bytes) + 127) // 128 * 128

    def cmask(c):
        out = c.mask(v_model)
        return lambda tok: bool(out[tok])

    tm, ta = force(g.constraint, cmask, lambda c, t: c.advance(t), ids, reps)
    print(f"    qwenvl constraint (bool [{v_model}])  mask {stats(tm)}   adv {stats(ta)}   µs/token")


def bench_xgrammar(vocab: Vocab, ids: list[int], reps: int) -> None:
    import xgrammar as xgr

    t0 = time.perf_counter()
    encoded = [b"" if i in vocab.special_ids else t for i, t in enumerate(vocab.token_bytes)]
    info = xgr.TokenizerInfo(encoded, vocab_type=xgr.VocabType.RAW, vocab_size=len(encoded),
                             stop_token_ids=list(vocab.eos_ids), add_prefix_space=False)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t1 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                            separators=(JSON_OPTIONS["item_separator"], JSON_OPTIONS["key_separator"]))
    t2 = time.perf_counter()
    print(f"  xgrammar {getattr(xgr, '__version__', '')}: tokenizer build {1e3 * (t1 - t0):.0f} ms, schema compile "
          f"{1e3 * (t2 - t1):.1f} ms")
    bitmask = xgr.allocate_token_bitmask(1, len(encoded))

    def mask(m):
        m.fill_next_token_bitmask(bitmask)
        return bit(bitmask[0].numpy())

    tm, ta = force(lambda: xgr.GrammarMatcher(compiled), mask, lambda m, t: m.accept_token(t), ids, reps)
    print(f"    raw       mask {stats(tm)}   adv {stats(ta)}   µs/token")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="fresh matchers per library and vocabulary")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}  reps {args.reps}")
    text = json.dumps(DOC).encode()
    for label, tok in vocabs():
        vocab = Vocab.from_tokenizer(tok, [tok.special_tokens["<|im_end|>"], tok.special_tokens["<|endoftext|>"]])
        ids = tok.encode_bytes(text)
        print(f"\n{label}: {len(vocab.token_bytes)} tokens; sample document {len(text)} bytes = {len(ids)} tokens")
        bench_llguidance(vocab, ids, args.reps)
        bench_xgrammar(vocab, ids, args.reps)


if __name__ == "__main__":
    main()
