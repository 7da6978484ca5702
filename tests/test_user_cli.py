"""The user CLI (`faceharmony`, clients/user_cli.py) against the real in-process server: the whole flow with its
tables, --json for scripts, bad input and the exit codes, the session file, shell completion, and Ctrl-C in the
middle of an upload of a folder (a subprocess sent SIGINT): one clear line, exit 130, and on the server exactly
the photos the CLI reported stored."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faceharmony.clients.user_cli import app, main
from faceharmony.core.db import models as m
from tests.support import images
from tests.support.harness import shared_verifier, start_harness
from tests.support.orders import ready_model

BIN = Path(sys.executable).parent
ANSI = "\x1b["


class Cli:
    """Runs `faceharmony ...` in this process (typer's CliRunner) as the signed-in user of the harness."""

    def __init__(self, h, user, tmp_path: Path) -> None:
        self.h, self.user = h, user
        self.session = tmp_path / "config" / "faceharmony" / "session"
        self.session.parent.mkdir(parents=True, mode=0o700)
        self.session.write_text(user.token)
        self.env = {
            "FACEHARMONY_CLIENT_SERVER": f"127.0.0.1:{h.port}",
            "FACEHARMONY_CLIENT_SESSION_FILE": str(self.session),
            "COLUMNS": "200",
        }

    def __call__(self, *argv: str, code: int = 0, input: str | io.BytesIO | None = None):
        result = CliRunner().invoke(app, list(argv), env=self.env, input=input, prog_name="faceharmony")
        assert result.exit_code == code, (argv, result.exit_code, result.stdout, result.stderr, result.exception)
        assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError | TypeError)
        return result

    def json(self, *argv: str, code: int = 0):
        return json.loads(self("--json", *argv, code=code).stdout)


@pytest.fixture
def cli(sqlite_harness, tmp_path):
    user = sqlite_harness.sign_up("cli@example.com", "Ada Lovelace")
    return Cli(sqlite_harness, user, tmp_path)


def photo_folder(folder: Path, faces: int, rejects: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(faces):
        (folder / f"face{i:02d}.jpg").write_bytes(images.one_face())
    if rejects:
        (folder / "cat.jpg").write_bytes(images.cat())
        (folder / "group.jpg").write_bytes(images.two_faces())
        (folder / "notes.png").write_bytes(b"shopping list, not a photo")
        (folder / "readme.txt").write_text("not an image by extension: never sent")
    return folder


def stored_photo_ids(h) -> set[str]:
    return set(h.db_call(lambda: [p.id for p in m.Photo.select()]))


class OutboxCode(io.RawIOBase):
    """stdin for a prompt: the sign-in code, read from the outbox when the prompt asks (after the CLI requested it)."""

    def __init__(self, h, address: str) -> None:
        self.h, self.address, self.data = h, address, b""
        self.read_yet = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.read_yet:
            body = self.h.last_email_to(self.address, "sign-in code").get_content()
            self.data = re.search(r"code is: (\d{6})", body).group(1).encode() + b"\n"
            self.read_yet = True
        n = min(len(buffer), len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


def test_sign_in_asks_for_the_emailed_code_and_keeps_the_session_private(cli, tmp_path, monkeypatch, capsys):
    h = cli.h
    cli.session.unlink()
    cli("account", code=3)
    nested = tmp_path / "fresh" / "faceharmony" / "session"
    cli.env["FACEHARMONY_CLIENT_SESSION_FILE"] = str(nested)
    # main(argv) as the installed script runs it, with a person at the prompt who reads the email.
    for name, value in cli.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(OutboxCode(h, "cli@example.com"))))
    assert main(["sign-in", "cli@example.com"]) == 0
    out, err = capsys.readouterr()
    assert "Code:" in err and "cli@example.com" in out  # the prompt, then the account table
    assert oct(nested.stat().st_mode & 0o777) == "0o600"
    assert oct(nested.parent.stat().st_mode & 0o777) == "0o700"
    assert cli.json("account")["email"] == "cli@example.com"
    # For scripts: the code requested first, then given as an option; a wrong one is refused with its reason.
    cli("request-code", "cli@example.com")
    wrong = cli("sign-in", "cli@example.com", "--code", "000000", code=1)
    assert "INVALID_CODE" in wrong.stderr
    # A closed stdin is not a hang or a traceback: the question cannot be answered.
    assert "give it as an option" in cli("sign-in", "cli@example.com", input="", code=2).stderr
    cli("sign-out")
    assert not nested.exists()
    gone = cli("account", code=3)
    assert "not signed in" in gone.stderr and "faceharmony sign-in" in gone.stderr
    (tmp_path / "me.jpg").write_bytes(images.one_face())
    refused = cli("upload", str(tmp_path / "me.jpg"), code=3)
    assert refused.stdout == "" and refused.stderr.count("\n") == 1 and "sign-in" in refused.stderr


def test_upload_a_folder_shows_each_verdict_and_exits_5_when_some_were_refused(cli, tmp_path):
    folder = photo_folder(tmp_path / "pics", faces=4)
    result = cli("upload", str(folder), code=5)
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if str(folder) in line}
    assert len(rows) == 7 and not any("readme.txt" in name for name in rows)  # images by extension only
    assert "refused" in rows[str(folder / "cat.jpg")] and "(NO_FACE)" in rows[str(folder / "cat.jpg")]
    assert "no human face" in rows[str(folder / "cat.jpg")]
    assert "(MULTIPLE_FACES)" in rows[str(folder / "group.jpg")]
    assert "(UNDECODABLE_IMAGE)" in rows[str(folder / "notes.png")]
    accepted = {re.search(r"accepted\s+([0-9a-f]{32})", row).group(1) for row in rows.values() if "accepted" in row}
    assert len(accepted) == 4 and accepted == stored_photo_ids(cli.h)
    assert "4 of 7 uploaded, 3 refused" in result.stderr

    # --json: the same verdicts for a script; photos lists exactly the stored ones.
    again = cli.json("upload", str(folder / "face00.jpg"), str(folder / "cat.jpg"), code=5)
    assert [(v["file"], v["accepted"]) for v in again["verdicts"]] == [
        (str(folder / "face00.jpg"), True),
        (str(folder / "cat.jpg"), False),
    ]
    assert again["verdicts"][1] | {"message": ""} == {
        "file": str(folder / "cat.jpg"),
        "accepted": False,
        "reason": "NO_FACE",
        "code": "INVALID_ARGUMENT",
        "message": "",
    }
    listed = {p["id"] for p in cli.json("photos")["photos"]}
    assert listed == accepted | {again["verdicts"][0]["photo"]["id"]}
    photos_table = cli("photos").stdout
    assert all(pid in photos_table for pid in listed)
    one = sorted(listed)[0]
    cli("delete-photo", one)
    assert one not in {p["id"] for p in cli.json("photos")["photos"]}

    # Nothing to send is a usage error, before any call.
    missing = cli("upload", str(tmp_path / "nope.jpg"), code=2)
    assert "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    assert "no .jpg" in cli("upload", str(tmp_path / "empty"), code=2).stderr
    assert cli("upload", str(folder / "face01.jpg")).exit_code == 0  # all accepted: 0


def test_create_model_follows_training_with_a_bar_then_models_and_orders(cli, tmp_path):
    h = cli.h
    cli("upload", str(photo_folder(tmp_path / "pics", faces=4, rejects=False)))
    both = cli("create-model", "Me", "--all-photos", "some-id", code=2)
    assert "not both" in both.stderr
    cli("create-model", "Me", "a", code=1)  # refused by the server (an invalid id)

    def train() -> None:
        """Plays the trainer: the new model goes to 50%, then READY (the watch polls the row)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = h.db_call(lambda: [r.id for r in m.UserModel.select().where(m.UserModel.state == "queued")])
            if rows:
                break
            time.sleep(0.05)
        for state, progress in (("training", 0.5), ("ready", 1.0)):
            time.sleep(0.7)
            h.db_call(
                lambda s=state, p=progress: (
                    m.UserModel.update(state=s, progress=p, current_version=1).where(m.UserModel.id.in_(rows)).execute()
                )
            )

    trainer = threading.Thread(target=train)
    trainer.start()
    lines = cli("--json", "create-model", "Me", "--all-photos", "--watch").stdout.splitlines()
    trainer.join()
    events = [json.loads(line) for line in lines]
    created, updates = events[0], events[1:]
    assert created["state"] == "MODEL_STATE_QUEUED" and len(created["photo_ids"]) == 4
    assert [e["state"] for e in updates][-1] == "MODEL_STATE_READY"
    assert any(e["progress"] == 0.5 for e in updates)
    watched = cli("watch-model", created["id"])  # already ready: the outcome at once
    assert f"Model {created['id']} is ready" in watched.stderr
    table = cli("models").stdout
    assert created["id"] in table and "ready" in table
    assert cli.json("delete-model", created["id"])["state"] == "MODEL_STATE_PENDING_DELETION"
    assert created["id"] not in {m["id"] for m in cli.json("models")["models"]}

    # Training that failed: exit 1 with the reason.
    broken = ready_model(h, cli.user)
    h.db_call(
        lambda: (
            m.UserModel.update(state="failed", failure_reason="TRAINING_DIVERGED")
            .where(m.UserModel.id == broken)
            .execute()
        )
    )
    failed = cli("watch-model", broken, code=1)
    assert failed.stderr.strip().endswith(f"error: model {broken} ended 'failed': TRAINING_DIVERGED")

    # Orders: styles, an order of a ready model, its listing; generated photos (none yet) and a bad style.
    assert "oil_painting" in cli("styles").stdout
    model = ready_model(h, cli.user)
    placed = cli.json("order", "--style", "studio", "--count", "2", model)
    assert (placed["state"], placed["images_total"]) == ("ORDER_STATE_QUEUED", 2)
    assert placed["id"] in cli("orders").stdout
    assert "No generated photos yet" in cli("generated", "--order", placed["id"]).stdout
    refused = cli("order", "--style", "nope", model, code=1)
    assert "UNKNOWN_STYLE" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(cli("--json", "order", "--style", "nope", model, code=1).stderr)["error"]["reason"] == (
        "UNKNOWN_STYLE"
    )
    assert "NOT_FOUND" in cli("reject", "0" * 32, code=1).stderr
    # preview/download refuse to overwrite a file without --force, before asking the server.
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"mine")
    assert "--force" in cli("download", "0" * 32, str(kept), code=1).stderr
    assert kept.read_bytes() == b"mine"
    assert "NOT_FOUND" in cli("download", "0" * 32, str(kept), "--force", code=1).stderr
    assert kept.read_bytes() == b"mine"


def test_account_purchases_support_and_deletion(cli):
    h = cli.h
    assert "Ada Lovelace" in cli("account").stdout
    assert cli.json("update-name", "Ada King")["name"] == "Ada King"
    balance = cli.json("balance")
    assert balance["free_trial_granted"] is True and balance["credits"] > 0
    assert "credits" in cli("balance").stdout
    products = cli.json("products")["products"]
    assert products
    bought = cli.json("record-purchase", "--store", "app_store", "--product", products[0]["id"], "--transaction", "t-1")
    assert bought["purchase"]["credits"] == products[0]["credits"]
    assert "t-1" in cli("purchases").stdout
    assert (
        "Invalid value"
        in cli("record-purchase", "--store", "bazaar", "--product", "x", "--transaction", "t", code=2).stderr
    )
    ticket = cli.json("ticket", "Hello", "Where is my portrait?")
    assert ticket["id"] in cli("tickets").stdout
    assert "Where is my portrait?" in cli("show-ticket", ticket["id"]).stdout
    cli("invite", "friend@example.com", "Friend")

    # delete-account asks for the email; a wrong one deletes nothing.
    wrong = cli("delete-account", input="someone@example.com\n", code=1)
    assert "EMAIL_MISMATCH" in wrong.stderr
    assert cli.json("account")["state"] == "ACCOUNT_STATE_ACTIVE"
    done = cli("delete-account", input="cli@example.com\n")
    assert "Type your email" in done.stderr and "faceharmony reactivate" in done.stdout
    assert not cli.session.exists()  # the server revoked every session
    cli("balance", code=3)
    # Signed in again, a deactivated account can only reactivate (or sign out).
    cli("sign-in", "cli@example.com", "--code", h.code_for("cli@example.com"))
    deactivated = cli("balance", code=1)
    assert "ACCOUNT_DEACTIVATED" in deactivated.stderr and "faceharmony reactivate" in deactivated.stderr
    assert cli.json("reactivate")["state"] == "ACCOUNT_STATE_ACTIVE"
    assert cli.json("delete-account", "--confirm-email", "cli@example.com")["state"] == "ACCOUNT_STATE_DEACTIVATED"
    cli("sign-in", "cli@example.com", "--code", h.code_for("cli@example.com"))
    cli("reactivate")

    # An expired session: exit 3 and what to do.
    h.clock.advance(dt.timedelta(seconds=h.settings.session_ttl_seconds + 1))
    expired = cli("account", code=3)
    assert "SESSION_EXPIRED" in expired.stderr and "faceharmony sign-in" in expired.stderr


def test_exit_codes_for_an_unreachable_server_and_usage(cli, capsys):
    cli.env["FACEHARMONY_CLIENT_SERVER"] = "127.0.0.1:1"
    away = cli("styles", code=4)
    assert "cannot reach the server at 127.0.0.1:1" in away.stderr
    assert "Traceback" not in away.stderr
    cli.env["FACEHARMONY_CLIENT_SERVER"] = "no such host:"
    assert "cannot reach" in cli("account", code=4).stderr
    cli("no-such-command", code=2)
    cli("order", "--style", "studio", code=2)  # no model
    # main(argv), as the installed script runs it: the code, not SystemExit.
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "Exit codes" in help_text and "130" in help_text and ANSI not in help_text
    assert main(["--server", "127.0.0.1:1", "styles"]) == 4


def test_shell_completion_is_produced_for_bash():
    result = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="faceharmony")
    assert result.exit_code == 0
    assert "_FACEHARMONY_COMPLETE=complete_bash" in result.stdout
    assert "complete -o default -F _faceharmony_completion faceharmony" in result.stdout
    env = {**os.environ, "_FACEHARMONY_COMPLETE": "complete_bash", "COMP_WORDS": "faceharmony upl", "COMP_CWORD": "1"}
    words = subprocess.run([str(BIN / "faceharmony")], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["upload"]


class SlowVerifier:
    """The real verifier, slower by a fixed pause: each upload stays in flight long enough to press Ctrl-C in it."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.name = inner.name

    def verify(self, image):
        time.sleep(self.seconds)
        return self.inner.verify(image)


@pytest.fixture
def slow_harness(tmp_path):
    h = start_harness(
        tmp_path / "data", f"sqlite:///{tmp_path / 'test.sqlite3'}", verifier=SlowVerifier(shared_verifier(), 0.4)
    )
    yield h
    h.stop()


@pytest.mark.processes
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_mid_upload_stops_cleanly_and_stores_what_was_reported(slow_harness, tmp_path, presses):
    """Ctrl-C (SIGINT) while `faceharmony upload <folder>` runs in a pipe: exit 130, one line, no traceback, no
    colour codes. Once: the file in flight finishes, no more are sent, and the server holds exactly the photos
    reported stored. Twice: it stops at once, and the file then in flight is stored whole or not at all."""
    h = slow_harness
    user = h.sign_up("ctrl-c@example.com")
    session = tmp_path / "session"
    session.write_text(user.token)
    folder = photo_folder(tmp_path / "pics", faces=10, rejects=False)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")},
        "FACEHARMONY_CLIENT_SERVER": f"127.0.0.1:{h.port}",
        "FACEHARMONY_CLIENT_SESSION_FILE": str(session),
    }
    child = subprocess.Popen(
        [str(BIN / "faceharmony"), "upload", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(stored_photo_ids(h)) < 3:
            assert child.poll() is None and time.monotonic() < deadline, "the upload did not get going"
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)  # the 4th file is being verified (0.4 s)
        if presses == 2:
            time.sleep(0.15)
            child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err and ANSI not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    reported = set(re.findall(r"accepted\s+([0-9a-f]{32})", out))
    stored = stored_photo_ids(h)
    if presses == 1:
        assert lines[0] == f"interrupted: {len(reported)} of 10 uploaded; the other {10 - len(reported)} were not sent"
        assert 4 <= len(reported) < 10  # the file in flight was finished
        assert stored == reported
    else:
        assert lines[0].startswith(f"interrupted: {len(reported)} of 10 uploaded; ")
        assert "face03.jpg was cut off in flight" in lines[0], lines
        assert len(reported) == 3
        time.sleep(1)  # the server finishes (or drops) the photo it was verifying
        assert reported <= stored_photo_ids(h) and len(stored_photo_ids(h) - reported) <= 1


@pytest.mark.processes
def test_ctrl_c_while_watching_ends_at_once_with_one_line(sqlite_harness, tmp_path):
    h = sqlite_harness
    user = h.sign_up("watcher@example.com")
    model_id = ready_model(h, user)
    h.db_call(lambda: m.UserModel.update(state="training", progress=0.25).where(m.UserModel.id == model_id).execute())
    session = tmp_path / "session"
    session.write_text(user.token)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")},
        "FACEHARMONY_CLIENT_SERVER": f"127.0.0.1:{h.port}",
        "FACEHARMONY_CLIENT_SESSION_FILE": str(session),
    }
    child = subprocess.Popen(
        [str(BIN / "faceharmony"), "watch-model", model_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # started, and waiting for news that does not come
        assert child.poll() is None
        pressed = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert time.monotonic() - pressed < 2
    assert child.returncode == 130, (out, err)
    assert err.splitlines() == ["training 25%", "interrupted"]
