"""The services' Prometheus metrics: what each service counts, and how it is exposed.

Each server counts into a registry of its own (several servers may run in one process, as the tests start
them). FeedbackMetrics, the feedback service's, is exposed by prometheus_client's own HTTP server on a port of
its own (MetricsServer; settings.FEEDBACK_METRICS_PORT); GatewayMetrics, the editor gateway's, is answered at
the gateway's own /metrics. Both listen where their service does: loopback unless ABN_LISTEN_ALL=1.

What the store holds (corrections per model and state and per author, the review queue, every retraining run)
is counted when a scraper asks (StoreCollector), from the store that every replica shares: replicas report the
same figures, and a scraper never depends on the short-lived retraining job, which records its runs there.

Nothing here knows gRPC, the web framework or the store's classes: the feedback server's interceptor and the
gateway's middleware report to these, and the store is asked through the few methods StoreCollector calls.
"""

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from finetune import gate

logger = logging.getLogger(__name__)

# seconds: a call answered from memory takes about a millisecond, a submission an fsync, a listing may stream long
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STATEMENT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # submissions per SQLite commit (GroupCommit's batch is at most 64)
STATEMENTS = ("select", "insert", "update", "delete", "savepoint", "release", "rollback")  # others count as "other"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # others count as "other"
STATES = ("pending", "consumed", "rejected", "withdrawn")  # of a correction
RUN_OUTCOMES = ("promoted", "refused", "stopped", "failed")  # of a retraining run
UNKNOWN = "unknown"  # the label of a gRPC method or HTTP route that does not exist, so callers cannot add series


class FeedbackMetrics:
    """The feedback service's metrics: its calls, submissions, review claims and skips, and its store's statements
    and commit groups, counted as they happen; the store's contents counted at each scrape (StoreCollector)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._collector: StoreCollector | None = None  # what watch() registers
        r = self.registry
        self.requests = Counter(
            "abn_feedback_requests", "gRPC calls answered, by method and status code", ["service", "method", "code"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "abn_feedback_request_seconds", "gRPC calls' time to answer (a stream: to its end), by method",
            ["service", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.submissions = Counter(
            "abn_feedback_submissions",
            "SubmitFeedback calls by outcome (stored, duplicate: an idempotency key seen before, refused) and status "
            "code",
            ["outcome", "code"],
            registry=r,
        )
        self.claims = Counter("abn_review_claims", "review items claimed by an expert", registry=r)
        self.skips = Counter(
            "abn_review_skips", "review items an expert skipped (not offered to them again)", registry=r
        )
        self.statements = Histogram(
            "abn_store_statement_seconds", "the feedback store's statements' time, by kind (select, insert, ...)",
            ["statement"], buckets=STATEMENT_BUCKETS, registry=r,
        )  # fmt: skip
        self.groups = Histogram(
            "abn_store_commit_group_size", "submissions committed together in one SQLite transaction",
            buckets=GROUP_BUCKETS, registry=r,
        )  # fmt: skip

    def answered(self, method: str, code: str, seconds: float, request: Any = None, response: Any = None) -> None:
        """A call to method (/package.Service/Method, or UNKNOWN) ended with status code (OK, NOT_FOUND, ...)."""
        service, _, name = method.strip("/").rpartition("/")
        service = service or UNKNOWN
        self.requests.labels(service, name, code).inc()
        self.latency.labels(service, name).observe(seconds)
        if name == "SubmitFeedback":
            outcome = "refused" if code != "OK" else "stored" if response.created else "duplicate"
            self.submissions.labels(outcome, code).inc()
        elif code == "OK" and name == "ClaimReviewItem":
            self.claims.inc()
        elif code == "OK" and name == "ReleaseReviewItem" and not request.keep_offering:
            self.skips.inc()

    def statement(self, sql: str, seconds: float) -> None:
        kind = sql.lstrip().split(None, 1)[0].lower() if sql.strip() else ""
        self.statements.labels(kind if kind in STATEMENTS else "other").observe(seconds)

    def watch(self, store: Any, serving: Callable[[], bool] = lambda: True, timeout: float = 5.0) -> None:
        """Time store's statements and commit groups, and count what it holds at each scrape (unless serving()
        says the store is unreachable; then, or when it does not answer within timeout seconds, abn_store_up is 0
        and the figures read from it are left out)."""
        store.on_statement = self.statement
        store.on_group = self.groups.observe
        self._collector = StoreCollector(store, serving, timeout)
        self.registry.register(self._collector)

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()


class StoreCollector:
    """The store's contents as metrics, read at each scrape with a few grouped counts (store.tally) and the latest
    runs (store.last_runs), on one thread of its own, so the store keeps one connection for them."""

    def __init__(self, store: Any, serving: Callable[[], bool], timeout: float):
        self.store, self.serving, self.timeout = store, serving, timeout
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="metrics-store")

    def close(self) -> None:
        self._reader.shutdown(wait=False)  # a read the store has not answered yet ends with the store

    def _read(self) -> tuple[Any, list, list]:
        return self.store.tally(), self.store.last_runs(), self.store.last_runs(judged=True)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("abn_store_up", "1 when the feedback store answered this scrape's counts, else 0")
        figures: tuple[Any, list, list] | None = None
        if self.serving():
            try:
                figures = self._reader.submit(self._read).result(self.timeout)
            except Exception as e:  # a scrape still answers: the figures are missing, and abn_store_up says why
                logger.warning("metrics: the feedback store did not answer: %s", e or type(e).__name__)
        up.add_metric([], 1 if figures else 0)
        yield up
        if figures:
            tally, last, judged = figures
            yield from _contents(tally)
            yield from _last_runs(last)
            yield from _gate(judged)


def _contents(tally: Any) -> Iterator[Metric]:
    """Corrections per model and state and per author, the review queue per model, runs per model and outcome."""
    models = sorted({m for m, _ in (*tally.feedback, *tally.review, *tally.runs)})
    corrections = GaugeMetricFamily(
        "abn_feedback_corrections", "corrections stored, by model and state", labels=["model", "state"]
    )
    authors = GaugeMetricFamily(
        "abn_feedback_author_corrections", "corrections stored, by author (the expert)", labels=["author"]
    )
    depth = GaugeMetricFamily(
        "abn_review_queue_depth", "review items waiting for an expert (a lapsed claim included)", labels=["model"]
    )
    claimed = GaugeMetricFamily("abn_review_claimed", "review items claimed under a live lease", labels=["model"])
    expired = GaugeMetricFamily(
        "abn_review_expired_leases", "review items whose claim lapsed without a correction", labels=["model"]
    )
    runs = CounterMetricFamily("abn_retrain_runs", "retraining runs recorded, by outcome", labels=["model", "outcome"])
    for model in models:
        for state in sorted({*STATES, *(s for m, s in tally.feedback if m == model)}):
            corrections.add_metric([model, state], tally.feedback.get((model, state), 0))
        waiting, lapsed = tally.review.get((model, "waiting"), 0), tally.review.get((model, "lease_expired"), 0)
        depth.add_metric([model], waiting + lapsed)
        claimed.add_metric([model], tally.review.get((model, "claimed"), 0))
        expired.add_metric([model], lapsed)
        for outcome in sorted({*RUN_OUTCOMES, *(o for m, o in tally.runs if m == model)}):
            runs.add_metric([model, outcome], tally.runs.get((model, outcome), 0))
    for author, n in sorted(tally.authors.items()):
        authors.add_metric([author], n)
    yield from (corrections, authors, depth, claimed, expired, runs)


def _last_runs(last: list) -> Iterator[Metric]:
    """Each model's latest run: when it ended, how long it took, its outcome, and what it used."""
    ended = GaugeMetricFamily(
        "abn_retrain_last_run_end_timestamp_seconds", "when the latest run ended (Unix time)", labels=["model"]
    )
    duration = GaugeMetricFamily("abn_retrain_last_run_duration_seconds", "the latest run's length", labels=["model"])
    outcome = GaugeMetricFamily(
        "abn_retrain_last_run_outcome", "1 for the latest run's outcome, 0 for the others", labels=["model", "outcome"]
    )
    info = InfoMetricFamily(
        "abn_retrain_last_run", "the latest run: its id, outcome, deciding criterion or reason, and versions",
        labels=["model"],
    )  # fmt: skip
    used = GaugeMetricFamily(
        "abn_retrain_last_run_corrections",
        "corrections the latest run fine-tuned on (used) and kept back to check (kept_back)",
        labels=["model", "use"],
    )
    for run in last:
        ended.add_metric([run.model_name], run.ended)
        duration.add_metric([run.model_name], run.ended - run.started)
        for name in sorted({*RUN_OUTCOMES, run.outcome}):
            outcome.add_metric([run.model_name, name], 1 if name == run.outcome else 0)
        info.add_metric(
            [run.model_name],
            {
                "run": run.run,
                "outcome": run.outcome,
                "decided_by": run.decided_by or run.reason,
                "served_version": run.served_version,
                "version": run.version,
            },
        )
        used.add_metric([run.model_name, "used"], run.corrections_used)
        used.add_metric([run.model_name, "kept_back"], run.corrections_kept_back)
    yield from (ended, duration, outcome, info, used)


def _gate(judged: list) -> Iterator[Metric]:
    """The gate's figures of each model's latest judged run (promoted or refused), per criterion."""
    labels = ["model", "criterion"]
    families = {
        "served": GaugeMetricFamily("abn_retrain_gate_served", "the served model's figure", labels=labels),
        "candidate": GaugeMetricFamily("abn_retrain_gate_candidate", "the candidate's figure", labels=labels),
        "change": GaugeMetricFamily("abn_retrain_gate_change", "candidate minus served", labels=labels),
        "low": GaugeMetricFamily("abn_retrain_gate_change_low", "the change's interval, low end", labels=labels),
        "high": GaugeMetricFamily("abn_retrain_gate_change_high", "the change's interval, high end", labels=labels),
        "samples": GaugeMetricFamily("abn_retrain_gate_samples", "images or corrections judged on", labels=labels),
        "passed": GaugeMetricFamily("abn_retrain_gate_passed", "1 when the criterion passed", labels=labels),
    }
    ended = GaugeMetricFamily(
        "abn_retrain_gate_end_timestamp_seconds", "when the latest judged run ended (Unix time)", labels=["model"]
    )
    for run in judged:
        ended.add_metric([run.model_name], run.ended)
        for c in run.gate.get("criteria", []):
            change, low, high = gate.change_of(c)
            values = {"served": c.get("served"), "candidate": c.get("candidate"), "change": change, "low": low,
                      "high": high, "samples": c.get("samples"), "passed": 1 if c["passed"] else 0}  # fmt: skip
            for key, value in values.items():
                if value is not None:  # a criterion with nothing to judge on has no served or candidate figure
                    families[key].add_metric([run.model_name, c["name"]], value)
    yield from (*families.values(), ended)


class MetricsServer:
    """prometheus_client's HTTP server answering a registry's metrics (at /metrics, or any path) on host:port, in
    a thread of this process; port 0 takes a free one, and port says which."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        try:
            self._httpd, self._thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
        except OSError as e:
            raise OSError(f"the metrics could not listen on {host}:{port} (is the port taken?): {e.strerror}") from e
        self.port: int = self._httpd.server_port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class GatewayMetrics:
    """The editor gateway's metrics: requests by route (its template, as /api/queue/{review_id}/claim), method
    and status, with their time to answer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "abn_editor_requests", "HTTP requests answered, by route, method and status", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "abn_editor_request_seconds", "HTTP requests' time to answer, by route and method", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        """What /metrics answers: the metrics in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app):
        """app (an ASGI application) with each HTTP request counted and timed, whatever answers it."""
        metrics = self

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            started, status = time.perf_counter(), 500  # an exception that escapes is answered 500 further out

            async def sent(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sent)
            finally:
                route = getattr(scope.get("route"), "path", UNKNOWN)  # set by the router once it matched one
                method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.latency.labels(route, method).observe(time.perf_counter() - started)

        return counted
