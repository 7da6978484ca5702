"""Fixtures: a throwaway PostgreSQL cluster (started once per run when its binaries exist; required in CI), a database URL per backend, and a running API server on each backend."""

from __future__ import annotations

import os
import signal

import pytest

from faceharmony.core.db.connection import close_database, make_database
from faceharmony.core.db.migrate import migrate
from tests.support.harness import start_harness
from tests.support.postgres import PostgresCluster, find_bindir

BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config):
    """A run stopped with SIGTERM (CI's or `timeout`'s) ends as Ctrl-C does: pytest tears its fixtures down, so the
    throwaway PostgreSQL cluster, a daemon of pg_ctl's that would outlive a killed pytest, is stopped and removed."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(items):
    """Marks `postgres` every test that needs the throwaway cluster: those that ask for `pg_cluster` and every
    "postgresql" case of a backend fixture (`database_url` here, the order worker's module-scoped `h`), so that
    `-m "not postgres"` runs the SQLite cases alone and never starts the cluster."""
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and any(
            isinstance(value, str) and value == "postgresql" for value in params.params.values()
        )
        if on_postgres or "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def _session_keys(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(autouse=True)
def keyring_installed(request):
    """A process keyring for the sealed columns (core/db/sealed.py) of rows a test writes itself: a real local KEK
    and SQLite key store in a folder of the run's, installed unless one already is. A harness installs its own
    (create_server: data_dir/keys, where its trainer and order worker subprocesses find it too)."""
    from faceharmony.core.keys.kek import LocalKek
    from faceharmony.core.keys.keyring import Keyring, keyring
    from faceharmony.core.keys.store import SqliteKeyStore

    if keyring._keyring is None:
        folder = request.getfixturevalue("_session_keys")
        kr = Keyring(LocalKek(folder / "kek"), SqliteKeyStore(folder / "keystore.sqlite3"))
        kr.check(create=True)
        keyring.initialize(kr)
    return keyring


@pytest.fixture(scope="session")
def pg_cluster():
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are required in CI (apt-get install postgresql)")
        pytest.skip("PostgreSQL server binaries not installed")
    cluster = PostgresCluster(bindir).start()
    template = cluster.create_database()
    db = make_database(cluster.url(template))
    migrate(db)
    close_database(db)
    cluster.template = template
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A fresh, migrated database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = cluster.create_database(template=cluster.template)
    yield cluster.url(name)
    cluster.drop_database(name)


@pytest.fixture
def harness(database_url, tmp_path):
    h = start_harness(tmp_path / "data", database_url)
    yield h
    h.stop()


@pytest.fixture
def sqlite_harness(tmp_path):
    h = start_harness(tmp_path / "data", f"sqlite:///{tmp_path / 'test.sqlite3'}")
    yield h
    h.stop()


@pytest.fixture(scope="session")
def gcs_emulator():
    from tests.support.gcs import GcsEmulator

    emulator = GcsEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def fake_kms():
    """A local server speaking Cloud KMS's gRPC protocol (tests/support/fake_kms.py)."""
    from tests.support.fake_kms import FakeKms

    with FakeKms() as fake:
        yield fake
