"""Prometheus metrics of one node (``[metrics]`` in the TOML; off by default).

Every route of a node is public, so the metrics are not one of them: when
enabled they are served on their own listener (``[metrics] host`` / ``port``,
127.0.0.1 by default), for a scraper on the host or the private network,
never on the API port.

No label carries content, keys or API keys: model labels are the configured
model ids (anything else is ``"other"``), routes are a fixed set, statuses
are HTTP status codes, engine errors their documented ``code``.

========================================  =========  ==============================
metric                                    type       labels
========================================  =========  ==============================
``enclaved_requests_total``               counter    route, model, status, e2ee
``enclaved_tokens_total``                 counter    model, direction (in / out)
``enclaved_time_to_first_token_seconds``  histogram  model, e2ee
``enclaved_request_duration_seconds``     histogram  route, model
``enclaved_attestation_seconds``          histogram  status
``enclaved_signature_store_errors_total`` counter    (none)
``enclaved_engine_errors_total``          counter    code
========================================  =========  ==============================

One registry per node (several nodes can run in one process).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ATTESTATION", "CHAT", "Metrics"]

#: Route labels.
CHAT = "chat"
ATTESTATION = "attestation"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The node's metrics in a registry of its own (:attr:`registry`)."""

    def __init__(self, models: Iterable[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self._models = frozenset(models)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "enclaved_requests",
            "Requests answered, by route, model, HTTP status and E2EE or not",
            ["route", "model", "status", "e2ee"],
            registry=r,
        )
        self.tokens = Counter(
            "enclaved_tokens",
            "Prompt (in) and completion (out) tokens",
            ["model", "direction"],
            registry=r,
        )
        self.ttft = Histogram(
            "enclaved_time_to_first_token_seconds",
            "From the request's arrival to the first byte of the answer's body",
            ["model", "e2ee"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "enclaved_request_duration_seconds",
            "From the request's arrival to the answer's last byte",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.attestation_seconds = Histogram(
            "enclaved_attestation_seconds",
            "Attestation reports: evidence, self-check and self-verification",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "enclaved_signature_store_errors", "Signature store failures", registry=r
        )
        self.engine_errors = Counter(
            "enclaved_engine_errors", "Engine failures, by documented code", ["code"], registry=r
        )

    def model_label(self, model: str | None) -> str:
        return model if model in self._models else "other"

    def chat(
        self,
        *,
        model: str | None,
        e2ee: bool,
        status: int,
        ttft: float | None,
        duration: float,
        usage: dict[str, Any] | None,
        engine_error: str | None,
    ) -> None:
        """One chat request, once it has ended."""
        label = self.model_label(model)
        e2ee_label = "true" if e2ee else "false"
        self.requests.labels(CHAT, label, str(status), e2ee_label).inc()
        self.duration.labels(CHAT, label).observe(duration)
        if ttft is not None and status == 200:
            self.ttft.labels(label, e2ee_label).observe(ttft)
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt > 0:
                self.tokens.labels(label, "in").inc(prompt)
            if isinstance(completion, int) and completion > 0:
                self.tokens.labels(label, "out").inc(completion)
        if engine_error:
            self.engine_errors.labels(engine_error).inc()

    def request(self, route: str, model: str | None, status: int, duration: float) -> None:
        """One request of another route (today: attestation)."""
        label = self.model_label(model)
        self.requests.labels(route, label, str(status), "false").inc()
        self.duration.labels(route, label).observe(duration)
        if route == ATTESTATION:
            self.attestation_seconds.labels(str(status)).observe(duration)

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread of prometheus-client);
        returns the server (``shutdown()`` stops it). Raises ``OSError`` when the
        port is taken."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
