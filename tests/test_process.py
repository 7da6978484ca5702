"""core/process.py, the helper every process entry runs: settings or a clear exit, a migrated database, stop signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from faceharmony.core import process
from faceharmony.core.db.connection import close_database, open_database

ENTRIES = {
    "faceharmony.server": "faceharmony-server",
    "faceharmony.trainer": "faceharmony-trainer",
    "faceharmony.order_worker": "faceharmony-order-worker",
    "faceharmony.retention": "faceharmony-retention",
    "faceharmony.triton_launcher": "faceharmony-triton",
    "faceharmony.launcher": "faceharmony-up",
}


# The processes that open the database and the keyring, each as one run would start it.
SERVING = [
    ["faceharmony.server"],
    ["faceharmony.trainer", "--once"],
    ["faceharmony.order_worker", "--once"],
    ["faceharmony.retention", "--once"],
]


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("FACEHARMONY_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.mark.processes
@pytest.mark.parametrize("module", ENTRIES)
def test_every_process_exits_2_with_its_name_on_a_bad_setting(module, env):
    prog = ENTRIES[module]
    bad = {**os.environ, "FACEHARMONY_LOG_FORMAT": "yaml"}
    run = subprocess.run([sys.executable, "-m", module], env=bad, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == f"{prog}: FACEHARMONY_LOG_FORMAT must be 'json' or 'text'"
    assert "Traceback" not in run.stderr


@pytest.mark.processes
@pytest.mark.parametrize("argv", SERVING, ids=lambda argv: argv[0])
def test_a_process_refuses_an_unmigrated_database(argv, env):
    (env / "data").mkdir(mode=0o700)
    environment = {**os.environ, "FACEHARMONY_AUTO_MIGRATE": "false", "FACEHARMONY_LISTEN": "127.0.0.1:0"}
    run = subprocess.run([sys.executable, "-m", *argv], env=environment, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().endswith(process.MIGRATE_HINT)


def test_require_migrated_applies_or_refuses(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        from faceharmony.core.settings import Settings

        # the settings name the blob store the reseal step (after the migrations) looks at: empty here
        entry = process.Entry("faceharmony-test", settings=Settings(data_dir=tmp_path / "data"))
        with pytest.raises(process.Refused) as refused:
            entry.require_migrated(db)
        assert str(refused.value) == process.MIGRATE_HINT and refused.value.code == 2
        entry.require_migrated(db, apply=True)
        entry.require_migrated(db)  # nothing pending now
    finally:
        close_database(db)


def test_run_returns_the_body_status_and_a_refusal_prints_one_line(env, capsys):
    assert process.run("faceharmony-test", lambda entry: 7, configure_logs=False) == 7
    assert process.run("faceharmony-test", lambda entry: None, configure_logs=False) == 0

    def refuse(entry):
        raise process.Refused("not today", code=3)

    assert process.run("faceharmony-test", refuse, configure_logs=False) == 3
    assert capsys.readouterr().err == "faceharmony-test: not today\n"


def test_a_stop_signal_sets_stopping_and_calls_the_callbacks_then_handlers_are_restored(env):
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body(entry: process.Entry) -> int:
        entry.on_stop(seen.append)
        os.kill(os.getpid(), signal.SIGTERM)
        assert entry.stopping.wait(5)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the entry handles it
        return 0

    assert process.run("faceharmony-test", body, configure_logs=False) == 0
    assert seen == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_before_the_callback_is_registered_is_not_lost(env):
    """A worker still starting up (importing torch, opening the database) when the launcher stops the system
    registers its callback after the signal came: it is called at once, so the worker stops instead of running on."""
    seen = []

    def body(entry: process.Entry) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        assert entry.stopping.wait(5)
        entry.on_stop(seen.append)
        return 0

    assert process.run("faceharmony-test", body, configure_logs=False) == 0
    assert seen == [signal.SIGTERM]


def test_from_another_thread_no_handler_is_installed(env):
    result = {}

    def body(entry: process.Entry) -> int:
        result["handler"] = signal.getsignal(signal.SIGTERM)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=lambda: result.setdefault("rc", process.run("t", body, configure_logs=False)))
    worker.start()
    worker.join(10)
    assert result == {"handler": before, "rc": 0}


@pytest.mark.processes
@pytest.mark.parametrize("argv", SERVING, ids=lambda argv: argv[0])
def test_a_process_refuses_to_start_without_the_kek_of_its_data_keys(argv, env):
    """Data keys exist but the KEK folder is gone (lost, or the wrong data folder mounted): every process stops
    with one line naming KEK_MISSING rather than make a new KEK that would open none of the data."""
    from faceharmony.core.keys.factory import install_keyring
    from faceharmony.core.keys.keyring import keyring
    from faceharmony.core.settings import Settings

    settings = Settings(data_dir=env / "data")
    previous = keyring._keyring
    try:
        install_keyring(settings).new_key()  # a first KEK version and one wrapped data key
    finally:
        keyring.initialize(previous)
    for version in (settings.keys_dir / "kek").iterdir():
        version.unlink()
    environment = {**os.environ, "FACEHARMONY_LISTEN": "127.0.0.1:0"}
    run = subprocess.run([sys.executable, "-m", *argv], env=environment, capture_output=True, text=True, timeout=120)
    prog = ENTRIES[argv[0]]
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().startswith(f"{prog}: KEK_MISSING: "), run.stderr
    assert "Traceback" not in run.stderr
    assert list((settings.keys_dir / "kek").iterdir()) == []  # no new KEK was made


@pytest.mark.processes
@pytest.mark.parametrize("argv", SERVING, ids=lambda argv: argv[0])
def test_a_process_refuses_a_key_store_that_is_not_its_databases(argv, env):
    """The database holds sealed data but the keys folder is another (or empty): every process stops with
    KEK_MISSING instead of starting with new keys under which every person's data would read as shredded."""
    import datetime as dt

    from faceharmony.core import ids
    from faceharmony.core.db import models as m
    from faceharmony.core.db.migrate import migrate
    from faceharmony.core.keys.factory import install_keyring
    from faceharmony.core.keys.keyring import keyring
    from faceharmony.core.settings import Settings

    settings = Settings(data_dir=env / "data")
    previous = keyring._keyring
    db = open_database(settings.resolved_database_url)
    try:
        kr = install_keyring(settings)
        migrate(db)
        now = dt.datetime.now(dt.UTC)
        m.Account.create(
            id=ids.new_id(),
            key_id=kr.new_key(),
            email="someone@example.com",
            email_hmac="a" * 64,
            name="Some One",
            is_16_or_older=True,
            created_at=now,
            updated_at=now,
        )
    finally:
        close_database(db)
        keyring.initialize(previous)
    settings.keys_dir.rename(env / "keys-of-another-install")
    environment = {**os.environ, "FACEHARMONY_LISTEN": "127.0.0.1:0"}
    run = subprocess.run([sys.executable, "-m", *argv], env=environment, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().startswith(f"{ENTRIES[argv[0]]}: KEK_MISSING: the key store holds none"), run.stderr
