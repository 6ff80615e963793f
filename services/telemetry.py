"""Prometheus /metrics and a progress-aware /healthz, one HTTP server per service.

Each service owns a private CollectorRegistry (so tests can run several in one process),
creates its metrics from the catalogue (`boardlens.services.metrics`, nothing else) and
calls `progress()` whenever it does useful work; /healthz answers 200 only while the last
progress is younger than `stall_after_s` (or the service says it is idle on purpose, e.g.
waiting for subscribers) and no registered problem check reports one (e.g. the producer
blocked too long by a subscriber that does not read), else 503 with the reason.

/metrics is prometheus_client's own WSGI exposition: it negotiates the format (OpenMetrics
when the scraper asks for it, as Prometheus does, else the text format), gzips when the
scraper accepts it, and honours `name[]` filters. /healthz is served beside it.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from boardlens.services.metrics import BUILD_INFO, CATALOGUE, COUNTER, GAUGE, Metric
from boardlens.services.status import StatusFile

disable_created_metrics()  # no `_created` twin of every counter: half the series


class Telemetry:
    def __init__(self, service: str, port: int, host: str = "127.0.0.1", stall_after_s: float = 60.0) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        self.stall_after_s = stall_after_s
        self._last_progress = time.monotonic()
        self._state = "starting"
        self.problems: list = []  # callables -> a reason the service is unhealthy, or None
        self._server: ThreadingWSGIServer | None = None
        self.status: StatusFile | None = None  # the status record, rewritten as the service progresses
        self.metric(BUILD_INFO).labels(service, _version()).set(1)
        if port:
            self._serve(host, port)

    def metric(self, spec: Metric) -> Counter | Gauge | Histogram:
        """The Prometheus object of a catalogue entry, registered with this service."""
        if CATALOGUE.get(spec.name) != spec:
            raise ValueError(f"{spec.name} is not in the catalogue (boardlens.services.metrics)")
        kind = {COUNTER: Counter, GAUGE: Gauge}.get(spec.kind)
        if kind is not None:
            return kind(spec.name, spec.help, spec.labels, registry=self.registry)
        return Histogram(spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets)

    # --- health -----------------------------------------------------------------------
    def progress(self, state: str = "running") -> None:
        self._last_progress = time.monotonic()
        self._state = state
        if self.status is not None:
            self.status.update(state)

    def idle(self, state: str) -> None:
        """Healthy while deliberately waiting (e.g. for subscribers or an eval set)."""
        self.progress(state)

    def health(self) -> tuple[bool, dict]:
        """Unhealthy when stalled, or when a registered problem check names a reason."""
        age = time.monotonic() - self._last_progress
        reasons = [r for r in (check() for check in self.problems) if r]
        ok = age <= self.stall_after_s and not reasons
        info = {"service": self.service, "state": self._state, "seconds_since_progress": round(age, 3), "ok": ok}
        if reasons:
            info["problems"] = reasons
        return ok, info

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def _serve(self, host: str, port: int) -> None:
        metrics = make_wsgi_app(self.registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path.startswith("/metrics"):
                return metrics(environ, start_response)
            if path.startswith("/healthz"):
                ok, info = self.health()
                body, status = json.dumps(info).encode(), "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics or /healthz\n"]

        self._server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=f"{self.service}-metrics", daemon=True).start()

    def close(self) -> None:
        if self.status is not None:
            self.status.update("stopped", force=True)
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes are not worth a log line
        pass


def _version() -> str:
    try:
        return importlib.metadata.version("boardlens")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"
