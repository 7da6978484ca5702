"""Prometheus metrics of every process, on prometheus_client: the series each process exports and its /metrics.

Each process (API server, trainer, order worker, retention daemon) registers its series in prometheus_client's
default registry and, when FACEHARMONY_METRICS_PORT is set (unset or 0: no listener), serves them on
FACEHARMONY_METRICS_ADDRESS:PORT/metrics (127.0.0.1 unless set otherwise). The retention daemon keeps its own
registry and flags (`--metrics-port`, `--metrics-file`: retention/metrics.py).

Labels carry no personal data and no ids: RPC method and status code, verdict, queue name and state, outcome,
Triton replica address. The operator's guide (docker/README.md, "Monitoring") says what each series means; the
dashboard and the alert rules are in deploy/monitoring/.

Queue depth and the oldest waiting job's age are read from the database when Prometheus scrapes (a collector,
cached for QUEUE_CACHE_SECONDS so a scrape storm cannot load the database), by whichever process drains that
queue: the trainer the training jobs, the order worker the orders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import prometheus_client as prom
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

prom.disable_created_metrics()  # no `_created` series next to every counter and histogram

log = logging.getLogger("faceharmony.metrics")

QUEUE_CACHE_SECONDS = 5.0

# Latency buckets: an RPC is milliseconds to seconds (an upload is verified inline, a sign-in sends e-mail).
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A Triton request is one image: a tenth of a second (tiny, GPU) to a minute (SD 1.5 on a CPU).
TRITON_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
# A training job: a minute (tiny) to an hour (SD 1.5 on a GPU).
TRAINING_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)

# --- API server ----------------------------------------------------------------------------------------------
RPC_STARTED = prom.Counter(
    "faceharmony_grpc_server_started", "RPCs started, by service and method.", ["grpc_service", "grpc_method"]
)
RPC_HANDLED = prom.Counter(
    "faceharmony_grpc_server_handled",
    "RPCs finished, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = prom.Histogram(
    "faceharmony_grpc_server_handling_seconds",
    "Time from an RPC's start to its status, by service and method.",
    ["grpc_service", "grpc_method"],
    buckets=RPC_BUCKETS,
)
UPLOAD_VERDICTS = prom.Counter(
    "faceharmony_upload_verdicts", "Uploaded photos by the verifier's verdict (accepted or the reason).", ["verdict"]
)
STORE_RECEIPTS = prom.Counter(
    "faceharmony_store_receipts",
    "RecordPurchase by store and outcome: granted, replayed (the first record again), or the refusal's reason"
    " (receipt_invalid, store_unavailable, purchase_pending, purchase_revoked, transaction_already_recorded, ...).",
    ["store", "outcome"],
)
STORE_REVOCATIONS = prom.Counter(
    "faceharmony_store_revocations",
    "Refunds and revocations the stores announced, by store and outcome: revoked (credits taken back), reinstated"
    " (a reversed refund), unchanged (already applied), unknown (a purchase never recorded, kept as a hash).",
    ["store", "outcome"],
)

# --- trainer -------------------------------------------------------------------------------------------------
TRAINING_SECONDS = prom.Histogram(
    "faceharmony_training_job_seconds",
    "Wall time of one training attempt, from claim to its end, by outcome.",
    ["outcome"],
    buckets=TRAINING_BUCKETS,
)
TRAINING_JOBS = prom.Counter(
    "faceharmony_training_jobs",
    "Training attempts by outcome: succeeded, retryable_error (tried again later), failed (for good), interrupted"
    " (handed back on shutdown), lost (lease lost or model deleted), dropped (model no longer trainable).",
    ["outcome"],
)

# --- order worker --------------------------------------------------------------------------------------------
IMAGES = prom.Counter(
    "faceharmony_images",
    "Order images by outcome: made, failed (refunded), retried (tried again after an error).",
    ["outcome"],
)
TRITON_SECONDS = prom.Histogram(
    "faceharmony_triton_request_seconds",
    "Latency of one image's Triton request as the order worker sees it, by replica.",
    ["replica"],
    buckets=TRITON_BUCKETS,
)
TRITON_REQUESTS = prom.Counter(
    "faceharmony_triton_requests", "Triton requests by replica and status (OK or Triton's code).", ["replica", "code"]
)
TRITON_UP = prom.Gauge(
    "faceharmony_triton_replica_up",
    "1 while the router sends a replica its models, 0 while it is marked down.",
    ["replica"],
)
TRITON_FAILOVERS = prom.Counter(
    "faceharmony_triton_failovers", "Requests sent to the next replica in hash order because one did not answer."
)
EVICTIONS = prom.Counter(
    "faceharmony_evictions",
    "Adapter evictions sent to a Triton replica, by replica and result (confirmed or failed, retried).",
    ["replica", "result"],
)


class QueueCollector(Collector):
    """faceharmony_queue_depth{queue,state} and faceharmony_queue_oldest_age_seconds{queue}, read from the
    database at scrape time through `read` (queue -> ({state: count}, oldest waiting age in seconds)), cached for
    QUEUE_CACHE_SECONDS. A failing read (the database down) yields no series rather than a failed scrape; the
    process's own health check says the database is down."""

    def __init__(self, read: Callable[[], dict[str, tuple[dict[str, int], float]]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, tuple[dict[str, int], float]]] | None = None

    def _values(self) -> dict[str, tuple[dict[str, int], float]]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < QUEUE_CACHE_SECONDS:
                return self._cached[1]
            try:
                values = self._read()
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
                log.warning("queue metrics unavailable", extra={"error": type(exc).__name__})
                return {}
            self._cached = (time.monotonic(), values)
            return values

    def describe(self) -> Iterable:
        return []  # read at collect time only (registering must not query the database)

    def collect(self) -> Iterable:
        depth = GaugeMetricFamily(
            "faceharmony_queue_depth",
            "Jobs in a queue by state (queued: waiting, running: leased).",
            labels=["queue", "state"],
        )
        age = GaugeMetricFamily(
            "faceharmony_queue_oldest_age_seconds",
            "Age of the oldest queued job that is due (0: none waiting).",
            labels=["queue"],
        )
        for queue, (states, oldest) in sorted(self._values().items()):
            for state, n in sorted(states.items()):
                depth.add_metric([queue, state], n)
            age.add_metric([queue], oldest)
        yield depth
        yield age


def job_queue_reader(db, queues: dict[str, Any], clock) -> Callable[[], dict[str, tuple[dict[str, int], float]]]:
    """A QueueCollector `read` over job tables (core/jobs/queue.py's columns): queued and running counts, and the
    age of the oldest queued job whose next attempt is due."""
    import peewee as pw

    def read() -> dict[str, tuple[dict[str, int], float]]:
        now = clock.now()
        out: dict[str, tuple[dict[str, int], float]] = {}
        with db.connection_context():
            for queue, table in queues.items():
                states = {"queued": 0, "running": 0}
                rows = (
                    table.select(table.state, pw.fn.COUNT(table.id))
                    .where(table.state.in_(list(states)))
                    .group_by(table.state)
                    .tuples()
                )
                for state, n in rows:
                    states[state] = n
                oldest = (
                    table.select(table.created_at)
                    .where((table.state == "queued") & (table.next_attempt_at <= now))
                    .order_by(table.created_at)
                    .first()  # a row, so the field converts the value (MIN() would come back as SQLite text)
                )
                age = max(0.0, (now - oldest.created_at).total_seconds()) if oldest is not None else 0.0
                out[queue] = (states, age)
        return out

    return read


_registered: set[str] = set()
_registered_lock = threading.Lock()


def register_queues(name: str, collector: Collector) -> None:
    """Registers a process's queue collector once (tests build several workers in one process)."""
    with _registered_lock:
        if name in _registered:
            return
        prom.REGISTRY.register(collector)
        _registered.add(name)


def serve(settings, process: str):
    """Starts the /metrics listener when FACEHARMONY_METRICS_PORT is set; returns the HTTP server (or None)."""
    if not settings.metrics_port:
        return None
    server, _thread = prom.start_http_server(settings.metrics_port, addr=settings.metrics_address)
    log.info(
        "metrics listening",
        extra={"component": process, "address": settings.metrics_address, "port": server.server_address[1]},
    )
    return server


def split_method(full_method: str) -> tuple[str, str]:
    """'/faceharmony.v1.OrderService/CreateOrder' -> ('faceharmony.v1.OrderService', 'CreateOrder')."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method
