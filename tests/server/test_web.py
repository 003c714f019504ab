"""The web demo page (qwenvl/server/static) in Debian's chromium against the real `qwenvl serve`.

One browser session walks the page: the API key is kept in localStorage, an uploaded PNG goes to the
server in OpenAI image_url parts, the first answer streams in from the real model, a second turn (a
canned SSE reply through page.route, because the tiny model need not emit a box) gets its box drawn at
the right place on the shown image, and a wrong key shows the server's own 401 message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium on a machine with no outside network: nothing that phones home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
W, H = 800, 600            # the PNG's original pixels; the page shows it smaller (max-height 360 px)
RED = (160, 120, 480, 360)  # the red rectangle, x1 y1 x2 y2, in original pixels
PROMPT = "Where is the red box? Answer with a box."
SKIP = "Debian chromium not installed (apt-get install chromium)"
if not CHROMIUM.exists() and os.environ.get("CI") != "true":
    pytest.skip(SKIP, allow_module_level=True)  # before the session's server starts for nothing


def _sse(*chunks: dict) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def _canned_box_reply() -> str:
    base = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 0, "model": "canned"}
    delta = lambda d, finish=None: {**base, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}
    box = dict(zip(("x1", "y1", "x2", "y2"), RED, strict=True))
    return _sse(delta({"role": "assistant", "content": "<ref>the red box</ref>"}),
                delta({"content": "<box>(200,200),(600,600)</box>"}),
                delta({"boxes": [{"label": "the red box", **box}]}, "stop"),
                {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}})


def _server_error(server, key: str) -> tuple[int, str]:
    """What the server itself answers a chat request made with key: (status, error.message)."""
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + key})
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)["error"]["message"]
    raise AssertionError("the server accepted a wrong API key")


def _open_settings(page) -> None:
    if not page.locator("#settings").evaluate("d => d.open"):  # the page opens them itself on a 401
        page.click("#settings summary")


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():  # only reached when CI is "true": there a missing browser is a failure
        pytest.fail(SKIP)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(10_000)
        yield page
        browser.close()


def test_web_chat_streams_draws_boxes_and_shows_errors(server, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    png = tmp_path / "red_box.png"
    im = Image.new("RGB", (W, H), "white")
    ImageDraw.Draw(im).rectangle(RED, fill=(220, 0, 0))
    im.save(png)
    models = urllib.request.Request(server.url + "/v1/models", headers={"Authorization": "Bearer " + server.api_key})
    with urllib.request.urlopen(models, timeout=10) as r:
        model_id = json.load(r)["data"][0]["id"]

    # The key survives a reload (localStorage) and unlocks the model list.
    page.goto(server.url + "/")
    _open_settings(page)
    page.fill("#api-key", server.api_key)
    page.reload()
    _open_settings(page)
    expect(page.locator("#api-key")).to_have_value(server.api_key)
    expect(page.locator("#model")).to_have_text(model_id)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")

    # Shift+Enter is a new line, not a send.
    page.fill("#prompt", "a")
    page.press("#prompt", "Shift+Enter")
    page.type("#prompt", "b")
    expect(page.locator("#prompt")).to_have_value("a\nb")
    expect(page.locator("#messages .msg")).to_have_count(0)

    # Turn 1, to the real server: upload, thumbnail, Enter sends, the answer streams in.
    page.set_input_files("#file", str(png))
    expect(page.locator("#pending img")).to_have_count(1)
    page.fill("#prompt", PROMPT)
    page.evaluate("""() => {
        window.__lens = [];
        new MutationObserver(() => {
            const t = document.querySelector('#messages .msg.assistant:last-child .text');
            if (t) window.__lens.push(t.textContent.length);
        }).observe(document.querySelector('#messages'), {childList: true, subtree: true, characterData: true});
    }""")
    with page.expect_request("**/v1/chat/completions") as req_info:
        page.press("#prompt", "Enter")
    sent = req_info.value
    assert sent.headers["authorization"] == "Bearer " + server.api_key
    body = sent.post_data_json
    assert body["stream"] is True and body["model"] == model_id and body["max_tokens"] == 40
    assert body["temperature"] == 0 and body["stream_options"] == {"include_usage": True}
    (user,) = body["messages"]
    assert user["role"] == "user"
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][1] == {"type": "text", "text": PROMPT}
    expect(page.locator("#pending img")).to_have_count(0)
    first = page.locator("#messages .msg.assistant").nth(0)
    expect(first).to_have_attribute("data-state", "done")
    first_text = first.locator(".text").text_content()
    assert first_text.strip(), "the real server streamed an empty answer"
    lens = page.evaluate("window.__lens")
    grown = [n for n in dict.fromkeys(lens) if n > 0]
    assert len(grown) >= 2 and grown == sorted(grown), f"text did not grow piece by piece: {lens}"

    # Turn 2, canned reply with a box: the whole history goes out, the box lands on the red rectangle.
    captured: list[dict] = []

    def fulfil(route):
        captured.append(route.request.post_data_json)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_canned_box_reply())

    page.route("**/v1/chat/completions", fulfil)
    page.fill("#prompt", "Draw it.")
    page.press("#prompt", "Enter")
    second = page.locator("#messages .msg.assistant").nth(1)
    expect(second).to_have_attribute("data-state", "done")
    page.unroute("**/v1/chat/completions")
    history = captured[0]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[0] == user and history[1] == {"role": "assistant", "content": first_text}
    assert history[2]["content"] == [{"type": "text", "text": "Draw it."}]
    expect(second.locator(".text")).to_have_text("<ref>the red box</ref><box>(200,200),(600,600)</box>")
    expect(second.locator(".figure .label")).to_have_text("the red box")
    shown = second.locator(".figure img").bounding_box()
    rect = second.locator("svg.boxes rect").bounding_box()
    scale = shown["width"] / W
    assert scale < 0.9 and abs(shown["height"] / H - scale) < 0.01, (shown, "the image should be shown scaled down")
    # The rect's bounding box includes its stroke, 2.5 px wide and centred on the edge.
    expected = (shown["x"] + RED[0] * scale - 1.25, shown["y"] + RED[1] * scale - 1.25,
                (RED[2] - RED[0]) * scale + 2.5, (RED[3] - RED[1]) * scale + 2.5)
    got = (rect["x"], rect["y"], rect["width"], rect["height"])
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected, strict=True)), (got, expected)
    tag = second.locator(".figure .label").bounding_box()  # sits on the box's top-left corner
    assert abs(tag["x"] - (shown["x"] + RED[0] * scale)) <= 1, (tag, shown)
    assert abs(tag["y"] + tag["height"] - (shown["y"] + RED[1] * scale)) <= 1, (tag, shown)

    artifacts = Path(os.environ.get("QWENVL_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "web_chat.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")

    # A wrong key: the server's 401 message, readable, in the chat; the message goes back to the composer.
    status, message = _server_error(server, "wrong-key")
    assert status == 401
    page.fill("#api-key", "wrong-key")
    page.fill("#prompt", "hello")
    page.press("#prompt", "Enter")
    error = page.locator("#messages .msg.assistant").nth(2)
    expect(error).to_have_attribute("data-state", "error")
    expect(error.locator(".error")).to_have_text(f"Error 401: {message}")
    expect(page.locator("#prompt")).to_have_value("hello")

    page.click("#new-chat")
    expect(page.locator("#messages .msg")).to_have_count(0)
    expect(page.locator("#pending img")).to_have_count(0)

    # Paste and drag-and-drop attach images too (synthetic events carrying a canvas-made PNG).
    page.evaluate("""async () => {
        const canvas = Object.assign(document.createElement('canvas'), {width: 30, height: 20});
        const blob = await new Promise((done) => canvas.toBlob(done, 'image/png'));
        const files = () => {
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'x.png', {type: 'image/png'}));
            return dt;
        };
        const prompt = document.querySelector('#prompt');
        prompt.dispatchEvent(new ClipboardEvent('paste', {clipboardData: files(), bubbles: true}));
        const target = document.querySelector('#messages');
        target.dispatchEvent(new DragEvent('dragover', {dataTransfer: files(), bubbles: true, cancelable: true}));
        target.dispatchEvent(new DragEvent('drop', {dataTransfer: files(), bubbles: true, cancelable: true}));
    }""")
    expect(page.locator("#pending img")).to_have_count(2)
    expect(page.locator("#drop-hint")).to_be_hidden()
    page.click("#pending .remove >> nth=0")
    expect(page.locator("#pending img")).to_have_count(1)
    assert not js_errors, js_errors
    assert all(u.startswith(server.url) or u.startswith("data:") for u in requested), requested
