"""The retention daemon's metrics in the Prometheus text format, served over HTTP (`--metrics-port`) or written to a file for node_exporter's textfile collector (`--metrics-file`)."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

PREFIX = "faceharmony_retention_"

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
    """Thread-safe counters and gauges, labelled by kind where it applies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str | None], float] = {}

    def inc(self, name: str, kind: str | None = None, value: float = 1) -> None:
        with self._lock:
            self._values[(name, kind)] = self._values.get((name, kind), 0) + value

    def set(self, name: str, value: float, kind: str | None = None) -> None:
        with self._lock:
            self._values[(name, kind)] = value

    def get(self, name: str, kind: str | None = None) -> float:
        with self._lock:
            return self._values.get((name, kind), 0)

    def total(self, name: str) -> float:
        """The sum of a metric over its labels."""
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def render(self) -> str:
        with self._lock:
            values = dict(self._values)
        lines: list[str] = []
        for name, (kind_of_metric, help_text) in HELP.items():
            series = sorted(((k, v) for (n, k), v in values.items() if n == name), key=lambda kv: kv[0] or "")
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind_of_metric}")
            for label, value in series:
                labels = f'{{kind="{label}"}}' if label is not None else ""
                lines.append(f"{PREFIX}{name}{labels} {value:g}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Atomically replaces the file (the textfile collector never reads half a file)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.render())
        os.replace(tmp, path)

    def serve(self, port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
        metrics = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = metrics.render().encode()
                self.send_response(200 if self.path in ("/", "/metrics") else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="retention-metrics", daemon=True).start()
        return server
