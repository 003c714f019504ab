"""Structured output with the shipped tiny models (engine/grammar.py over llguidance): greedy and sampled
generation under a JSON-schema grammar parses and validates, a tool-call grammar yields a named call
with valid arguments, bad schemas are ValueErrors; and the same prompts without a constraint do not
give valid JSON, so these tests can fail."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

import qwenvl
from qwenvl.engine.grammar import Grammar, GrammarConstraint, Vocab

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10},
            "zip": {"type": "integer", "minimum": 10000, "maximum": 99999}},
            "required": ["city", "zip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                         "unit": {"enum": ["celsius", "fahrenheit"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "count_shapes", "parameters": {
        "type": "object", "properties": {"color": {"enum": ["red", "blue"]}, "max": {"type": "integer", "minimum": 0,
                                                                                     "maximum": 9}},
        "required": ["color", "max"], "additionalProperties": False}}},
]
MESSAGES = [{"role": "user", "content": "Describe one user as JSON."}]
SAMPLING = [{}, {"temperature": 1.0, "seed": 1}, {"temperature": 0.8, "top_p": 0.9, "seed": 7}]
TOOL_RE = re.compile(r"\A<tool_call>\n(.*)\n</tool_call>\Z", re.S)


@pytest.fixture(scope="module", params=["qwenvl-tiny", "qwenvl-tiny-qwen-vl"])
def pipe(request):
    return qwenvl.load(request.param)


def run(pipe, constraint, max_new_tokens: int = 200, **sampling):
    inp = pipe.prepare(MESSAGES)
    gen = pipe.engine.generate(inp, pipe.sampling(max_new_tokens=max_new_tokens, **sampling), constraint=constraint)
    return gen, pipe.processor.tokenizer.decode(gen.token_ids)


def is_valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_unconstrained_output_is_not_valid_json(pipe):
    for kw in SAMPLING:
        _, text = run(pipe, None, max_new_tokens=60, **kw)
        assert not is_valid(text, SCHEMA), text
        assert not TOOL_RE.match(text)


@pytest.mark.parametrize("sampling", SAMPLING, ids=["greedy", "seed1", "top_p_seed7"])
def test_json_schema_output_validates(pipe, sampling):
    gen, text = run(pipe, pipe.grammar("json", SCHEMA).constraint(), **sampling)
    assert gen.finish_reason == "stop" and gen.stop_reason in pipe.processor.stop_ids()
    doc = json.loads(text)
    jsonschema.validate(doc, SCHEMA)
    assert list(doc) == list(SCHEMA["properties"])  # properties come in schema order
    assert text == json.dumps(doc, ensure_ascii=False)  # json.dumps layout: no free whitespace


def test_json_object_mode_and_seeded_sampling_is_reproducible(pipe):
    gen_a, text = run(pipe, pipe.grammar("json", None).constraint(), max_new_tokens=400, temperature=1.0, seed=3)
    assert gen_a.finish_reason == "stop" and isinstance(json.loads(text), dict)
    gen_b, _ = run(pipe, pipe.grammar("json", None).constraint(), max_new_tokens=400, temperature=1.0, seed=3)
    assert gen_b.token_ids == gen_a.token_ids


@pytest.mark.parametrize("name", [None, "count_shapes"])
@pytest.mark.parametrize("sampling", SAMPLING[:2], ids=["greedy", "seed1"])
def test_tool_call_output_parses(pipe, name, sampling):
    gen, text = run(pipe, pipe.grammar("tool_call", (TOOLS, name)).constraint(), **sampling)
    assert gen.finish_reason == "stop", text
    call = json.loads(TOOL_RE.match(text).group(1))
    assert list(call) == ["name", "arguments"]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    assert call["name"] in params and (name is None or call["name"] == name)
    jsonschema.validate(call["arguments"], params[call["name"]])


def test_special_tokens_never_spell_text(pipe):
    vocab = pipe.vocab
    assert set(vocab.eos_ids) <= vocab.special_ids and vocab.eos_ids == tuple(pipe.processor.stop_ids())
    c = pipe.grammar("json", {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
                     ).constraint()
    for tok in pipe.processor.tokenizer.encode_bytes(b'{"s": "'):
        c.advance(tok)
    v = pipe.model.cfg.text.vocab_size
    allowed = c.mask(v)
    assert allowed.shape == (v,) and not allowed[len(vocab.token_bytes):].any()  # padding rows
    assert not any(allowed[i] for i in vocab.special_ids)  # inside a string: no <|im_end|>, no eos


def test_grammar_cache_and_bad_specs(pipe):
    assert pipe.grammar("json", SCHEMA) is pipe.grammar("json", json.loads(json.dumps(SCHEMA)))
    assert isinstance(pipe.grammar("json", SCHEMA).constraint(), GrammarConstraint)
    with pytest.raises(ValueError, match="Invalid type: strin"):
        pipe.grammar("json", {"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(ValueError, match="does not exist"):
        pipe.grammar("json", {"$ref": "#/$defs/missing"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        pipe.grammar("json", ["not", "a", "schema"])
    with pytest.raises(ValueError, match="not among the tools"):
        pipe.grammar("tool_call", (TOOLS, "launch_rockets"))
    with pytest.raises(ValueError, match=r"tools\[0\].function.name"):
        pipe.grammar("tool_call", ([{"type": "function", "function": {}}], None))
    with pytest.raises(ValueError, match="invalid tool parameters schema"):
        pipe.grammar("tool_call", ([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"minimum": "zero"}}}}}], None))
    with pytest.raises(ValueError, match="unknown grammar kind"):
        pipe.grammar("regex", "a+")


def test_a_forbidden_token_is_a_clear_error(pipe):
    c = pipe.grammar("json", SCHEMA).constraint()
    with pytest.raises(ValueError, match="not allowed by the grammar"):
        c.advance(pipe.processor.tokenizer.encode_bytes(b"x")[0])
    with pytest.raises(ValueError, match="needs eos ids"):
        Vocab([b"a"], (), frozenset())
    with pytest.raises(ValueError, match="columns"):
        Grammar.json(None, pipe.vocab).constraint().mask(10)
