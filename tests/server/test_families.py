"""The same server over a Qwen2.5-VL checkpoint (the shipped tiny one): video given as a list of frames,
`detail` and the min_pixels / max_pixels extensions changing the image budget, and boxes in original
pixels (Qwen2.5-VL writes absolute pixels of the resized input; the server maps them back)."""

from __future__ import annotations

import pytest

import qwenvl
from tests.server.conftest import data_url, red_box_image, start_server, stop_server

MODEL = "qwenvl-tiny"  # the default is the shipped Qwen2.5-VL


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("q25") / "server.log", "--slots", "4", model=MODEL)
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def client(srv):
    from openai import OpenAI

    return OpenAI(base_url=f"{srv.url}/v1", api_key=srv.api_key, max_retries=0, timeout=120)


def image_part(img, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(img), **extra}}


def test_video_frames_and_pixel_budgets(client):
    frames = [data_url(red_box_image(224, 168).rotate(10 * k)) for k in range(4)]
    r = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=[{"role": "user", "content": [
        {"type": "video", "video": frames}, {"type": "text", "text": "What happens in the video?"}]}])
    text_only = client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "user", "content": "What happens in the video?"}])
    assert r.usage.prompt_tokens > text_only.usage.prompt_tokens + 8  # the frames became video tokens

    big = red_box_image(896, 672)
    ask = {"type": "text", "text": "Describe."}
    high = client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "user", "content": [image_part(big, detail="high"), ask]}])
    low = client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "user", "content": [image_part(big, detail="low"), ask]}])
    capped = client.chat.completions.create(model=MODEL, max_tokens=1, extra_body={"max_pixels": 8 * 28 * 28},
                                            messages=[{"role": "user", "content": [image_part(big), ask]}])
    raised = client.chat.completions.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": [
        {**image_part(big), "max_pixels": 64 * 28 * 28}, ask]}])  # a per-part budget above the model's own
    assert low.usage.prompt_tokens < high.usage.prompt_tokens
    assert capped.usage.prompt_tokens < high.usage.prompt_tokens
    assert raised.usage.prompt_tokens > high.usage.prompt_tokens


def test_boxes_come_back_in_original_pixels(client):
    pipe = qwenvl.load(MODEL, dtype="float32")
    img = red_box_image(640, 480)
    q = "Detect the circle."
    r = client.chat.completions.create(model=MODEL, max_tokens=40, temperature=0, messages=[
        {"role": "user", "content": [image_part(img), {"type": "text", "text": q}]}])
    want = pipe.chat([{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": q}]}],
                     max_new_tokens=40, temperature=0)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].message.model_extra["boxes"] == want.boxes
