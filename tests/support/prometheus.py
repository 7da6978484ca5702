"""A real Prometheus (and promtool) for the monitoring tests: the binaries `make monitoring-tools` unpacks into
.venv/prometheus/ (Debian's package), required in CI, skipped elsewhere when absent. `prometheus_running` starts
a throwaway server on a loopback port scraping the given targets every second with deploy/monitoring/alerts.yml
loaded, and answers queries through its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`: next to this interpreter's venv, else on PATH."""
    unpacked = Path(sys.prefix) / "prometheus" / "usr" / "bin" / name
    if unpacked.is_file():
        return str(unpacked)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI (make monitoring-tools)")
    pytest.skip(f"{name} is absent: make monitoring-tools")


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # a bad query answers 400 with the reason in the body
            body = json.loads(error.read())
        return body

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector; fails the test on a query Prometheus refuses."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", (expr, body.get("error"))
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The one sample's value of an instant query (None when it returns no series)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None


@contextmanager
def prometheus_running(tmp_path: Path, jobs: dict[str, list[str]], port: int) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1:port scraping `jobs` (name -> host:port targets) every second, with the alert
    rules, its data in tmp_path; stopped at the end."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus not ready within 30 s"
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
