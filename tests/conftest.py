"""Fixtures: a throwaway PostgreSQL cluster (started once per run when its binaries exist; required in CI), a database URL per backend, and a running API server on each backend."""

from __future__ import annotations

import os

import pytest

from faceharmony.core.db.connection import close_database, make_database
from faceharmony.core.db.migrate import migrate
from tests.support.harness import start_harness
from tests.support.postgres import PostgresCluster, find_bindir

BACKENDS = ["sqlite", "postgresql"]


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
