"""Load on loopback: 32 concurrent streaming clients for 60 s on the default model (some hang up
mid-stream). 0 errors, server RSS growth <= 10% after a warm-up, and every slot free at the end.
The figures are printed (and written to $QWENVL_ARTIFACTS/load.json when set); bench/RESULTS.md
records a run of bench/bench_server.py, the same generator. Nothing here asserts a speed."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from qwenvl.server.loadgen import format_report, run_load

SECONDS = float(os.environ.get("QWENVL_LOAD_SECONDS", "60"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def wait_idle(server, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = server.health()
        if (h["active"] == 0 and h["in_flight"] == 0) or time.monotonic() > deadline:
            return h
        time.sleep(0.2)


def test_32_streaming_clients_for_60s(server):
    warm = asyncio.run(run_load(server.url, api_key=server.api_key, clients=32, seconds=10))
    assert warm.errors == []
    wait_idle(server)
    before = rss_bytes(server.proc.pid)
    rep = asyncio.run(run_load(server.url, api_key=server.api_key, clients=32, seconds=SECONDS))
    h = wait_idle(server)
    after = rss_bytes(server.proc.pid)
    print("\n" + format_report(rep) + f"\n  server RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB")
    if os.environ.get("QWENVL_ARTIFACTS"):
        out = Path(os.environ["QWENVL_ARTIFACTS"]) / "load.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**rep.summary(), "rss_before": before, "rss_after": after}, indent=2))
    assert rep.errors == [], rep.errors[:5]
    assert rep.ok > 32 and rep.disconnected > 0
    assert after <= 1.10 * before, f"RSS grew {before} -> {after}"
    assert h["active"] == 0 and h["running"] == 0 and h["waiting"] == 0 and h["in_flight"] == 0
    assert h["slots_free"] == h["slots_total"]
