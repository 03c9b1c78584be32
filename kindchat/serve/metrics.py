"""Prometheus metrics of one app, in its own `CollectorRegistry` (tests run several apps).

Requests, latency, time to first token and tokens are counted as they happen; queue depth,
running sequences and the versions being served are read from the model manager at scrape
time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kindchat.models.manager import ModelManager

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _ManagerCollector(Collector):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.manager.queue_stats()
        yield GaugeMetricFamily(
            "kindchat_queue_depth", "Requests waiting for a batch slot.", value=stats["queued"]
        )
        yield GaugeMetricFamily(
            "kindchat_running_sequences", "Sequences being generated.", value=stats["running"]
        )
        info = GaugeMetricFamily(
            "kindchat_model_info",
            "The model version each served alias answers with (value 1).",
            labels=["alias", "version", "backend"],
        )
        for alias, version in self.manager.status()["aliases"].items():
            info.add_metric([alias, version, self.manager.backend_name], 1)
        yield info
        yield CounterMetricFamily(
            "kindchat_model_load_failures",
            "Model versions that failed to load (the old version kept serving).",
            value=self.manager.load_failures_total,
        )
        yield CounterMetricFamily(
            "kindchat_model_swaps", "Hot swaps of the alias table.", value=self.manager.swaps_total
        )


class Metrics:
    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kindchat_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kindchat_request_latency_seconds",
            "Time from request to the end of the response (streams included).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "kindchat_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "kindchat_tokens_generated",
            "Completion tokens generated.",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "kindchat_prompt_tokens", "Prompt tokens read.", ["model"], registry=self.registry
        )
        self.challenger_decisions = Counter(
            "kindchat_challenger_decisions",
            "Challenger phases decided by the users' votes, by outcome (promote, retire).",
            ["action"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "kindchat_moderation_flags",
            "Messages moderation flagged: user turns refused (by category) and answers (answer:…).",
            ["category"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "kindchat_rate_limited",
            "Requests refused with 429 by a rate limit, by endpoint group and scope.",
            ["group", "scope"],
            registry=self.registry,
        )
        self.auth_rejected = Counter(
            "kindchat_auth_rejected",
            "Requests refused for their credentials (401/403), by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.sessions_issued = Counter(
            "kindchat_sessions_issued",
            "Signed sessions handed out, by how (api, key, ui).",
            ["via"],
            registry=self.registry,
        )
        self.registry.register(_ManagerCollector(manager))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts each request and times it until its last body byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)
