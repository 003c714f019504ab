"""A bounded load generator for an OpenAI-compatible server: N concurrent streaming clients for S seconds.

    report = asyncio.run(run_load("http://127.0.0.1:8000", api_key="k", clients=32, seconds=60))
    print(format_report(report))

Each client loops: one streamed chat request with an image (a few distinct images, so the vision
cache sees repeats and misses), timing the first content chunk (TTFT) and the whole request; every
`disconnect_every`-th request hangs up after its first chunks, as a client that went away. Stops by
itself after `seconds` (requests in flight then finish). Used by tests/server/test_load.py and
bench/bench_server.py; point it only at a server of your own on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from dataclasses import dataclass, field

import httpx
from PIL import Image


def _images(n: int = 4) -> list[str]:
    out = []
    for k in range(n):
        img = Image.new("RGB", (160 + 40 * k, 140), "white")
        img.paste((40 * k, 200 - 30 * k, 60), (20 + 10 * k, 30, 90 + 10 * k, 110))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


@dataclass
class LoadReport:
    clients: int
    seconds: float
    ok: int = 0
    disconnected: int = 0
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0

    @staticmethod
    def pct(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        s = sorted(xs)
        return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]

    def summary(self) -> dict:
        return {"clients": self.clients, "seconds": round(self.seconds, 1), "requests_ok": self.ok,
                "disconnected_on_purpose": self.disconnected, "errors": len(self.errors),
                "ttft_p50_s": self.pct(self.ttft, 50), "ttft_p99_s": self.pct(self.ttft, 99),
                "latency_p50_s": self.pct(self.latency, 50), "latency_p99_s": self.pct(self.latency, 99),
                "completion_tokens": self.tokens, "tokens_per_s": self.tokens / self.seconds if self.seconds else 0}


async def _one(http: httpx.AsyncClient, body: dict, hang_up: bool, rep: LoadReport) -> None:
    t0 = time.perf_counter()
    first = None
    chunks = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            rep.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                rep.errors.append(f"stream error: {obj['error']['message']}")
                return
            if obj.get("usage"):
                rep.tokens += obj["usage"]["completion_tokens"]
            if obj["choices"] and obj["choices"][0]["delta"].get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
                if hang_up and chunks >= 2:
                    rep.disconnected += 1
                    return  # leaving the block closes the connection mid-stream
    if first is None:
        first = time.perf_counter() - t0
    rep.ttft.append(first)
    rep.latency.append(time.perf_counter() - t0)
    rep.ok += 1


async def run_load(base_url: str, *, api_key: str | None = None, clients: int = 32, seconds: float = 60.0,
                   max_tokens: int = 32, model: str | None = None, disconnect_every: int = 7,
                   question: str = "Describe the image.") -> LoadReport:
    images = _images()
    rep = LoadReport(clients, seconds)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    deadline = time.perf_counter() + seconds
    counter = iter(range(1 << 30))

    async def client(k: int, http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            body = {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": images[n % len(images)]}},
                {"type": "text", "text": question}]}],
                "max_tokens": max_tokens, "temperature": 0.7, "seed": n, "stream": True,
                "stream_options": {"include_usage": True}}
            if model:
                body["model"] = model
            try:
                await _one(http, body, disconnect_every > 0 and n % disconnect_every == disconnect_every - 1, rep)
            except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
                rep.errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(300.0),
                                 limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    rep.seconds = time.perf_counter() - t0
    return rep


def format_report(rep: LoadReport) -> str:
    s = rep.summary()
    return (f"{s['clients']} streaming clients for {s['seconds']} s: {s['requests_ok']} requests ok, "
            f"{s['disconnected_on_purpose']} hung up mid-stream on purpose, {s['errors']} errors\n"
            f"  TTFT p50 {s['ttft_p50_s']:.3f} s  p99 {s['ttft_p99_s']:.3f} s | latency p50 {s['latency_p50_s']:.3f} s"
            f"  p99 {s['latency_p99_s']:.3f} s | {s['completion_tokens']} tokens, {s['tokens_per_s']:.1f} tok/s")
