"""Every process's Prometheus series (core/metrics.py): the API server's RPCs by method and code with their
latency, upload verdicts, the job queues' depth and age, and a live /metrics listener on its configured address."""

from __future__ import annotations

import logging
import socket
import urllib.request

import grpc
import pytest
from prometheus_client import REGISTRY

from faceharmony.core import metrics
from faceharmony.core.db import models as m
from faceharmony.v1 import purchase_pb2 as pp
from tests.support.wait import wait_for

SERVICE = "faceharmony.v1.PurchaseService"


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_rpcs_are_counted_by_method_and_code_with_their_latency(harness):
    user = harness.sign_up("metrics@example.com")
    ok = dict(grpc_service=SERVICE, grpc_method="GetBalance", grpc_code="OK")
    unauthenticated = dict(ok, grpc_code="UNAUTHENTICATED")
    before = (
        value("faceharmony_grpc_server_handled_total", **ok),
        value("faceharmony_grpc_server_handled_total", **unauthenticated),
        value("faceharmony_grpc_server_handling_seconds_count", grpc_service=SERVICE, grpc_method="GetBalance"),
        value("faceharmony_grpc_server_started_total", grpc_service=SERVICE, grpc_method="GetBalance"),
    )
    harness.purchases.GetBalance(pp.GetBalanceRequest(), metadata=user.md)
    harness.purchases.GetBalance(pp.GetBalanceRequest(), metadata=user.md)
    with pytest.raises(grpc.RpcError) as refused:
        harness.purchases.GetBalance(pp.GetBalanceRequest(), metadata=(("authorization", "Bearer nope"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = lambda: (  # noqa: E731 - the server counts a call after its status went out: read until it has
        value("faceharmony_grpc_server_handled_total", **ok),
        value("faceharmony_grpc_server_handled_total", **unauthenticated),
        value("faceharmony_grpc_server_handling_seconds_count", grpc_service=SERVICE, grpc_method="GetBalance"),
        value("faceharmony_grpc_server_started_total", grpc_service=SERVICE, grpc_method="GetBalance"),
    )
    wait_for(lambda: [a - b for a, b in zip(after(), before, strict=True)] == [2, 1, 3, 3], 10, "the calls counted")
    assert [a - b for a, b in zip(after(), before, strict=True)] == [2, 1, 3, 3]


def test_upload_verdicts_are_counted(harness):
    from faceharmony.v1 import photo_pb2 as ph
    from tests.support import images

    user = harness.sign_up("verdicts@example.com")
    accepted, no_face = (
        value("faceharmony_upload_verdicts_total", verdict="accepted"),
        value("faceharmony_upload_verdicts_total", verdict="NO_FACE"),
    )
    harness.photos.UploadPhoto(ph.UploadPhotoRequest(content=images.one_face()), metadata=user.md)
    with pytest.raises(grpc.RpcError):
        harness.photos.UploadPhoto(ph.UploadPhotoRequest(content=images.no_face()), metadata=user.md)
    assert value("faceharmony_upload_verdicts_total", verdict="accepted") == accepted + 1
    assert value("faceharmony_upload_verdicts_total", verdict="NO_FACE") == no_face + 1


def test_queue_depth_and_age_come_from_the_database(harness):
    from faceharmony.core.clock import SystemClock

    read = metrics.job_queue_reader(harness.db, {"orders": m.Order, "training": m.TrainingJob}, SystemClock())
    empty = harness.db_call(read)
    assert empty["orders"] == ({"queued": 0, "running": 0}, 0.0)
    user = harness.sign_up("queues@example.com")
    from tests.support.orders import order, ready_model
    from tests.test_order_worker import copy_of

    model = ready_model(harness, user, copy_of(harness, ("x", b"not read: no worker runs"), user))
    order(harness, user, [model], count=1)
    (states, age) = harness.db_call(read)["orders"]
    assert states == {"queued": 1, "running": 0} and age >= 0.0
    collector = metrics.QueueCollector(lambda: {"training": ({"queued": 3, "running": 1}, 42.0)})
    families = {f.name: f for f in collector.collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("faceharmony_queue_depth", (("queue", "training"), ("state", "queued")))] == 3
    assert samples[("faceharmony_queue_oldest_age_seconds", (("queue", "training"),))] == 42.0

    def broken():
        raise RuntimeError("database away")

    assert [list(f.samples) for f in metrics.QueueCollector(broken).collect()] == [[], []]  # no failed scrape


def test_the_listener_serves_on_its_configured_address_only(harness, caplog):
    from dataclasses import replace

    # At INFO, as the processes log: the start line is made (its extra fields must not clash with LogRecord's).
    caplog.set_level(logging.INFO, logger="faceharmony.metrics")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert metrics.serve(replace(harness.settings, metrics_port=0), "test") is None  # unset: nothing listens
    server = metrics.serve(replace(harness.settings, metrics_port=port), "test")
    try:
        assert server.server_address[0] == "127.0.0.1"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "# TYPE faceharmony_grpc_server_handled_total counter" in text
        assert "faceharmony_grpc_server_handled_created" not in text  # no `_created` series
        (line,) = [r for r in caplog.records if r.getMessage() == "metrics listening"]
        assert line.port == port and line.component == "test"
    finally:
        server.shutdown()
        server.server_close()
