"""Opens the configured keyring: local KEK and key store in the data folder by default, Cloud KMS in production."""

from __future__ import annotations

import datetime as dt

from faceharmony.core.keys.kek import KekProvider
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.store import KeyStore
from faceharmony.core.settings import Settings


def open_keyring(settings: Settings) -> Keyring:
    kek: KekProvider
    store: KeyStore
    if settings.kek_provider == "gcp-kms":
        from faceharmony.core.keys.kms import CloudKmsKek

        kek = CloudKmsKek.from_settings(settings)
    else:
        from faceharmony.core.keys.kek import LocalKek

        kek = LocalKek(settings.keys_dir / "kek")
    if settings.key_store == "gcs":
        from faceharmony.core.keys.gcs_store import GcsKeyStore

        store = GcsKeyStore.from_settings(settings)
    else:
        from faceharmony.core.keys.store import SqliteKeyStore

        store = SqliteKeyStore(settings.keys_dir / "keystore.sqlite3")
    return Keyring(kek, store, cache_size=settings.key_cache_size, cache_seconds=settings.key_cache_seconds)


def rotation_periods(settings: Settings) -> tuple[dt.timedelta, dt.timedelta]:
    return dt.timedelta(days=settings.kek_rotation_days), dt.timedelta(days=settings.backup_window_days)


def install_keyring(settings: Settings, *, create: bool = True) -> Keyring:
    """Opens the keyring, checks it (KekMissing/KeysUnavailable when it is not usable) and makes it the
    process's (core.keys.keyring.keyring, which the sealed columns and blob stores use)."""
    from faceharmony.core.keys.keyring import keyring as proxy

    opened = open_keyring(settings)
    opened.check(create=create)
    proxy.initialize(opened)
    return opened


def check_database(keyring: Keyring, db) -> None:
    """Refuses (KekMissing) a key store that holds none of the database's data keys: the wrong keys folder
    (FACEHARMONY_DATA_DIR) or key bucket, or one lost. Without this check the start would make a new KEK and an
    empty store, and every person's data would read as shredded. Looks at up to 20 accounts not being purged
    (their keys live as long as they do): one key found is enough."""
    from faceharmony.core.db.models import Account, AccountState
    from faceharmony.core.keys.errors import KekMissing

    with db.connection_context():
        query = Account.select(Account.key_id).where(Account.state != AccountState.PURGING)
        sample: list[str] = [row[0] for row in query.order_by(Account.created_at).limit(20).tuples()]  # type: ignore[index]
    if sample and not any(keyring.exists(k) for k in sample):
        raise KekMissing(
            "the key store holds none of the database's data keys: wrong FACEHARMONY_DATA_DIR (keys/) or"
            " FACEHARMONY_KEY_STORE_BUCKET, or a lost key store; refusing to start"
        )
