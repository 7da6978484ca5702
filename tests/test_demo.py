"""`faceharmony-demo` (clients/demo.py, clients/samples.py): its sample photos get the verdicts it shows from the
real local verifier, its contact sheet has the layout's size, it tells how to install scikit-image when that is
missing, and, end to end, it runs against a real `faceharmony-up` (two users, models READY, both orders, a PNG and
a JSON summary) and deletes its accounts; a real Prometheus then scrapes every process of that system, with the
shipped alert rules loaded, and reads what the demo did in their series."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sqlite3
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from faceharmony.clients import demo, samples
from faceharmony.clients.sdk import Client, FaceHarmonyError
from faceharmony.core.db.models import Photo
from tests.support.system_up import system_up

BIN = os.path.dirname(sys.executable)


def test_every_sample_gets_its_verdict_from_the_local_verifier(sqlite_harness):
    h = sqlite_harness
    user = h.sign_up("samples@example.com")
    people = samples.people(7)  # every variant there is
    with Client(f"127.0.0.1:{h.port}", token=user.token) as fh:
        for person in people:
            assert len(person.accepted) == 7 and len(person.rejected) == 3
            for sample in person.samples:
                try:
                    fh.photos.upload_photo(sample.content, filename=sample.name)
                    verdict = ""
                except FaceHarmonyError as exc:
                    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT, (sample.name, exc)
                    verdict = exc.reason
                assert verdict == sample.expect, sample.name
    reasons = {s.expect for p in people for s in p.rejected}
    assert reasons == {"NO_FACE", "MULTIPLE_FACES", "UNDECODABLE_IMAGE", "NOT_RGB", "IMAGE_TOO_SMALL"}
    assert h.db_call(Photo.select().count) == 14  # only the accepted ones were stored


def test_the_default_run_uses_fewer_photos_and_refuses_too_few_for_a_model():
    eileen, cameraman = samples.people()
    assert [len(p.accepted) for p in (eileen, cameraman)] == [5, 5]
    with pytest.raises(ValueError, match="4-7"):
        samples.people(3)


def test_without_scikit_image_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now raises ImportError
    samples.astronaut.cache_clear()
    try:
        with pytest.raises(samples.SamplesUnavailable, match=r"pip install 'faceharmony\[demo\]'"):
            samples.people()
    finally:
        samples.astronaut.cache_clear()


def test_the_contact_sheet_has_the_layouts_size_and_shows_each_verdict():
    rng = np.random.default_rng(0)
    users = []
    for k, person in enumerate(samples.people(4)):
        user = demo.DemoUser(person, f"demo-{k}@faceharmony.example")
        user.uploads = [
            demo.Upload(s, 0.1, photo_id="p" if s.accepted else "", reason=s.expect) for s in person.samples
        ]
        user.model_state, user.order_state = "READY", "COMPLETED"
        user.order_start, user.order_end, user.image_times = 0.1 * k, 3.0 + k, [1.0 + k, 3.0 + k]
        for _ in range(3):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, "PNG")
            user.portraits.append(demo.Portrait("g", 64, 64, out.getvalue()))
        users.append(user)
    run = demo.Run("127.0.0.1:50051", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), users, style="studio", count=3)
    sheet = demo.draw_sheet(run)
    assert sheet.size == demo.sheet_size([7, 7], [3, 3])
    assert run.overlap() == pytest.approx(2.9)
    # The first tile of the first user has an accepted photo's green border; the refused ones are red.
    top = demo.MARGIN + demo.TITLE_H + demo.HEADING_H + demo.LABEL_H
    assert sheet.getpixel((demo.MARGIN - 2, top + 20)) == demo.GREEN
    refused_x = demo.MARGIN + 4 * (demo.THUMB + demo.GAP) - 2
    assert sheet.getpixel((refused_x, top + 20)) == demo.RED


@pytest.mark.processes
@pytest.mark.triton
def test_the_demo_runs_against_make_up_and_deletes_its_accounts(tmp_path):
    from tests.support.triton import require_triton

    require_triton()
    with system_up(tmp_path, metrics=True) as system:
        data, env, api = system.data_dir, system.env, system.api_url
        sheet, summary_path = tmp_path / "sheet.png", tmp_path / "summary.json"
        command = [os.path.join(BIN, "faceharmony-demo"), "--server", api, "--data-dir", str(data)]
        command += ["--out", str(sheet), "--json-summary", str(summary_path), "--photos", "4", "--count", "1"]
        command += ["--train-timeout", "150", "--order-timeout", "150"]
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Deleted the demo accounts" in result.stdout

        summary = json.loads(summary_path.read_text())
        assert summary_path.stat().st_mode & 0o777 == 0o600
        with Image.open(sheet) as image:
            image.load()
            assert image.format == "PNG"
            assert image.size == demo.sheet_size([7, 7], [1, 1])
            assert (summary["contact_sheet"]["width"], summary["contact_sheet"]["height"]) == image.size
        assert [len(u["uploads"]) for u in summary["users"]] == [7, 7]
        for user in summary["users"]:
            assert [u["verdict"] for u in user["uploads"]] == [u["expected"] for u in user["uploads"]]
            assert user["model"]["state"] == "READY"
            assert user["order"]["state"] == "COMPLETED"
            assert len(user["images"]) == 1 and user["images"][0]["bytes"] > 0
        assert summary["orders_overlap_seconds"] > 0
        assert summary["accounts_deleted"] is True
        assert "@" not in json.dumps(summary)  # no address in the summary
        # Both demo accounts are deleted: deactivated, their purge scheduled (the staff account stays).
        with sqlite3.connect(data / "faceharmony.sqlite3") as db:
            users = db.execute("select state, purge_after is not null from account where role = 'user'").fetchall()
        assert users == [("deactivated", 1), ("deactivated", 1)]
        _scrape_the_system_with_prometheus(system, tmp_path / "prometheus")


def _scrape_the_system_with_prometheus(system, folder):
    """Every process's /metrics scraped by a real Prometheus with deploy/monitoring/alerts.yml: every target up,
    the demo's two trainings, two images and its uploads counted, every dashboard query accepted, every rule
    healthy and no privacy alert firing."""
    from faceharmony.triton_launcher.server import free_port
    from tests.support.prometheus import prometheus_running
    from tests.support.wait import wait_for
    from tests.test_monitoring import dashboard_exprs
    from tests.test_monitoring import rules as shipped_rules

    folder.mkdir()
    jobs = {
        "faceharmony-api": [system.metrics["server"]],
        "faceharmony-trainer": [system.metrics["trainer"]],
        "faceharmony-order-worker": [system.metrics["order-worker"]],
        "faceharmony-retention": [system.metrics["retention"]],
        "faceharmony-triton": [system.metrics["triton"]],
    }
    with prometheus_running(folder, jobs, free_port()) as prom:

        def all_up() -> bool:
            targets = prom.api("targets")["data"]["activeTargets"]
            return len(targets) == len(jobs) and all(t["health"] == "up" for t in targets)

        wait_for(all_up, 60, "every process scraped")
        # The retention daemon finishes its first cycle at start-up; the series below are scraped ones.
        wait_for(lambda: prom.value("max(faceharmony_retention_last_run_timestamp_seconds)"), 60, "a cycle")
        assert prom.value('sum(faceharmony_training_jobs_total{outcome="succeeded"})') == 2
        assert prom.value('sum(faceharmony_training_job_seconds_count{outcome="succeeded"})') == 2
        assert prom.value('sum(faceharmony_images_total{outcome="made"})') == 2
        assert prom.value('sum(faceharmony_triton_requests_total{code="OK"})') >= 2
        assert prom.value("max(faceharmony_triton_replica_up)") == 1
        assert prom.value("sum(faceharmony_adapter_cache_fetches_total)") == 2  # two users' models, once each
        verdicts = {
            r["metric"]["verdict"]: float(r["value"][1]) for r in prom.query("faceharmony_upload_verdicts_total")
        }
        assert verdicts.get("accepted", 0) >= 8 and sum(verdicts.values()) == 14, verdicts  # 7 photos each
        assert prom.value('sum(faceharmony_grpc_server_handled_total{grpc_method="CreateOrder",grpc_code="OK"})') == 2
        assert prom.value('sum(faceharmony_grpc_server_handled_total{grpc_code=~"UNKNOWN|INTERNAL"})') is None
        queues = {r["metric"]["queue"] for r in prom.query("faceharmony_queue_oldest_age_seconds")}
        assert queues == {"training", "orders"}
        for expr in dashboard_exprs():  # each is a query Prometheus accepts
            prom.query(expr.replace("$__rate_interval", "1m"))
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == len(shipped_rules()) and all(r["health"] == "ok" for r in rules), [
            r for r in rules if r["health"] != "ok"
        ]
        firing = {r["name"] for r in rules if r["state"] != "inactive"}
        assert not firing & {"FaceHarmonyPurgeOverdue", "FaceHarmonyEvictionsOverdue", "FaceHarmonyRPCServerErrors"}
