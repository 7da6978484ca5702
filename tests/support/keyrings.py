"""Real keyrings for tests: a local KEK and a SQLite key store in a folder of the test's own."""

from __future__ import annotations

from pathlib import Path

from faceharmony.core.keys.kek import LocalKek
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.keyring import keyring as installed_keyring
from faceharmony.core.keys.store import SqliteKeyStore


def make_keyring(folder: Path) -> Keyring:
    """A checked keyring whose KEK and key store live in `folder` (made on first use)."""
    kr = Keyring(LocalKek(Path(folder) / "kek"), SqliteKeyStore(Path(folder) / "keystore.sqlite3"))
    kr.check(create=True)
    return kr


def install_test_keyring(folder: Path) -> Keyring:
    """make_keyring(folder), made the process's (core.keys.keyring.keyring), as install_keyring does."""
    kr = make_keyring(folder)
    installed_keyring.initialize(kr)
    return kr
