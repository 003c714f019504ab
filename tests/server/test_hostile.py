"""Malformed and hostile requests against the real server: each gets a 4xx with an OpenAI-style JSON
error that names the problem (never a traceback), and the server keeps serving afterwards.

The server runs with --allow-remote-images and --allow-local-files, so URL refusals come from the
address / path policy itself, not from remote fetching being off. Every URL here is loopback or a
literal blocked address that the policy refuses before any connection is made."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest
from PIL import Image

from tests.server.conftest import data_url, red_box_image

OK_MSG = [{"role": "user", "content": "Hello"}]


def png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A valid 1-bit PNG of w x h (2.5e8 pixels decoded) in ~50 KB: all-zero scanlines, deflated."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def b64(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def img_msg(url: str, role: str = "user") -> list[dict]:
    return [{"role": role, "content": [{"type": "image_url", "image_url": {"url": url}},
                                       {"type": "text", "text": "What is this?"}]}]


def body(**kw) -> dict:
    return {"model": "qwenvl-tiny", "messages": OK_MSG, "max_tokens": 4, **kw}


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    red_box_image().save(buf, format="PNG")
    return buf.getvalue()


def cases(server) -> list[tuple[str, dict]]:
    port = server.url.rsplit(":", 1)[1]
    png = _png_bytes()
    root = server.files
    c: list[tuple[str, dict]] = [
        ("bad json", {"content": b"{bad"}),
        ("empty body", {"content": b""}),
        ("not utf-8", {"content": b"\xff\xfe{}"}),
        ("array body", {"json": []}),
        ("string body", {"json": "hello"}),
        ("deeply nested json", {"content": b"[" * 100000 + b"]" * 100000}),
        ("no messages", {"json": {"model": "qwenvl-tiny"}}),
        ("messages not a list", {"json": body(messages="hi")}),
        ("empty messages", {"json": body(messages=[])}),
        ("message not an object", {"json": body(messages=["hi"])}),
        ("unknown role", {"json": body(messages=[{"role": "wizard", "content": "hi"}])}),
        ("missing role", {"json": body(messages=[{"content": "hi"}])}),
        ("content a number", {"json": body(messages=[{"role": "user", "content": 42}])}),
        ("content null for user", {"json": body(messages=[{"role": "user", "content": None}])}),
        ("content empty array", {"json": body(messages=[{"role": "user", "content": []}])}),
        ("unknown part type", {"json": body(messages=[{"role": "user", "content": [{"type": "input_audio"}]}])}),
        ("text part not a string", {"json": body(messages=[{"role": "user", "content": [{"type": "text",
                                                                                          "text": 5}]}])}),
        ("image_url a number", {"json": body(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": 12}}]}])}),
        ("image in an assistant message", {"json": body(messages=img_msg(b64(png), "assistant") + OK_MSG)}),
        ("tool_calls on a user message", {"json": body(messages=[{"role": "user", "content": "x",
                                                                  "tool_calls": []}])}),
        ("data url that is text", {"json": body(messages=img_msg(b64(b"hello world", "text/plain")))}),
        ("png media type, not an image", {"json": body(messages=img_msg(b64(b"GIF? no, just text" * 10)))}),
        ("truncated base64", {"json": body(messages=img_msg(b64(png)[:-3]))}),
        ("base64 with junk", {"json": body(messages=img_msg("data:image/png;base64,@@@@not-base64@@@@"))}),
        ("truncated png", {"json": body(messages=img_msg(b64(png[: len(png) // 2])))}),
        ("20000x20000 png bomb", {"json": body(messages=img_msg(b64(png_bomb())))}),
        ("1x1 image", {"json": body(messages=img_msg(data_url(Image.new("RGB", (1, 1)))))}),
        ("1000 images", {"json": body(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 1000}])}),
        ("video frames not a list", {"json": body(messages=[{"role": "user", "content": [
            {"type": "video", "video": "clip.mp4"}]}])}),
        ("huge max_tokens", {"json": body(max_tokens=10**9)}),
        ("max_tokens negative", {"json": body(max_tokens=-5)}),
        ("max_tokens a string", {"json": body(max_tokens="10")}),
        ("max_completion_tokens zero", {"json": body(max_completion_tokens=0)}),
        ("temperature too high", {"json": body(temperature=5)}),
        ("temperature a string", {"json": body(temperature="hot")}),
        ("top_p zero", {"json": body(top_p=0)}),
        ("n = 2", {"json": body(n=2)}),
        ("stop a number", {"json": body(stop=7)}),
        ("100 stop strings", {"json": body(stop=[f"s{i}" for i in range(100)])}),
        ("seed a float", {"json": body(seed=1.5)}),
        ("logprobs a string", {"json": body(logprobs="yes")}),
        ("top_logprobs 50", {"json": body(logprobs=True, top_logprobs=50)}),
        ("stream_options a list", {"json": body(stream=True, stream_options=[1])}),
        ("min_pixels negative", {"json": body(min_pixels=-1)}),
        ("unknown model", {"json": body(model="gpt-17")}),
        ("response_format bogus", {"json": body(response_format={"type": "yaml"})}),
        ("json_schema not an object", {"json": body(response_format={"type": "json_schema", "json_schema": 3})}),
        ("json_schema invalid", {"json": body(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "no-such-type"}}})}),
        ("tools malformed", {"json": body(tools=[{"type": "function"}])}),
        ("tool_choice unknown function", {"json": body(tools=[{"type": "function", "function": {"name": "f"}}],
                                                       tool_choice={"type": "function", "function": {"name": "g"}})}),
        ("tool_choice without tools", {"json": body(tool_choice="required")}),
        ("private ip url", {"json": body(messages=img_msg("http://10.0.0.1/a.png"))}),
        ("link-local metadata url", {"json": body(messages=img_msg("http://169.254.169.254/latest/meta-data/"))}),
        ("loopback url (the server itself)", {"json": body(messages=img_msg(f"http://127.0.0.1:{port}/health"))}),
        ("localhost by name", {"json": body(messages=img_msg(f"http://localhost:{port}/"))}),
        ("ipv6 loopback", {"json": body(messages=img_msg(f"http://[::1]:{port}/"))}),
        ("ipv4-mapped ipv6 loopback", {"json": body(messages=img_msg(f"http://[::ffff:127.0.0.1]:{port}/"))}),
        ("decimal loopback", {"json": body(messages=img_msg(f"http://2130706433:{port}/"))}),
        ("unspecified address", {"json": body(messages=img_msg(f"http://0.0.0.0:{port}/"))}),
        ("ftp scheme", {"json": body(messages=img_msg("ftp://example.invalid/a.png"))}),
        ("file outside the root", {"json": body(messages=img_msg("file:///etc/passwd"))}),
        ("path traversal", {"json": body(messages=img_msg(f"file://{root}/../../../../etc/passwd"))}),
        ("symlink out of the root", {"json": body(messages=img_msg(f"file://{root}/escape.png"))}),
        ("relative traversal", {"json": body(messages=img_msg("../../etc/passwd"))}),
        ("wrong api key", {"json": body(), "headers": {"Authorization": "Bearer nope"}}),
        ("no api key", {"json": body(), "headers": {"Authorization": ""}}),
        ("basic auth instead of bearer", {"json": body(), "headers": {"Authorization": "Basic dGVzdA=="}}),
        ("body over the limit", {"content": b'{"messages": "' + b"x" * (9 * 2**20) + b'"}'}),
        ("GET on the POST route", {"method": "GET"}),
        ("unknown route", {"path": "/v1/completions-nope"}),
    ]
    return c


def test_hostile_requests_get_4xx_json_errors_and_the_server_keeps_serving(server):
    auth = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    seen = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        all_cases = cases(server)
        assert len(all_cases) >= 40
        for name, spec in all_cases:
            headers = {**auth, **spec.get("headers", {})}
            r = http.request(spec.get("method", "POST"), spec.get("path", "/v1/chat/completions"), headers=headers,
                             json=spec.get("json"), content=spec.get("content"))
            assert 400 <= r.status_code < 500, f"{name}: status {r.status_code}: {r.text[:300]}"
            err = r.json()["error"]
            assert isinstance(err["message"], str) and err["message"], name
            assert set(err) == {"message", "type", "param", "code"}, name
            assert "Traceback" not in r.text and "/site-packages/" not in r.text, name
            seen.append((name, r.status_code, err["code"]))
            print(f"{name:38s} {r.status_code} {err['code']}: {err['message'][:110]}")
            if name == "1000 images":
                assert "1000" in err["message"]
            if name in ("wrong api key", "no api key"):
                assert r.status_code == 401
        ok = http.post("/v1/chat/completions", headers=auth, json=body())
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
        good_file = http.post("/v1/chat/completions", headers=auth,
                              json=body(messages=img_msg(f"file://{server.files}/ok.png")))
        assert good_file.status_code == 200, good_file.text  # the root itself is readable
    statuses = {s for _, s, _ in seen}
    assert {400, 401, 404, 405, 413} <= statuses
    h = server.health()
    assert h["active"] == 0 and h["in_flight"] == 0 and h["slots_free"] == h["slots_total"]


@pytest.mark.parametrize("url_kind", ["refused", "accepted"])
def test_error_messages_name_the_field(server, url_kind):
    auth = {"Authorization": f"Bearer {server.api_key}"}
    url = "http://10.1.2.3/x.png" if url_kind == "refused" else data_url(red_box_image())
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "text", "text": "c"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=auth, json=body(messages=msgs), timeout=60)
    if url_kind == "refused":
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "messages[2].content[1].image_url.url"
    else:
        assert r.status_code == 200
