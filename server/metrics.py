"""GET /metrics: the server's counters in Prometheus' text format (prometheus_client).

    textebm_requests_total{endpoint, method, code}   HTTP requests by their answer's code (4xx and 5xx too;
                                                     499: the client left before the answer)
    textebm_request_duration_seconds{endpoint}       from the request's arrival to its last byte
    textebm_sentences_generated_total                sentences decoded for /generate
    textebm_batch_requests, textebm_batch_sentences  the size of each decoded batch
    textebm_batch_compute_seconds                    the model's time per batch
    textebm_queue_depth, textebm_busy                read from the batcher at each scrape

Each app has its own registry (not prometheus_client's global one), so two apps in one process
(the tests) count apart. `endpoint` is a route of the app or `other`, never the raw path, and
`method` one of HTTP's own or `other`: a scanner asking for a thousand made-up paths or methods adds
one label value, not a thousand.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Mount

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
CLIENT_LEFT = 499  # nginx's code for a request whose client closed the connection before the answer
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("textebm_requests", "HTTP requests answered, by endpoint, method and status code",
                                ["endpoint", "method", "code"], registry=registry)
        self.duration = Histogram("textebm_request_duration_seconds", "Time from a request's arrival to the end "
                                  "of its answer", ["endpoint"], buckets=SECONDS_BUCKETS, registry=registry)
        self.sentences = Counter("textebm_sentences_generated", "Sentences decoded for /generate",
                                 registry=registry)
        self.batch_requests = Histogram("textebm_batch_requests", "Requests decoded together in one batch",
                                        buckets=SIZE_BUCKETS, registry=registry)
        self.batch_sentences = Histogram("textebm_batch_sentences", "Sentences decoded together in one batch",
                                         buckets=SIZE_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("textebm_batch_compute_seconds", "The model's time for one batch",
                                       buckets=SECONDS_BUCKETS, registry=registry)
        self.queue_depth = Gauge("textebm_queue_depth", "Requests waiting for the model", registry=registry)
        self.busy = Gauge("textebm_busy", "1 while the model works on a batch or a latent request",
                          registry=registry)

    def watch(self, batcher) -> None:
        """The gauges read `batcher` whenever they are scraped."""
        self.queue_depth.set_function(lambda: batcher.pending)
        self.busy.set_function(lambda: float(batcher.busy))

    def batch(self, requests: int, sentences: int, seconds: float) -> None:
        """One decoded batch (called by the batcher)."""
        self.sentences.inc(sentences)
        self.batch_requests.observe(requests)
        self.batch_sentences.observe(sentences)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request, the outermost layer: a 413 from the body limit counts too."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, left = time.perf_counter(), None, False

        async def receive_noting_disconnect():
            nonlocal left
            message = await receive()
            left |= message["type"] == "http.disconnect"
            return message

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_noting_disconnect, send_noting_status)
        finally:
            # No answer started: the client left (499), else the app raised (500, what the server sends).
            code = str(status if status is not None else CLIENT_LEFT if left else 500)
            endpoint = endpoint_of(scope["app"], scope["path"])
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(endpoint, method, code).inc()
            self.metrics.duration.labels(endpoint).observe(time.perf_counter() - started)


def endpoint_of(app, path: str) -> str:
    """The app's route `path` belongs to (a mounted folder for its files), else `other`."""
    for route in app.routes:
        if isinstance(route, Mount):
            if path.startswith(route.path + "/"):
                return route.path
        elif getattr(route, "path", None) == path:
            return path
    return "other"
