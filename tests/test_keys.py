"""The keyring end to end, over both stacks: LocalKek + SqliteKeyStore (embedded), and CloudKmsKek + GcsKeyStore
(production) against a local server speaking Cloud KMS's gRPC protocol to Google's own client
(tests/support/fake_kms.py) and the GCS emulator.

A "backup of the key store" is what an operator's backup would hold: a copy of the SQLite file, or a copy of
the bucket's objects in another bucket; it is opened with the same KEK, as a restore would.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import time
from dataclasses import dataclass

import grpc
import pytest
from google.api_core import exceptions as gexc

from faceharmony.core.blobstore.gcs import make_client
from faceharmony.core.keys import aead
from faceharmony.core.keys.errors import CiphertextInvalid, KekMissing, KeyShredded, KeysUnavailable
from faceharmony.core.keys.factory import open_keyring
from faceharmony.core.keys.gcs_store import GcsKeyStore
from faceharmony.core.keys.kek import LocalKek
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.kms import CloudKmsKek
from faceharmony.core.keys.store import SqliteKeyStore, WrappedKey
from faceharmony.core.settings import Settings
from tests.support.fake_kms import FakeKms, kms_client
from tests.support.gcs import _free_port

pytestmark = pytest.mark.timeout(120)

WEEK = dt.timedelta(days=7)
WINDOW = dt.timedelta(days=23)
NEVER = dt.timedelta(days=10_000)


class Clock:
    """The keyring's `now`, moved by the test."""

    def __init__(self) -> None:
        self.value = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.value

    def advance(self, delta: dt.timedelta) -> None:
        self.value += delta


def key_bucket(gcs_emulator) -> str:
    return gcs_emulator.new_key_bucket()


@dataclass
class Stack:
    kind: str
    kek: object
    store: object
    clock: Clock
    backup: object  # () -> a KeyStore holding a copy of the store as it is now

    def keyring(self, store=None) -> Keyring:
        return Keyring(self.kek, store or self.store, now=self.clock)


def local_stack(tmp_path) -> Stack:
    kek = LocalKek(tmp_path / "keys" / "kek")
    store = SqliteKeyStore(tmp_path / "keys" / "keystore.sqlite3")
    copies = iter(range(1000))

    def backup():
        target = tmp_path / f"backup-{next(copies)}.sqlite3"
        shutil.copyfile(store.path, target)
        return SqliteKeyStore(target)

    return Stack("local", kek, store, Clock(), backup)


def kms_stack(fake_kms, gcs_emulator) -> Stack:
    key = fake_kms.create_key(key=f"kek-{os.urandom(4).hex()}")
    kek = CloudKmsKek(kms_client(fake_kms.address), key, timeout_seconds=5)
    store = GcsKeyStore(gcs_emulator.client(), key_bucket(gcs_emulator))

    def backup():
        target = GcsKeyStore(gcs_emulator.client(), key_bucket(gcs_emulator))
        for wrapped in store.list():  # reads every object: what a bucket backup keeps
            target.put(wrapped)
        return target

    return Stack("kms", kek, store, Clock(), backup)


@pytest.fixture(params=["local", "kms"])
def stack(request, tmp_path):
    if request.param == "local":
        return local_stack(tmp_path)
    return kms_stack(request.getfixturevalue("fake_kms"), request.getfixturevalue("gcs_emulator"))


def row_aad(row_id: str, key_id: str) -> bytes:
    return aead.field_aad("account", "email", row_id, key_id)


# -- the keyring over both stacks ----------------------------------------------------------------------------


def test_seal_open_round_trip_and_a_fresh_process_opens_it(stack):
    kr = stack.keyring()
    kr.check(create=True)
    key_id = kr.new_key()
    sealed = kr.seal_text(key_id, "ada@example.com", row_aad("r1", key_id))
    assert aead.is_sealed(sealed) and b"ada@example.com" not in sealed
    assert kr.open_text(key_id, sealed, row_aad("r1", key_id)) == "ada@example.com"
    other = Keyring(stack.kek, stack.store)  # no cache: unwraps through the KEK
    assert other.open_text(key_id, sealed, row_aad("r1", key_id)) == "ada@example.com"
    assert kr.exists(key_id) and stack.store.count() == 1


def test_a_value_moved_to_another_row_or_person_does_not_open(stack):
    kr = stack.keyring()
    kr.check(create=True)
    alice, bob = kr.new_key(), kr.new_key()
    sealed = kr.seal(alice, b"alice's name", row_aad("r1", alice))
    with pytest.raises(CiphertextInvalid):
        kr.open(alice, sealed, row_aad("r2", alice))  # another row
    with pytest.raises(CiphertextInvalid):
        kr.open(alice, sealed, aead.field_aad("account", "name", "r1", alice))  # another column
    with pytest.raises(CiphertextInvalid):
        kr.open(bob, sealed, row_aad("r1", bob))  # another person's row and key
    with pytest.raises(CiphertextInvalid):
        kr.open(alice, sealed[:-1] + bytes([sealed[-1] ^ 1]), row_aad("r1", alice))  # corrupt
    # A wrapped key swapped under another person's id does not unwrap (the wrap binds the key id).
    stolen = stack.store.get(alice)
    current = stack.store.get(bob)
    assert stack.store.replace(
        WrappedKey(bob, stolen.wrapped, stolen.kek_version, current.created), current.kek_version
    )
    kr.forget_cached()
    with pytest.raises(CiphertextInvalid):
        kr.open(bob, kr.seal(alice, b"x", row_aad("r3", bob)), row_aad("r3", bob))


def test_shred_then_open_is_key_shredded(stack):
    kr = stack.keyring()
    kr.check(create=True)
    key_id, keep = kr.new_key(), kr.new_key()
    sealed = kr.seal(key_id, b"photo bytes", aead.blob_aad("photo", "b1", key_id))
    kept = kr.seal(keep, b"other", row_aad("r1", keep))
    assert kr.shred(key_id) is True
    assert kr.shred(key_id) is False  # idempotent
    for ring in (kr, Keyring(stack.kek, stack.store)):
        with pytest.raises(KeyShredded):
            ring.open(key_id, sealed, aead.blob_aad("photo", "b1", key_id))
    assert not kr.exists(key_id)
    assert kr.open(keep, kept, row_aad("r1", keep)) == b"other"


def test_rotation_rewraps_and_destroys_old_versions_only_after_the_backup_window(stack):
    kr = stack.keyring()
    kr.check(create=True)
    (first,) = stack.kek.versions()
    alice, bob = kr.new_key(), kr.new_key()
    a_sealed = kr.seal_text(alice, "alice", row_aad("r1", alice))
    b_sealed = kr.seal_text(bob, "bob", row_aad("r2", bob))
    backup = stack.backup()  # taken before the rotation and before bob's purge
    assert {k.kek_version for k in backup.list()} == {first.name}
    assert kr.shred(bob)

    report = kr.rotate(rotation=WEEK, backup_window=WINDOW, force=True)
    second = next(v for v in stack.kek.versions() if v.primary)
    assert report.rotated_to == second.name != first.name
    assert report.rewrapped == 1 and report.destroyed == []
    assert [(k.key_id, k.kek_version) for k in stack.store.list()] == [(alice, second.name)]
    # Within the window the old version lives: a restored backup still opens what it covered.
    restored = stack.keyring(backup)
    assert restored.open_text(bob, b_sealed, row_aad("r2", bob)) == "bob"

    stack.clock.advance(WINDOW - dt.timedelta(hours=1))
    report = kr.rotate(rotation=NEVER, backup_window=WINDOW)
    assert report.rotated_to is None and report.destroyed == []
    assert {v.name for v in stack.kek.versions()} == {first.name, second.name}

    stack.clock.advance(dt.timedelta(hours=2))  # the version after `first` is older than the window now
    report = kr.rotate(rotation=NEVER, backup_window=WINDOW)
    assert report.destroyed == [first.name]
    assert [(v.name, v.primary) for v in stack.kek.versions()] == [(second.name, True)]

    # Live keys still open, through the KEK (no cache).
    kr.forget_cached()
    assert kr.open_text(alice, a_sealed, row_aad("r1", alice)) == "alice"
    assert Keyring(stack.kek, stack.store).open_text(alice, a_sealed, row_aad("r1", alice)) == "alice"
    # The backup's wrapped keys open with nothing that exists: bob's data is gone for good, and so is the
    # backup's copy of alice's key (her live key is the rewrapped one).
    restored = stack.keyring(backup)
    for key_id, sealed, aad in ((bob, b_sealed, row_aad("r2", bob)), (alice, a_sealed, row_aad("r1", alice))):
        with pytest.raises(KekMissing):
            restored.open(key_id, sealed, aad)
        old = backup.get(key_id)
        with pytest.raises(KekMissing):
            stack.kek.unwrap(old.wrapped, aead.wrap_aad(key_id), old.kek_version)
    # Idempotent: a further pass has nothing to do.
    again = kr.rotate(rotation=NEVER, backup_window=WINDOW)
    assert (again.rotated_to, again.rewrapped, again.destroyed) == (None, 0, [])


def test_a_scheduled_rotation_happens_once_per_period(stack):
    kr = stack.keyring()
    kr.check(create=True)
    kr.new_key()
    assert kr.rotate(rotation=WEEK, backup_window=WINDOW).rotated_to is None  # the primary is new
    stack.clock.advance(WEEK + dt.timedelta(minutes=1))
    report = kr.rotate(rotation=WEEK, backup_window=WINDOW)
    assert report.rotated_to is not None and report.rewrapped == 1
    assert len(stack.kek.versions()) == 2


def test_check_refuses_to_make_a_new_kek_when_keys_exist(stack):
    kr = stack.keyring()
    kr.check(create=True)
    key_id = kr.new_key()
    if stack.kind == "local":
        shutil.rmtree(stack.kek.folder)  # the KEK folder lost (or the wrong one configured)
        fresh = LocalKek(stack.kek.folder)
        with pytest.raises(KekMissing):
            Keyring(fresh, stack.store).check(create=True)
        assert not fresh.folder.exists()  # no new KEK was made over the existing keys
    else:
        wrong = CloudKmsKek(stack.kek.client, stack.kek.key_name + "-other")
        with pytest.raises(KekMissing, match="FACEHARMONY_KMS_KEY_NAME"):
            Keyring(wrong, stack.store).check(create=True)
    with pytest.raises(KekMissing):
        Keyring(fresh if stack.kind == "local" else wrong, stack.store).open(key_id, b"FHe1" + b"\0" * 40, b"")


# -- the local parts -----------------------------------------------------------------------------------------


def test_local_kek_without_a_version_is_kek_missing(tmp_path):
    kek = LocalKek(tmp_path / "kek")
    with pytest.raises(KekMissing):
        kek.ensure(create=False)
    with pytest.raises(KekMissing):
        kek.wrap(b"k" * 32, b"aad")
    kek.ensure(create=True)
    (version,) = kek.versions()
    assert version.primary and version.name == "v000001"
    assert stat.S_IMODE(os.stat(kek.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(kek.folder / "v000001.key").st_mode) == 0o600
    with pytest.raises(ValueError):
        kek.destroy("v000001")  # the primary


def test_sqlite_key_store_forgets_a_deleted_key_for_good(tmp_path):
    folder = tmp_path / "keys"
    kek, store = LocalKek(folder / "kek"), SqliteKeyStore(folder / "keystore.sqlite3")
    kr = Keyring(kek, store)
    kr.check(create=True)
    keys = [kr.new_key() for _ in range(50)]
    victim = keys[17]
    wrapped = store.get(victim).wrapped
    assert len(wrapped) >= 48

    def scan() -> list[str]:
        hits = []
        for path in folder.rglob("*"):
            if path.is_file() and (wrapped in path.read_bytes() or victim.encode() in path.read_bytes()):
                hits.append(path.name)
        return hits

    assert scan() == ["keystore.sqlite3"]
    assert kr.shred(victim)
    assert scan() == []  # while the connection is open (secure_delete zeroes the row at once)
    names = {p.name for p in folder.iterdir()}
    assert names == {"kek", "keystore.sqlite3"}  # no -wal, -shm or leftover -journal beside it
    store.check()
    store.close()
    assert scan() == []
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "keystore.sqlite3").st_mode) == 0o600
    assert store.count() == 49 and store.get(victim) is None


def test_sqlite_key_store_never_overwrites_a_key(tmp_path):
    store = SqliteKeyStore(tmp_path / "keystore.sqlite3")
    key = WrappedKey("k1", b"w" * 60, "v000001", dt.datetime.now(dt.UTC))
    store.put(key)
    with pytest.raises(FileExistsError):
        store.put(WrappedKey("k1", b"x" * 60, "v000001", key.created))
    assert store.get("k1").wrapped == b"w" * 60
    assert store.replace(WrappedKey("k1", b"y" * 60, "v000002", key.created), "v000009") is False
    assert store.replace(WrappedKey("k1", b"y" * 60, "v000002", key.created), "v000001") is True
    assert store.get("k1").kek_version == "v000002"
    assert store.delete("k1") and not store.delete("k1")
    assert store.replace(WrappedKey("k1", b"z" * 60, "v000003", key.created), "v000002") is False  # not revived


# -- Cloud KMS -----------------------------------------------------------------------------------------------


def test_kms_key_missing_or_without_a_primary_is_kek_missing(fake_kms):
    client = kms_client(fake_kms.address)
    missing = CloudKmsKek(client, "projects/fh-test/locations/global/keyRings/faceharmony/cryptoKeys/absent")
    with pytest.raises(KekMissing, match="FACEHARMONY_KMS_KEY_NAME"):
        missing.ensure(create=True)  # never created in KMS
    with pytest.raises(KekMissing):
        missing.wrap(b"k" * 32, b"aad")
    empty = CloudKmsKek(client, fake_kms.create_key(key=f"empty-{os.urandom(4).hex()}", first_version=False))
    with pytest.raises(KekMissing, match="no enabled primary"):
        empty.ensure(create=True)
    with pytest.raises(KekMissing):
        empty.wrap(b"k" * 32, b"aad")


def test_kms_wrap_names_its_version_and_enforces_the_associated_data(fake_kms):
    kek = CloudKmsKek(kms_client(fake_kms.address), fake_kms.create_key(key=f"k-{os.urandom(4).hex()}"))
    kek.ensure(create=False)
    wrapped, version = kek.wrap(b"d" * 32, b"aad-1")
    assert version == fake_kms.version_name(kek.key_name, 1) and b"d" * 32 not in wrapped
    assert kek.unwrap(wrapped, b"aad-1", version) == b"d" * 32
    with pytest.raises(CiphertextInvalid):
        kek.unwrap(wrapped, b"aad-2", version)
    with pytest.raises(CiphertextInvalid):
        kek.unwrap(wrapped[:-1] + bytes([wrapped[-1] ^ 1]), b"aad-1", version)
    with pytest.raises(KekMissing):  # a version of another key never opens here
        kek.unwrap(wrapped, b"aad-1", "projects/p/locations/l/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1")
    new = kek.rotate()
    assert new.primary and new.name == fake_kms.version_name(kek.key_name, 2)
    assert kek.wrap(b"d" * 32, b"aad-1")[1] == new.name
    assert kek.unwrap(wrapped, b"aad-1", version) == b"d" * 32  # the old version still opens what it wrapped
    with pytest.raises(ValueError):
        kek.destroy(new.name)  # the primary
    kek.destroy(version)
    kek.destroy(version)  # idempotent (KMS answers FAILED_PRECONDITION for a scheduled destruction)
    with pytest.raises(KekMissing, match="not enabled"):
        kek.unwrap(wrapped, b"aad-1", version)
    assert [v.name for v in kek.versions()] == [new.name]


def test_kms_versions_span_pages_oldest_first(fake_kms):
    kek = CloudKmsKek(kms_client(fake_kms.address), fake_kms.create_key(key=f"k-{os.urandom(4).hex()}"))
    made = [kek.rotate().name for _ in range(30)]  # the fake answers 25 versions a page
    kek.destroy(fake_kms.version_name(kek.key_name, 3))
    before = fake_kms.calls["ListCryptoKeyVersions"]
    versions = kek.versions()
    assert fake_kms.calls["ListCryptoKeyVersions"] - before == 2  # two pages
    assert len(versions) == 30 and [v.name for v in versions][-30:] == [
        v for v in [fake_kms.version_name(kek.key_name, 1), *made] if not v.endswith("/3")
    ]
    assert [v.primary for v in versions] == [False] * 29 + [True]


def test_kms_unreachable_is_keys_unavailable_within_the_deadline(fake_kms):
    key = fake_kms.create_key(key=f"k-{os.urandom(4).hex()}")
    kek = CloudKmsKek(kms_client(fake_kms.address), key, timeout_seconds=1)
    wrapped, version = kek.wrap(b"d" * 32, b"aad")
    fake_kms.fail_always = grpc.StatusCode.UNAVAILABLE
    try:
        for call in (
            lambda: kek.ensure(create=False),
            lambda: kek.unwrap(wrapped, b"aad", version),
            lambda: kek.wrap(b"d" * 32, b"aad"),
            kek.versions,
        ):
            started = time.monotonic()
            with pytest.raises(KeysUnavailable) as caught:
                call()
            assert not isinstance(caught.value, KekMissing)
            assert time.monotonic() - started < 5
    finally:
        fake_kms.fail_always = None
    fake_kms.call_errors = [grpc.StatusCode.PERMISSION_DENIED]  # KMS's answer for a key we may not use
    with pytest.raises(KeysUnavailable, match="FACEHARMONY_KMS_KEY_NAME") as caught:
        kek.wrap(b"d" * 32, b"aad")
    assert not isinstance(caught.value, KekMissing)
    # Nothing listening at all.
    with FakeKms() as gone:
        address = gone.address
    dead = CloudKmsKek(kms_client(address), key, timeout_seconds=1)
    started = time.monotonic()
    for call in (lambda: dead.ensure(create=False), lambda: dead.unwrap(wrapped, b"aad", version)):
        with pytest.raises(KeysUnavailable) as caught:
            call()
        assert not isinstance(caught.value, KekMissing)
    assert time.monotonic() - started < 10


def test_kms_integrity_fields_are_checked(fake_kms):
    """KMS checks our CRC32C of what we send (a mismatch is INVALID_ARGUMENT); we check its answer's."""
    kek = CloudKmsKek(kms_client(fake_kms.address), fake_kms.create_key(key=f"k-{os.urandom(4).hex()}"))
    with pytest.raises(gexc.InvalidArgument):
        kek.client.encrypt(request={"name": kek.key_name, "plaintext": b"abc", "plaintext_crc32c": 1234}, timeout=5)
    ok = kek.client.encrypt(request={"name": kek.key_name, "plaintext": b"abc", "plaintext_crc32c": 910901175})
    assert ok.verified_plaintext_crc32c and not ok.verified_additional_authenticated_data_crc32c


# -- the GCS key store ---------------------------------------------------------------------------------------


def test_gcs_key_store_objects_and_metadata(gcs_emulator):
    bucket = key_bucket(gcs_emulator)
    store = GcsKeyStore(gcs_emulator.client(), bucket)
    store.check()
    created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    store.put(WrappedKey("k1", b"w" * 60, "v1", created))
    blob = gcs_emulator.client().bucket(bucket).get_blob("keys/k1")
    assert blob.download_as_bytes() == b"w" * 60
    assert blob.metadata == {"kek_version": "v1", "created": created.isoformat()}
    assert store.get("k1") == WrappedKey("k1", b"w" * 60, "v1", created) and store.get("k2") is None
    assert store.replace(WrappedKey("k1", b"x" * 60, "v2", created), "v0") is False  # another version
    assert store.replace(WrappedKey("k1", b"x" * 60, "v2", dt.datetime.now(dt.UTC)), "v1") is True
    assert store.get("k1") == WrappedKey("k1", b"x" * 60, "v2", created)  # `created` kept
    store.put(WrappedKey("k0", b"z" * 60, "v2", created))
    assert [k.key_id for k in store.list()] == ["k0", "k1"] and store.count() == 2
    assert store.delete("k1") is True and store.delete("k1") is False
    assert store.replace(WrappedKey("k1", b"y" * 60, "v3", created), "v2") is False  # a shredded key stays gone
    assert store.get("k1") is None and store.count() == 1
    # The emulator ignores ifGenerationMatch (checked: a second create-only upload succeeds there), so the
    # create-only put (FileExistsError on GCS's 412) and the rewrap's generation race are not provable here.


def test_gcs_key_store_refuses_soft_delete_versioning_and_an_unreachable_bucket(gcs_emulator):
    client = gcs_emulator.client()
    soft = gcs_emulator.new_bucket()  # soft delete on: GCS's default, which the emulator mirrors
    with pytest.raises(KeysUnavailable, match="soft delete"):
        GcsKeyStore(client, soft).check()
    # The emulator keeps the `versioning` field (buckets.patch, as on GCS) without keeping noncurrent copies:
    # enough to prove the store reads it.
    versioned = key_bucket(gcs_emulator)
    bucket = client.bucket(versioned)
    bucket.reload()
    bucket.versioning_enabled = True
    bucket.patch()
    with pytest.raises(KeysUnavailable, match="versioning"):
        GcsKeyStore(client, versioned).check()
    with pytest.raises(KeysUnavailable, match="does not exist"):
        GcsKeyStore(client, "fh-no-such-bucket").check()
    dead = GcsKeyStore(make_client("p", f"http://127.0.0.1:{_free_port()}"), versioned, timeout_seconds=1)
    started = time.monotonic()
    for call in (dead.check, dead.count, lambda: dead.get("k1"), lambda: dead.delete("k1")):
        with pytest.raises(KeysUnavailable):
            call()
    with pytest.raises(KeysUnavailable):
        dead.put(WrappedKey("k1", b"w" * 60, "v1", dt.datetime.now(dt.UTC)))
    assert time.monotonic() - started < 30


def test_open_keyring_from_settings_with_kms_and_the_gcs_key_store(fake_kms, gcs_emulator, tmp_path):
    key = fake_kms.create_key(key=f"k-{os.urandom(4).hex()}")
    settings = Settings(
        data_dir=tmp_path,
        kek_provider="gcp-kms",
        kms_key_name=key,
        kms_endpoint=fake_kms.address,
        key_store="gcs",
        key_store_bucket=key_bucket(gcs_emulator),
        gcs_project="faceharmony-test",
        gcs_endpoint=gcs_emulator.endpoint,
    )
    settings.validate()
    kr = open_keyring(settings)
    assert isinstance(kr.kek, CloudKmsKek) and isinstance(kr.store, GcsKeyStore)
    kr.check(create=True)
    key_id = kr.new_key()
    sealed = kr.seal(key_id, b"hello", row_aad("r", key_id))
    assert open_keyring(settings).open(key_id, sealed, row_aad("r", key_id)) == b"hello"
    assert not (tmp_path / "keys").exists()  # nothing of the keys on the local disk


def test_an_operator_rotates_the_kek_now_and_can_destroy_the_old_versions_at_once(tmp_path, monkeypatch, capsys):
    """`faceharmony-admin rotate-kek`: a new primary and every key rewrapped, old versions kept for the backup
    window; `--destroy-now` (a suspected KEK exposure) destroys them at once, and live keys still open."""
    from faceharmony.core.keys.factory import install_keyring
    from faceharmony.core.keys.keyring import keyring as installed
    from faceharmony.core.settings import Settings
    from faceharmony.server import admin_cli

    for name in [k for k in os.environ if k.startswith("FACEHARMONY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(tmp_path / "data"))
    settings = Settings(data_dir=tmp_path / "data")
    previous = installed._keyring
    try:
        kr = install_keyring(settings)
        key_id = kr.new_key()
        sealed = kr.seal(key_id, b"personal", row_aad("r", key_id))
        backup = tmp_path / "backup.sqlite3"
        shutil.copyfile(kr.store.path, backup)
        kek_dir = settings.keys_dir / "kek"

        assert admin_cli.main(["rotate-kek"]) == 0
        assert "primary KEK version v000002; 1 data keys rewrapped" in capsys.readouterr().out
        assert sorted(p.name for p in kek_dir.iterdir()) == ["v000001.key", "v000002.key"]
        assert Keyring(LocalKek(kek_dir), SqliteKeyStore(backup)).open(key_id, sealed, row_aad("r", key_id))

        monkeypatch.setattr("faceharmony.core.keys.keyring.WRAP_GRACE", dt.timedelta(seconds=0.2))
        assert admin_cli.main(["rotate-kek", "--destroy-now"]) == 0
        out = capsys.readouterr().out
        assert "v000003" in out and "destroyed: v000001, v000002" in out
        assert sorted(p.name for p in kek_dir.iterdir()) == ["v000003.key"]
        with pytest.raises(KekMissing):
            Keyring(LocalKek(kek_dir), SqliteKeyStore(backup)).open(key_id, sealed, row_aad("r", key_id))
        fresh = Keyring(LocalKek(kek_dir), SqliteKeyStore(kr.store.path))
        assert fresh.open(key_id, sealed, row_aad("r", key_id)) == b"personal"
    finally:
        installed.initialize(previous)


def test_a_key_that_no_longer_unwraps_does_not_stop_the_rotation_of_the_others(tmp_path):
    """A wrapped key under a version that is gone (lost, or disabled in KMS) is logged and skipped: the others
    are still rewrapped, so old versions can still be destroyed on time."""
    kr = Keyring(LocalKek(tmp_path / "kek"), SqliteKeyStore(tmp_path / "ks.sqlite3"))
    kr.check()
    good = kr.new_key()
    sealed = kr.seal(good, b"personal", row_aad("r", good))
    kr.store.put(WrappedKey("f" * 32, b"\x00" * 60, "v000099", dt.datetime.now(dt.UTC)))  # its version is gone
    report = kr.rotate(rotation=dt.timedelta(days=7), backup_window=dt.timedelta(days=23), force=True)
    assert report.rotated_to == "v000002" and report.rewrapped == 1
    assert kr.store.get(good).kek_version == "v000002"
    kr.forget_cached()
    assert kr.open(good, sealed, row_aad("r", good)) == b"personal"
