"""The retention daemon's metrics (prometheus_client), served over HTTP (`--metrics-port`, or
FACEHARMONY_METRICS_PORT) or written to a file for node_exporter's textfile collector (`--metrics-file`).

The daemon's own registry (one per Retention, so tests that build several daemons in one process read each
one's values): names and labels are the ones the dashboard and alert rules use (deploy/monitoring/)."""

from __future__ import annotations

from pathlib import Path

import prometheus_client as prom

from faceharmony.core import metrics as _core_metrics  # noqa: F401 - disables the `_created` series

PREFIX = "faceharmony_retention_"
# The series labelled by the kind of item (accounts, photos, models, ...); the others have no labels.
BY_KIND = {"purged_total", "errors_total", "overdue_items", "purges_not_final_total"}
HELP = {
    "purged_total": ("counter", "Items purged, by kind."),
    "errors_total": (
        "counter",
        "Policy runs, and single items (accounts, models, photos), that failed, by kind (retried next cycle).",
    ),
    "overdue_items": ("gauge", "Items past their deadline and not yet purged at the end of the last cycle, by kind."),
    "run_duration_seconds": ("gauge", "Duration of the last cycle."),
    "last_run_timestamp_seconds": ("gauge", "When the last cycle finished (Unix time)."),
    "soft_delete_seconds": (
        "gauge",
        "The blob bucket's soft-delete retention (0: off); purged blobs stay recoverable this long.",
    ),
    "evictions_pending": ("gauge", "Model versions not yet evicted from every Triton replica's adapter cache."),
    "evictions_overdue": (
        "gauge",
        "Of those, the ones requested more than an hour ago (logged as an error with their keys).",
    ),
    "eviction_oldest_age_seconds": (
        "gauge",
        "Age of the oldest eviction not yet confirmed by every Triton replica (0: none).",
    ),
    "bucket_versioning_enabled": (
        "gauge",
        "1 when the blob bucket has object versioning on: every deleted blob stays as a noncurrent version, so no purge is final.",
    ),
    "kek_rotations_total": ("counter", "New primary versions of the key-encryption key made by this daemon."),
    "data_keys_rewrapped_total": ("counter", "Data keys rewrapped with the primary KEK version."),
    "kek_versions_destroyed_total": (
        "counter",
        "KEK versions destroyed once replaced longer ago than the backup window: backups older than that no longer open.",
    ),
    "purges_not_final_total": (
        "counter",
        "Items purged whose blobs stay as noncurrent versions in a versioned bucket (not final), by kind.",
    ),
    "blobs_recoverable_until_timestamp_seconds": (
        "gauge",
        "Unix time until which the blobs purged so far stay recoverable in the bucket (GCS soft delete).",
    ),
}


class Metrics:
    """Counters and gauges by name (HELP's keys), labelled by kind where BY_KIND says; thread-safe (prometheus_client)."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self._series: dict[str, prom.Counter | prom.Gauge] = {}
        for name, (kind_of_metric, help_text) in HELP.items():
            labels = ["kind"] if name in BY_KIND else []
            if kind_of_metric == "counter":
                base = PREFIX + name.removesuffix("_total")
                self._series[name] = prom.Counter(base, help_text, labels, registry=self.registry)
            else:
                self._series[name] = prom.Gauge(PREFIX + name, help_text, labels, registry=self.registry)

    def _child(self, name: str, kind: str | None):
        series = self._series[name]
        if name in BY_KIND:
            if kind is None:
                raise ValueError(f"{name} is labelled by kind")
            return series.labels(kind)
        if kind is not None:
            raise ValueError(f"{name} has no kind label")
        return series

    def inc(self, name: str, kind: str | None = None, value: float = 1) -> None:
        self._child(name, kind).inc(value)  # type: ignore[union-attr]

    def set(self, name: str, value: float, kind: str | None = None) -> None:
        self._child(name, kind).set(value)  # type: ignore[union-attr]

    def get(self, name: str, kind: str | None = None) -> float:
        value = self.registry.get_sample_value(PREFIX + name, {"kind": kind} if kind is not None else {})
        return value or 0

    def total(self, name: str) -> float:
        """The sum of a metric over its labels."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == PREFIX + name
        )

    def render(self) -> str:
        return prom.generate_latest(self.registry).decode()

    def write(self, path: Path) -> None:
        """Atomically replaces the file (the textfile collector never reads half a file)."""
        prom.write_to_textfile(str(path), self.registry)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serves /metrics on HOST:PORT from a daemon thread; returns the server (its shutdown() stops it)."""
        server, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        return server
