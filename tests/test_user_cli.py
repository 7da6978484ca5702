"""The user CLI (`faceharmony`, clients/user_cli.py) against the real in-process server: the whole flow with its
tables, --json for scripts, bad input and the exit codes, the session file, shell completion, and Ctrl-C in the
middle of an upload of a folder (a subprocess sent SIGINT): one clear line, exit 130, and on the server exactly
the photos the CLI reported stored; a session file that holds no token, sign-out without a server, the plaintext
guard and --tls, --server checked before gRPC sees it, a watch that outlives a server restart, Ctrl-C while an
order is placed and its --request-id, errors as JSON, --all-photos' choice and download's checks before fetching."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rich.console import Console
from typer.testing import CliRunner

from faceharmony.clients import cli_tables
from faceharmony.clients.sdk import FaceHarmonyError, Verdict
from faceharmony.clients.user_cli import app, main
from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import write_transaction
from faceharmony.server.app import create_server
from faceharmony.server.logic import orders as order_logic
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
        # CliRunner turns an uncaught exception into exit 1: only SystemExit (typer.Exit, a usage error) is an exit.
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, result.exception)
        assert result.exit_code == code, (argv, result.exit_code, result.stdout, result.stderr, result.exception)
        assert "Traceback" not in result.output
        return result

    def json(self, *argv: str, code: int = 0):
        return json.loads(self("--json", *argv, code=code).stdout)


@pytest.fixture
def cli(sqlite_harness, tmp_path):
    # The server's clock at the wall clock's time: the CLI judges a photo's expiry by its own clock, as a person's does.
    sqlite_harness.clock.set(dt.datetime.now(dt.UTC))
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


def script_env(h, user, tmp_path: Path) -> dict[str, str]:
    """The environment of `faceharmony` run as a process: this harness's server, the user's session in a file."""
    session = tmp_path / "session"
    session.write_text(user.token)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")},
        "FACEHARMONY_CLIENT_SERVER": f"127.0.0.1:{h.port}",
        "FACEHARMONY_CLIENT_SESSION_FILE": str(session),
    }


def watching(h, address: str, tmp_path: Path) -> tuple[str, dict[str, str], subprocess.Popen]:
    """A new user's model that is training (25%) and stays so until the test moves it, and `faceharmony
    watch-model` following it as a process (its environment returned too)."""
    user = h.sign_up(address)
    model_id = ready_model(h, user)
    h.db_call(lambda: m.UserModel.update(state="training", progress=0.25).where(m.UserModel.id == model_id).execute())
    env = script_env(h, user, tmp_path)
    child = subprocess.Popen(
        [str(BIN / "faceharmony"), "watch-model", model_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return model_id, env, child


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
    assert "not signed in" in cli("account", code=3).stderr
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
    assert "INVALID" in cli("create-model", "Me", "a", code=1).stderr  # refused by the server (an invalid id)

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
    jws = h.app_store_transaction(transactionId="t-1", originalTransactionId="t-1", productId=products[0]["id"])
    bought = cli.json("record-purchase", "--store", "app_store", "--receipt", jws)
    assert bought["purchase"]["credits"] == products[0]["credits"]
    assert "t-1" in cli("purchases").stdout
    assert "RECEIPT_INVALID" in cli("record-purchase", "--store", "app_store", "--receipt", "forged", code=1).stderr
    assert "Invalid value" in cli("record-purchase", "--store", "bazaar", "--receipt", "t", code=2).stderr
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
    assert "not signed in" in cli("balance", code=3).stderr
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
    assert "No such command" in cli("no-such-command", code=2).stderr
    assert "Missing argument 'MODEL_ID'" in cli("order", "--style", "studio", code=2).stderr  # no model
    cli.env["FACEHARMONY_CLIENT_SERVER"] = "no such host:"
    assert "must be HOST:PORT" in cli("account", code=2).stderr
    # main(argv), as the installed script runs it: the code, not SystemExit.
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "Exit codes" in help_text and "130" in help_text and ANSI not in help_text
    assert main(["--server", "127.0.0.1:1", "styles"]) == 4


def test_shell_completion_is_produced_for_bash(monkeypatch):
    # --show-completion is for the shell the command runs in (shellingham finds it from the process tree): here
    # that is whatever started pytest (sh under make in CI), so the test says it is bash.
    import shellingham

    monkeypatch.setattr(shellingham, "detect_shell", lambda: ("bash", "/bin/bash"))
    result = CliRunner().invoke(app, ["--show-completion"], prog_name="faceharmony")
    assert result.exit_code == 0, result.output
    assert "_FACEHARMONY_COMPLETE=complete_bash" in result.stdout
    assert "complete -o default -F _faceharmony_completion faceharmony" in result.stdout
    env = {**os.environ, "_FACEHARMONY_COMPLETE": "complete_bash", "COMP_WORDS": "faceharmony upl", "COMP_CWORD": "1"}
    words = subprocess.run([str(BIN / "faceharmony")], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["upload"]


class SlowVerifier:
    """The real verifier, slower by a fixed pause; the 4th upload sets `fourth_started` and then waits for
    `release` (at most 30 s), so the test presses Ctrl-C while it is surely in flight, on a loaded machine too."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.name = inner.name
        self.calls = 0
        self.lock = threading.Lock()
        self.fourth_started, self.release = threading.Event(), threading.Event()

    def verify(self, image):
        with self.lock:
            self.calls += 1
            fourth = self.calls == 4
        if fourth:
            self.fourth_started.set()
            self.release.wait(30)
        else:
            time.sleep(self.seconds)
        return self.inner.verify(image)


@pytest.fixture
def slow_verifier():
    return SlowVerifier(shared_verifier(), 0.4)


@pytest.fixture
def slow_harness(tmp_path, slow_verifier):
    h = start_harness(tmp_path / "data", f"sqlite:///{tmp_path / 'test.sqlite3'}", verifier=slow_verifier)
    yield h
    h.stop()


@pytest.mark.processes
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_mid_upload_stops_cleanly_and_stores_what_was_reported(slow_harness, slow_verifier, tmp_path, presses):
    """Ctrl-C (SIGINT) while `faceharmony upload <folder>` runs in a pipe: exit 130, one line, no traceback, no
    colour codes. Once: the file in flight finishes, no more are sent, and the server holds exactly the photos
    reported stored. Twice: it stops at once, and the file then in flight is stored whole or not at all."""
    h = slow_harness
    user = h.sign_up("ctrl-c@example.com")
    folder = photo_folder(tmp_path / "pics", faces=10, rejects=False)
    env = script_env(h, user, tmp_path)
    child = subprocess.Popen(
        [str(BIN / "faceharmony"), "upload", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    verifier = slow_verifier
    try:
        assert verifier.fourth_started.wait(60) and child.poll() is None, "the upload did not get going"
        child.send_signal(signal.SIGINT)  # the 4th file is being verified, and stays so until released
        if presses == 2:
            time.sleep(0.5)  # two signals, never one coalesced
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=60)  # it stops at once, the 4th still in flight
            verifier.release.set()
        else:
            time.sleep(0.5)
            verifier.release.set()  # the 4th finishes, and no more are sent
            out, err = child.communicate(timeout=60)
    finally:
        verifier.release.set()
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
    model_id, _, child = watching(h, "watcher@example.com", tmp_path)
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


# --- the session file, sign-out, the channel ------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"ab\xffcd", "t\u00f6ken".encode(), b"tok\nen", b"tok en"])
def test_a_session_file_that_holds_no_token_counts_as_signed_out(cli, content):
    """Not UTF-8, not ASCII, a newline or a space inside: never sent (no gRPC header error), exit 3 with what to do;
    sign-out removes it."""
    cli.session.write_bytes(content)
    gone = cli("account", code=3)
    assert gone.stderr.count("\n") == 1 and "the session file is unreadable" in gone.stderr
    assert "sign-in" in gone.stderr and "Invalid metadata" not in gone.stderr
    error = json.loads(cli("--json", "balance", code=3).stderr)["error"]
    assert (error["code"], error["exit_code"]) == ("UNAUTHENTICATED", 3) and "unreadable" in error["message"]
    assert "on its way" in cli("request-code", "cli@example.com").stdout  # a call that needs no session still works
    assert cli("sign-out").stdout.strip() == "Signed out."
    assert not cli.session.exists()


def test_sign_out_forgets_the_session_even_when_the_server_is_away(cli):
    cli.env["FACEHARMONY_CLIENT_SERVER"] = "127.0.0.1:1"
    away = cli("sign-out", code=4)
    assert not cli.session.exists()
    assert "could not be ended on the server" in away.stderr and "cannot reach the server" in away.stderr
    assert cli("sign-out").stdout.strip() == "Signed out."  # nothing left to end: fine


def test_no_session_goes_in_plaintext_to_another_host_and_tls_is_used_when_asked(cli):
    cli.env["FACEHARMONY_CLIENT_SERVER"] = "0.0.0.0:1"  # not loopback (connecting to it fails at once)
    refused = cli("account", code=2)
    assert refused.stderr.count("\n") == 1 and "refusing to send a session" in refused.stderr
    assert "--tls" in refused.stderr and "--insecure" in refused.stderr
    assert "refusing" in cli("sign-in", "cli@example.com", "--code", "123456", code=2).stderr  # a code is a secret too
    assert "cannot reach" in cli("--insecure", "account", code=4).stderr  # sent anyway, as asked
    assert "cannot reach" in cli("--tls", "account", code=4).stderr
    # The real server on loopback speaks plaintext: over TLS, with the option or its variable, it cannot be reached.
    cli.env["FACEHARMONY_CLIENT_SERVER"] = f"127.0.0.1:{cli.h.port}"
    assert cli.json("account")["email"] == "cli@example.com"
    assert "cannot reach" in cli("--tls", "account", code=4).stderr
    cli.env["FACEHARMONY_CLIENT_TLS"] = "1"
    assert "cannot reach" in cli("account", code=4).stderr


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 (it is its own root) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextlib.contextmanager
def tls_front(upstream_port: int, cert: Path, key: Path) -> Iterator[int]:
    """TLS on a loopback port (ALPN h2), forwarded to the plaintext server, as a load balancer in front of it does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    loop = asyncio.new_event_loop()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    async def start() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)

    thread = threading.Thread(target=loop.run_forever, name="tls-front", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_tls_reaches_the_server_through_a_tls_front_that_plaintext_cannot(cli, tmp_path):
    """--tls for real: `faceharmony` as a process (trusting the test's root by gRPC's own variable) signs in
    through TLS in front of the server; the same port without --tls cannot be reached."""
    cert, key = self_signed(tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")},
        "FACEHARMONY_CLIENT_SESSION_FILE": str(cli.session),
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(cert),
    }
    with tls_front(cli.h.port, cert, key) as port:
        for host in ("localhost", "127.0.0.1"):
            done = subprocess.run(
                [str(BIN / "faceharmony"), "--tls", "--server", f"{host}:{port}", "--json", "account"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["email"] == "cli@example.com"
        plain = subprocess.run(
            [str(BIN / "faceharmony"), "--server", f"127.0.0.1:{port}", "account"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.returncode == 4 and "cannot reach" in plain.stderr, plain.stderr


def test_the_server_address_is_checked_and_grpc_never_logs_to_the_user(tmp_path):
    """As the installed script runs: an empty or malformed --server is a usage error in one line, and nothing from
    gRPC's C core (dns_resolver, a bad header) reaches stderr."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FACEHARMONY_", "GRPC_"))},
        "FACEHARMONY_CLIENT_SESSION_FILE": str(tmp_path / "session"),
    }
    (tmp_path / "session").write_text("token")

    def run(*argv: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "faceharmony"), *argv], env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    for argv, extra in ((["--server", ""], {}), ([], {"FACEHARMONY_CLIENT_SERVER": ""}), (["--server", "h:0"], {})):
        done = run(*argv, "account", **extra)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "must be HOST:PORT" in done.stderr
    done = run("--server", "[::1]:1", "account")
    assert done.returncode == 4 and done.stderr.count("\n") == 1 and "cannot reach" in done.stderr, done.stderr


# --- errors as JSON -------------------------------------------------------------------------------------------


def test_every_error_is_one_json_object_with_json(cli):
    def error(*argv: str, code: int) -> dict:
        result = cli("--json", *argv, code=code)
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        found = json.loads(result.stderr)["error"]
        assert set(found) == {"code", "reason", "message", "exit_code"} and found["exit_code"] == code
        return found

    assert error("no-such-command", code=2)["message"] == "No such command 'no-such-command'."
    assert "Missing argument" in error("order", "--style", "studio", code=2)["message"]
    assert error("--bogus", "account", code=2)["reason"] == "USAGE"
    assert error("--server", "", "account", code=2)["reason"] == "INVALID_SERVER"
    refused = error("order", "--style", "nope", ready_model(cli.h, cli.user), code=1)
    assert (refused["code"], refused["reason"]) == ("INVALID_ARGUMENT", "UNKNOWN_STYLE")
    assert error("download", "0" * 32, str(Path("/nonexistent") / "x.png"), code=1)["reason"] == "NO_SUCH_FOLDER"
    cli.env["FACEHARMONY_CLIENT_SERVER"] = "127.0.0.1:1"
    assert error("styles", code=4)["code"] == "UNAVAILABLE"


# --- uploads, models, downloads -------------------------------------------------------------------------------


def test_file_names_that_are_not_utf8_are_shown(cli, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(images.one_face())  # Latin-1, as an old camera names it
    shown = cli("upload", str(folder)).stdout
    assert "caf\ufffd.jpg" in shown and "accepted" in shown
    assert json.loads(cli("--json", "photos").stdout)["photos"]
    console = Console(width=200, record=True, file=io.StringIO())
    refused = Verdict("x", error=FaceHarmonyError(grpc.StatusCode.INVALID_ARGUMENT, "NO_FACE", "no face"))
    console.print(cli_tables.verdicts([os.fsdecode(b"x\xff.jpg")], [refused]))
    assert "x\ufffd.jpg" in console.export_text()


def insert_photos(h, user, count: int, **fields) -> list[str]:
    """Photo rows of `user` made a minute apart, newest last (the model tests need no image behind them)."""

    def insert() -> list[str]:
        made = []
        with write_transaction(h.db):
            key_id = m.Account.get_by_id(user.account_id).key_id
            for i in range(count):
                when = h.clock.now() - dt.timedelta(minutes=count - i)
                row = m.Photo.create(
                    id=ids.new_id(),
                    account=user.account_id,
                    key_id=key_id,
                    blob_id=ids.new_id(),
                    width=512,
                    height=512,
                    size_bytes=1000,
                    created_at=when,
                    expires_at=fields.get("expires_at", when + dt.timedelta(hours=72)),
                )
                made.append(row.id)
        return made

    return h.db_call(insert)


def test_all_photos_takes_the_newest_twenty_that_are_in_no_model_and_not_expired(cli):
    h = cli.h
    expired = insert_photos(h, cli.user, 2, expires_at=h.clock.now() - dt.timedelta(minutes=1))
    fresh = insert_photos(h, cli.user, 22)
    result = cli("--json", "create-model", "Many", "--all-photos")
    first = json.loads(result.stdout)
    assert set(first["photo_ids"]) == set(fresh[2:])  # the newest 20; never the expired ones
    # The two left over and the expired ones: too few usable, refused by the server with its reason.
    left = cli("create-model", "Rest", "--all-photos", code=1)
    assert "TOO_FEW_PHOTOS" in left.stderr and not set(expired) & set(first["photo_ids"])
    insert_photos(h, cli.user, 21)
    noted = cli("create-model", "Newest", "--all-photos")
    assert "23 photos are in no model" in noted.stderr and "newest 20" in noted.stderr


def test_download_checks_where_it_writes_before_it_fetches(cli, tmp_path):
    """Fetching marks a photo downloaded, so a FILE that cannot be written is refused first (not NOT_FOUND: the
    server is not asked)."""
    missing = cli("download", "0" * 32, str(tmp_path / "no-such-folder" / "a.png"), code=1)
    assert "is not a folder that exists; nothing was fetched" in missing.stderr
    (tmp_path / "a-folder").mkdir()
    assert "is a directory" in cli("preview", "0" * 32, str(tmp_path / "a-folder"), code=2).stderr
    assert "NOT_FOUND" in cli("download", "0" * 32, str(tmp_path / "a.png"), code=1).stderr
    assert not (tmp_path / "a.png").exists()


# --- watches that outlive a restart, and Ctrl-C while placing ------------------------------------------------


def restart(h, pause: float) -> None:
    """Stops the server (open watches end UNAVAILABLE), waits `pause` and starts it again on the same port."""
    h.call_in_loop(h.api.stop(0))
    time.sleep(pause)
    start_again(h)


def start_again(h) -> None:
    """A new server on the stopped one's port, database and clock."""
    settings = dataclasses.replace(h.settings, listen=f"127.0.0.1:{h.port}")

    async def boot():
        api, _ = await create_server(settings, clock=h.clock, verifier=shared_verifier())
        await api.start()
        return api

    h.api = h.call_in_loop(boot())


@pytest.mark.processes
def test_a_watch_outlives_a_server_restart_and_gives_up_plainly_at_its_timeout(sqlite_harness, tmp_path):
    h = sqlite_harness
    model_id, env, child = watching(h, "restart@example.com", tmp_path)
    try:
        time.sleep(2)  # watching
        restart(h, pause=2)  # longer than gRPC's own retries of the reopened call
        time.sleep(3)
        assert child.poll() is None, child.communicate()
        h.db_call(lambda: m.UserModel.update(state="ready", progress=1.0).where(m.UserModel.id == model_id).execute())
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    lines = err.splitlines()
    assert child.returncode == 0, lines
    assert lines[0] == "training 25%" and any(line.startswith("the watch ended (UNAVAILABLE)") for line in lines)
    assert lines[-1].startswith(f"Model {model_id} is ready")

    # Still training when --timeout runs out: exit 4, and what happened in words (not "did not answer in time").
    h.db_call(lambda: m.UserModel.update(state="training", progress=0.5).where(m.UserModel.id == model_id).execute())
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "faceharmony"), "watch-model", model_id, "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4 and time.monotonic() - started < 20, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"error: stopped following after 2 s (--timeout); model {model_id} was training 50% and goes on without "
        f"you: `faceharmony watch-model {model_id}`"
    )

    # The server away for longer than --timeout: exit 4, and that in words.
    child = subprocess.Popen(
        [str(BIN / "faceharmony"), "watch-model", model_id, "--timeout", "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        h.call_in_loop(h.api.stop(0))
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        start_again(h)
    last = err.splitlines()[-1]
    assert child.returncode == 4 and "--timeout (5 s)" in last, err
    assert last.startswith(f"error: the server at 127.0.0.1:{h.port} went away and was not back within --timeout")
    assert f"model {model_id} was training 50% and goes on without you" in last


@pytest.mark.processes
def test_ctrl_c_while_an_order_is_placed_prints_its_request_id_and_a_rerun_is_the_same_order(
    sqlite_harness, tmp_path, monkeypatch
):
    h = sqlite_harness
    user = h.sign_up("placing@example.com")
    model_id = ready_model(h, user)
    entered, release = threading.Event(), threading.Event()
    real = order_logic.create_order

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(order_logic, "create_order", held)  # the real logic, held until the test lets it go
    env = script_env(h, user, tmp_path)
    argv = [str(BIN / "faceharmony"), "order", "--style", "studio", model_id]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert entered.wait(60), "the order did not reach the server"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        release.set()
        child.kill()
    assert child.returncode == 130 and out == "", err
    (line,) = err.splitlines()
    assert "the order may have been placed: check `faceharmony orders`" in line
    request_id = re.search(r"--request-id ([0-9a-f]{32})", line).group(1)

    def placed() -> list[str]:
        return h.db_call(lambda: [o.id for o in m.Order.select().where(m.Order.account == user.account_id)])

    deadline = time.monotonic() + 30
    while not placed():  # the server went on with it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = subprocess.run(
        [argv[0], "--json", *argv[1:], "--request-id", request_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert [json.loads(again.stdout)["id"]] == placed()  # the same order, not a second one
