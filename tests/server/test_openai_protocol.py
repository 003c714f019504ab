"""The real server on loopback, driven by the official `openai` client: chat (plain and streamed) with
base64 images, several images and turns, logprobs, stop, seed, json_schema, a tool-call round trip,
models.list(), boxes. Greedy answers are compared with the same pipeline run in this process, so the
server is shown to add no behaviour of its own."""

from __future__ import annotations

import json

import jsonschema
import pytest

import qwenvl
from tests.server.conftest import data_url, red_box_image

QUESTION = "Detect the circle."


@pytest.fixture(scope="module")
def local():
    return qwenvl.load(dtype="float32")


def user(text: str, *images) -> dict:
    return {"role": "user", "content": [*({"type": "image_url", "image_url": {"url": data_url(im)}} for im in images),
                                        {"type": "text", "text": text}]}


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["qwenvl-tiny"]


def test_chat_with_image_matches_local_pipeline_and_reports_usage(client, local):
    img = red_box_image()
    # 80 tokens: the Qwen2.5-VL JSON box takes ~56 of the tiny vocabulary's tokens
    r = client.chat.completions.create(model="qwenvl-tiny", messages=[user(QUESTION, img)], max_tokens=80,
                                       temperature=0)
    want = local.chat([{"role": "user", "content": [{"type": "image", "image": img},
                                                    {"type": "text", "text": QUESTION}]}],
                      max_new_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.message.content == want.text
    assert r.usage.prompt_tokens == want.prompt_tokens
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")
    boxes = choice.message.model_extra["boxes"]  # extension: original-image pixels
    assert boxes == want.boxes and boxes, "the tiny model answers this question with a box"
    assert all(0 <= b["x1"] <= b["x2"] <= img.width and 0 <= b["y1"] <= b["y2"] <= img.height for b in boxes)


def test_stream_concatenates_to_the_non_streamed_text_and_ends_with_usage(client):
    msgs = [user("What shape is in the image?", red_box_image())]
    full = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="qwenvl-tiny", messages=msgs, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1


def test_several_images_and_turns(client, local):
    a, b = red_box_image(), red_box_image(200, 300)
    first = client.chat.completions.create(model="qwenvl-tiny", messages=[user("Compare the two images.", a, b)],
                                           max_tokens=16, temperature=0)
    turn1 = first.choices[0].message.content
    msgs = [user("Compare the two images.", a, b), {"role": "assistant", "content": turn1},
            user("And which one is larger?")]
    second = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, max_tokens=16, temperature=0)
    want = local.chat([{"role": "user", "content": [{"type": "image", "image": a}, {"type": "image", "image": b},
                                                    {"type": "text", "text": "Compare the two images."}]},
                       {"role": "assistant", "content": turn1},
                       {"role": "user", "content": "And which one is larger?"}], max_new_tokens=16, temperature=0)
    assert second.choices[0].message.content == want.text
    assert second.usage.prompt_tokens == want.prompt_tokens > first.usage.prompt_tokens


def test_logprobs_in_the_chat_shape(client):
    r = client.chat.completions.create(model="qwenvl-tiny", messages=[user("Describe the image.", red_box_image())],
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        assert e.token == e.top_logprobs[0].token  # greedy: the chosen token is the best one
    assert bytes(b for e in content for b in e.bytes).decode() == r.choices[0].message.content
    bare = client.chat.completions.create(model="qwenvl-tiny", messages=[user("Hi")], max_tokens=3, logprobs=True)
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)  # logprobs without top_logprobs


def test_stop_strings_cut_the_text(client):
    msgs = [user("Describe the image.", red_box_image())]
    free = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, max_tokens=30, temperature=0)
    text = free.choices[0].message.content
    assert len(text) > 6
    stop = text[3:6]
    cut = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, max_tokens=30, temperature=0,
                                         stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    one = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, max_tokens=30, temperature=0, stop=stop)
    assert one.choices[0].message.content == cut.choices[0].message.content


def test_seeded_sampling_repeats_and_max_completion_tokens(client):
    kw = dict(model="qwenvl-tiny", messages=[user("Describe the image.", red_box_image())], temperature=1.0,
              top_p=0.95, seed=7, max_completion_tokens=12, presence_penalty=0.5, frequency_penalty=0.5)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens <= 12
    texts = {client.chat.completions.create(**{**kw, "seed": s}).choices[0].message.content for s in range(4)}
    assert len(texts) > 1  # the seed matters


SCHEMA = {"type": "object", "properties": {
    "shape": {"type": "string", "enum": ["circle", "square", "triangle"]},
    "count": {"type": "integer", "minimum": 0, "maximum": 9},
    "colors": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["shape", "count", "colors"], "additionalProperties": False}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_output_parses_and_validates(client, temperature):
    r = client.chat.completions.create(
        model="qwenvl-tiny", messages=[user("Describe the image as JSON.", red_box_image())], max_tokens=120,
        temperature=temperature, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "scene", "schema": SCHEMA, "strict": True}})
    doc = json.loads(r.choices[0].message.content)
    jsonschema.validate(doc, SCHEMA)
    assert r.choices[0].finish_reason == "stop"


def test_json_object_mode(client):
    """Any JSON object: the tiny model often writes a key that runs to max_tokens (finish "length", the
    text then a cut document, as OpenAI documents); every answer that ends by itself parses."""
    ended = 0
    for seed in range(8):
        r = client.chat.completions.create(model="qwenvl-tiny", messages=[user("Answer in JSON.")], max_tokens=60,
                                           temperature=1.0, seed=seed, response_format={"type": "json_object"})
        text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert text.startswith("{")
        if reason == "stop":
            assert isinstance(json.loads(text), dict)
            ended += 1
        else:
            assert reason == "length" and r.usage.completion_tokens == 60
    assert ended >= 1


TOOLS = [{"type": "function", "function": {
    "name": "count_shapes", "description": "Count the shapes of one kind in the image.",
    "parameters": {"type": "object", "properties": {"kind": {"type": "string", "enum": ["circle", "square"]}},
                   "required": ["kind"], "additionalProperties": False}}}]


def test_tool_call_round_trip(client):
    msgs = [user("How many squares are there? Use the tool.", red_box_image())]
    r = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, tools=TOOLS, max_tokens=60,
                                       tool_choice={"type": "function", "function": {"name": "count_shapes"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "count_shapes" and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, TOOLS[0]["function"]["parameters"])
    msgs += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"count": 1})}]
    final = client.chat.completions.create(model="qwenvl-tiny", messages=msgs, tools=TOOLS, max_tokens=12,
                                           temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert final.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result are in the prompt
    streamed = list(client.chat.completions.create(
        model="qwenvl-tiny", messages=msgs[:1], tools=TOOLS, max_tokens=60, stream=True, tool_choice="required"))
    deltas = [c.choices[0].delta for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert deltas and json.loads(deltas[0].tool_calls[0].function.arguments)["kind"] in ("circle", "square")
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
