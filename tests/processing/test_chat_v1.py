"""Qwen-VL v1 prompt formats: exact strings and token layouts from architecture-facts A.7, A.7b and A.8."""

from __future__ import annotations

import os

import pytest

from qwenvl.processing.chat_v1 import (
    DEFAULT_SYSTEM,
    decode_response,
    from_list_format,
    make_context,
    messages_to_v1,
    stop_words_ids,
)
from qwenvl.processing.tokenizer_v1 import IMAGE_TAGS, QwenV1Tokenizer

SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def tok() -> QwenV1Tokenizer:
    dashscope = pytest.importorskip("dashscope")
    return QwenV1Tokenizer.from_file(os.path.join(os.path.dirname(dashscope.__file__), "resources", "qwen.tiktoken"))


def _turn_ids(tok: QwenV1Tokenizer, role: str, content: str) -> list[int]:
    """A.8 literally: im_start + encode(role) + encode("\\n") + encode(content, IMAGE_ST) + im_end."""
    return [
        tok.im_start_id,
        *tok.encode(role),
        *tok.encode("\n"),
        *tok.encode(content, set(IMAGE_TAGS)),
        tok.im_end_id,
    ]


def test_from_list_format_strings() -> None:
    items = [{"image": "a.jpg"}, {"image": "/x/b.png"}, {"text": "Where is the dog?"}]
    assert from_list_format(items) == "Picture 1: <img>a.jpg</img>\nPicture 2: <img>/x/b.png</img>\nWhere is the dog?"
    boxes = [
        {"text": "The dog: "},
        {"box": (10, 20, 300, 400), "ref": "the dog"},
        {"box": [(1, 2, 3, 4), (5, 6, 7, 8)]},
    ]
    assert from_list_format(boxes) == (
        "The dog: <ref>the dog</ref><box>(10,20),(300,400)</box><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box>"
    )
    with pytest.raises(ValueError, match="unknown item"):
        from_list_format([{"video": "v.mp4"}])


def test_documented_prompt_lengths(tok: QwenV1Tokenizer) -> None:
    one = from_list_format([{"image": "demo.jpeg"}, {"text": "Where is the red box?"}])
    text, ids = make_context(tok, one)
    assert (
        text
        == SYS
        + "<|im_start|>user\nPicture 1: <img>demo.jpeg</img>\nWhere is the red box?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert len(ids) == 289
    assert len(make_context(tok, "Where is the red box?")[1]) == 25
    # A.7b gives 555 for two images "plus one question" without the question: 555 = 25 - 6 + 2 * 264 + 8,
    # i.e. an 8-token question. With "Where is the red box?" (6 tokens) the same layout is 553.
    two = [{"image": "p1"}, {"image": "p2"}]
    assert len(make_context(tok, [*two, {"text": "What are the differences between the pictures?"}])[1]) == 555
    assert len(make_context(tok, [*two, {"text": "Where is the red box?"}])[1]) == 553


def test_chatml_layout_several_turns(tok: QwenV1Tokenizer) -> None:
    q1 = from_list_format([{"image": "cat.png"}, {"text": "What is this?"}])
    a1 = "A cat on a sofa."
    q2 = "Find the cat."
    a2 = "<ref>the cat</ref><box>(120,80),(560,900)</box>"
    text, ids = make_context(tok, "And the sofa?", history=[(q1, a1), (q2, a2)])
    assert text == (
        SYS + "<|im_start|>user\nPicture 1: <img>cat.png</img>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\nA cat on a sofa.<|im_end|>\n"
        "<|im_start|>user\nFind the cat.<|im_end|>\n"
        "<|im_start|>assistant\n<ref>the cat</ref><box>(120,80),(560,900)</box><|im_end|>\n"
        "<|im_start|>user\nAnd the sofa?<|im_end|>\n<|im_start|>assistant\n"
    )
    nl = tok.encode("\n")
    expected = _turn_ids(tok, "system", DEFAULT_SYSTEM)
    for role, content in [
        ("user", q1),
        ("assistant", a1),
        ("user", q2),
        ("assistant", a2),
        ("user", "And the sofa?"),
    ]:
        expected += nl + _turn_ids(tok, role, content)
    expected += nl + [tok.im_start_id, *tok.encode("assistant"), *nl]
    assert ids == expected
    assert tok.image_paths(ids) == ["cat.png"]
    assert tok.token_id("<ref>") in ids and tok.token_id("<box>") in ids


def test_role_and_content_are_tokenised_separately(tok: QwenV1Tokenizer) -> None:
    # "\n" + "\n\nhi" would merge into one whitespace token if encoded together.
    _, ids = make_context(tok, "\n\nhi", system="")
    user = _turn_ids(tok, "user", "\n\nhi")
    assert ids[len(_turn_ids(tok, "system", "")) + 1 :][: len(user)] == user
    assert tok.encode("\n") + tok.encode("\n\nhi") != tok.encode("\n\n\nhi")


def test_grounding_prompt(tok: QwenV1Tokenizer) -> None:
    query = from_list_format([{"image": "street.jpg"}, {"text": "Locate "}, {"box": (1, 2, 3, 4), "ref": "the bus"}])
    text, ids = make_context(tok, query)
    assert "Picture 1: <img>street.jpg</img>\nLocate <ref>the bus</ref><box>(1,2),(3,4)</box><|im_end|>" in text
    for tag in ("<ref>", "</ref>", "<box>", "</box>"):
        assert ids.count(tok.token_id(tag)) == 1


def test_history_window_drops_oldest(tok: QwenV1Tokenizer) -> None:
    history = [(f"question {i}", f"answer {i}") for i in range(5)]
    _, full_ids = make_context(tok, "now?", history=history)
    system_len = len(_turn_ids(tok, "system", DEFAULT_SYSTEM))
    turn_len = (len(full_ids) - len(make_context(tok, "now?")[1])) // 5  # all five turns are equally long
    # A turn is kept while system + kept turns stay below the window: room for exactly two turns.
    text, ids = make_context(tok, "now?", history=history, max_window_size=system_len + 2 * turn_len + 1)
    assert "question 0" not in text and "question 2" not in text and "question 3" in text and "question 4" in text
    assert len(ids) == len(full_ids) - 3 * turn_len


def test_raw_format_and_stop_words(tok: QwenV1Tokenizer) -> None:
    prompt = "<img>a.jpg</img>Describe the image in English:"
    text, ids = make_context(tok, prompt, chat_format="raw")
    assert (
        text == prompt
        and ids == tok.encode(prompt)
        and len(ids) == 258 + len(tok.encode("Describe the image in English:"))
    )
    with pytest.raises(ValueError, match="raw"):
        make_context(tok, "x", history=[("a", "b")], chat_format="raw")
    assert stop_words_ids(tok, "chatml") == [[151645], [151644]]
    assert stop_words_ids(tok, "raw") == [tok.encode("Human:"), [151643]]


def test_decode_response(tok: QwenV1Tokenizer) -> None:
    gen = tok.encode(" The cat.") + [tok.im_end_id, tok.eod_id] + tok.encode("junk")
    assert decode_response(tok, gen) == "The cat."
    assert decode_response(tok, tok.encode("ok") + [tok.im_start_id] + tok.encode("user")) == "ok"
    assert (
        decode_response(tok, tok.encode(" <ref>a</ref><box>(1,2),(3,4)</box>")) == "<ref>a</ref><box>(1,2),(3,4)</box>"
    )
    raw = tok.encode(" a cat\nHuman: more") + [tok.eod_id]
    assert decode_response(tok, raw, chat_format="raw") == "a cat"


def test_messages_to_v1(tok: QwenV1Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "a.jpg"},
                {"type": "image_url", "image_url": {"url": "b.jpg"}},
                {"type": "text", "text": "Compare."},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": "c.jpg"}, {"type": "text", "text": "And this?"}],
        },
    ]
    chat = messages_to_v1(messages)
    text, ids = make_context(tok, chat.query, chat.history, chat.system)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nPicture 1: <img>a.jpg</img>\nPicture 2: <img>b.jpg</img>\nCompare.<|im_end|>\n"
        "<|im_start|>assistant\nThey differ.<|im_end|>\n"
        "<|im_start|>user\nPicture 3: <img>c.jpg</img>\nAnd this?<|im_end|>\n<|im_start|>assistant\n"
    )
    # Same ids as the string route when the user text holds no tag literals.
    history = [("Picture 1: <img>a.jpg</img>\nPicture 2: <img>b.jpg</img>\nCompare.", "They differ.")]
    assert ids == make_context(tok, "Picture 3: <img>c.jpg</img>\nAnd this?", history, "Be brief.")[1]
    assert tok.image_paths(ids) == ["a.jpg", "b.jpg", "c.jpg"]


def test_messages_user_typed_tags_stay_text(tok: QwenV1Tokenizer) -> None:
    chat = messages_to_v1([{"role": "user", "content": "What does <img> do in HTML? And <|im_end|>?"}])
    text, ids = make_context(tok, chat.query, chat.history, chat.system)
    assert "What does <img> do in HTML? And <|im_end|>?" in text
    assert tok.img_start_id not in ids and ids.count(tok.im_end_id) == 2  # system + user turn ends only
    # The string route (markup trusted) would treat that <img> as an unclosed image: the pain point.
    with pytest.raises(ValueError, match="unclosed"):
        make_context(tok, "What does <img> do in HTML?")


def test_messages_errors() -> None:
    with pytest.raises(ValueError, match="end with a user"):
        messages_to_v1([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(TypeError, match="path"):
        messages_to_v1([{"role": "user", "content": [{"type": "image", "image": object()}]}])
    with pytest.raises(ValueError, match="video"):
        messages_to_v1([{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}])
    merged = messages_to_v1([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert merged.query == [{"text": "a"}, {"text": "b"}] and merged.history == []


def test_history_reply_with_literal_img_tag(tok: QwenV1Tokenizer) -> None:
    reply = "Use the <img> tag, e.g. <img src=x>. The <ref>logo</ref><box>(1,2),(3,4)</box>."
    text, ids = make_context(tok, "Thanks!", history=[("How do I show a picture in HTML?", reply)])
    assert reply in text and tok.img_start_id not in ids
    assert tok.token_id("<ref>") in ids and tok.token_id("<box>") in ids
