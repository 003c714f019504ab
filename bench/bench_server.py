"""Server under load vs the same engine without HTTP, in one run.

    python bench/bench_server.py [--clients 32] [--seconds 60] [--slots 8] [--max-tokens 32]

1. `qwenvl serve` (shipped default model) on 127.0.0.1, driven by qwenvl.server.loadgen: N concurrent
   streaming clients with images for S seconds, every 7th hanging up mid-stream. Prints TTFT / latency
   p50 / p99, completion tok/s, server RSS before / after (after a 10 s warm-up).
2. The limit for that row: the same requests (same images, prompt, max_tokens, sampling) submitted
   straight to an in-process Engine with the same slot count, N at a time, for S/3 seconds:
   completion tok/s with no HTTP, JSON, SSE or image decoding. The server's share of it is printed.
Run it with the CPU to itself (no other torch process): two processes on 2 cores slow each other 4-50x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_line() -> str:
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                                 if f in have)
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores; {flags})"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one when pid is None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_and_load(args) -> dict:
    import socket
    import urllib.request

    from qwenvl.server.loadgen import format_report, run_load

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.server_threads)} if args.server_threads else {})}
    proc = subprocess.Popen([sys.executable, "-m", "qwenvl", "serve", "--port", str(port), "--slots", str(args.slots),
                             "--max-pending", str(4 * args.clients), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        asyncio.run(run_load(url, clients=args.clients, seconds=10, max_tokens=args.max_tokens))
        time.sleep(1)
        before = rss(proc.pid)
        c0, s0, t0 = cpu_seconds(), cpu_seconds(proc.pid), time.perf_counter()
        rep = asyncio.run(run_load(url, clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens))
        wall = time.perf_counter() - t0
        client_cores, server_cores = (cpu_seconds() - c0) / wall, (cpu_seconds(proc.pid) - s0) / wall
        time.sleep(1)
        after = rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(format_report(rep))
    print(f"  server RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB ({100 * (after / before - 1):+.1f}%); "
          f"CPU used: server {server_cores:.2f} cores, load generator {client_cores:.2f} cores")
    return {**rep.summary(), "rss_before": before, "rss_after": after, "client_cores": client_cores}


def engine_limit(args) -> float:
    """Completion tok/s of the same requests through an in-process Engine (no HTTP), N in flight."""
    import qwenvl
    from qwenvl.server.loadgen import _images

    pipe = qwenvl.load()
    pipe.configure_engine(n_slots=args.slots)
    urls = _images()
    inputs = [pipe.prepare([{"role": "user", "content": [{"type": "image", "image": u},
                                                         {"type": "text", "text": "Describe the image."}]}])
              for u in urls]
    eng = pipe.engine
    deadline, n, tokens = time.perf_counter() + args.seconds / 3, 0, 0
    t0 = time.perf_counter()
    live = []
    while time.perf_counter() < deadline or live:
        while time.perf_counter() < deadline and len(live) < args.clients:
            p = pipe.sampling(max_new_tokens=args.max_tokens, temperature=0.7, seed=n)
            live.append(eng.submit(inputs[n % len(inputs)], p))
            n += 1
        eng.step()
        for h in [h for h in live if h.done]:
            tokens += len(h.request.out.token_ids)
            live.remove(h)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--server-threads", type=int, default=0, help="OMP_NUM_THREADS of the server (0: default)")
    args = ap.parse_args()
    print(f"# bench_server {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {cpu_line()} | torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"# qwenvl-tiny (dtype auto), {args.clients} streaming clients, {args.slots} slots, max_tokens "
          f"{args.max_tokens}, server threads {args.server_threads or 'default'}")
    srv = serve_and_load(args)
    lim = engine_limit(args)
    print("\n| row | completion tok/s | TTFT p50 / p99 s | latency p50 / p99 s | errors |\n|---|---|---|---|---|")
    print(f"| qwenvl serve, {args.clients} SSE clients over HTTP | {srv['tokens_per_s']:.1f} | "
          f"{srv['ttft_p50_s']:.2f} / {srv['ttft_p99_s']:.2f} | {srv['latency_p50_s']:.2f} / "
          f"{srv['latency_p99_s']:.2f} | {srv['errors']} |")
    print(f"| limit: same requests, in-process Engine, no HTTP | {lim:.1f} | | | |")
    print(f"\nserver = {100 * srv['tokens_per_s'] / lim:.0f}% of the in-process engine, while the load generator "
          f"took {srv['client_cores']:.2f} of the {os.cpu_count()} cores (tokens of requests hung up on purpose are "
          "not counted on the server row)")


if __name__ == "__main__":
    main()
