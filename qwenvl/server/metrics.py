"""Prometheus metrics of one server (prometheus_client, its own registry per app).

Counters and histograms are updated by the app as requests end; gauges and the engine's cache
counters are read at scrape time from the runner (plain integer reads, no lock on the engine thread).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class EngineCollector:
    def __init__(self, runner) -> None:
        self.runner = runner

    def collect(self):
        eng = self.runner.engine
        sched, pool = eng.scheduler, eng.pool
        gauges = {"requests_running": ("requests holding a KV slot", len(sched.running)),
                  "requests_waiting": ("requests queued for a slot (queue depth)", len(sched.waiting)),
                  "requests_active": ("requests submitted and not finished", self.runner.active),
                  "kv_slots_total": ("KV slots in the pool", pool.n_slots),
                  "kv_slots_free": ("KV slots free now", len(pool.free))}
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(f"qwenvl_{name}", doc)
            g.add_metric([], value)
            yield g
        stats = eng.stats
        for key in ("vision_hits", "vision_misses", "prefix_hits", "prefix_reused_tokens", "prefill_tokens",
                    "vision_items_encoded"):
            c = CounterMetricFamily(f"qwenvl_engine_{key}", f"engine.stats[{key!r}]")
            c.add_metric([], stats.get(key, 0))
            yield c


class Metrics:
    def __init__(self, runner) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qwenvl_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("qwenvl_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter("qwenvl_completion_tokens", "generated tokens", registry=r)
        self.ttft = Histogram("qwenvl_time_to_first_token_seconds", "request received -> first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("qwenvl_request_latency_seconds", "request received -> last token",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.cancelled = Counter("qwenvl_requests_cancelled", "requests cancelled (client went away)", registry=r)
        r.register(EngineCollector(runner))

    def render(self) -> bytes:
        return generate_latest(self.registry)
