"""The keyring: per-person data keys (DEKs), wrapped by a versioned KEK, kept in a key store; seal and open.

Every person the system knows has one data key, named by a random `key_id` that the rows of that person
carry (account, waiting-list entry, invitation, queued email, and everything an account owns). Values are
sealed with AES-256-GCM under that key (core/keys/aead.py); the key exists only

* wrapped, in the key store (core/keys/store.py), and
* unwrapped, in the memory of a process that used it in the last `cache_seconds` (a bounded LRU).

`shred(key_id)` deletes the wrapped key: from then on nothing the system holds opens what it sealed,
whatever copies of the ciphertext remain (database WAL, dead tuples, backups, soft-deleted objects).
`rotate()` makes a new KEK version when the primary is older than the rotation period, rewraps every live
key with it, and destroys each old version once it stopped being the primary longer ago than the backup
window: a wrapped key in a backup of the key store then opens with nothing that exists.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from faceharmony.core import ids
from faceharmony.core.keys import aead
from faceharmony.core.keys.errors import CiphertextInvalid, KekMissing, KeyShredded
from faceharmony.core.keys.kek import KekProvider
from faceharmony.core.keys.store import KeyStore, WrappedKey

log = logging.getLogger("faceharmony.keys")

# A version is never destroyed sooner than this after it stopped being the primary, whatever the backup window:
# a key being made by another process may have been wrapped with it just before the rotation and be stored a
# moment later (a KMS call and a key-store write, each bounded by its own timeout, well under this).
WRAP_GRACE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class RotationReport:
    rotated_to: str | None  # the new primary version, if this run made one
    rewrapped: int
    destroyed: list[str]


class Keyring:
    def __init__(
        self,
        kek: KekProvider,
        store: KeyStore,
        *,
        cache_size: int = 10_000,
        cache_seconds: float = 300.0,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.kek = kek
        self.store = store
        self.cache_size = cache_size
        self.cache_seconds = cache_seconds
        self._now = now
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[AESGCM, float]] = OrderedDict()
        self._all_wrapped_with: str | None = None  # the version every stored key was last seen wrapped with

    # -- start-up

    def check(self, create: bool = True) -> None:
        """Start-up check: the KEK and the store are usable. A fresh install (no data key yet) gets its first
        KEK version when `create`; data keys without their KEK raise KekMissing instead of a new KEK."""
        self.store.check()
        self.kek.ensure(create=create and self.store.empty())

    # -- keys

    def new_key(self) -> str:
        """Makes, wraps and stores a new data key; returns its id. Called before the rows that use it are
        committed: a key whose rows never commit is an orphan that `orphans()` finds."""
        key_id = ids.new_id()
        dek = aead.new_key()
        wrapped, version = self.kek.wrap(dek, aead.wrap_aad(key_id))
        self.store.put(WrappedKey(key_id, wrapped, version, self._now()))
        self._remember(key_id, AESGCM(dek))
        return key_id

    def _remember(self, key_id: str, cipher: AESGCM) -> None:
        with self._lock:
            self._cache[key_id] = (cipher, time.monotonic() + self.cache_seconds)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _cipher(self, key_id: str) -> AESGCM:
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None and hit[1] > time.monotonic():
                self._cache.move_to_end(key_id)
                return hit[0]
            if hit is not None:
                del self._cache[key_id]
        stored = self.store.get(key_id)
        if stored is None:
            raise KeyShredded(f"data key {key_id} does not exist (shredded)")
        cipher = AESGCM(self.kek.unwrap(stored.wrapped, aead.wrap_aad(key_id), stored.kek_version))
        self._remember(key_id, cipher)
        return cipher

    def exists(self, key_id: str) -> bool:
        return self.store.get(key_id) is not None

    def shred(self, key_id: str) -> bool:
        """Deletes the data key for good (the purge); True if it existed. Idempotent."""
        with self._lock:
            self._cache.pop(key_id, None)
        existed = self.store.delete(key_id)
        if existed:
            log.info("data key shredded", extra={"key_id": key_id})
        return existed

    def forget_cached(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- sealing

    def seal(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        return aead.seal(self._cipher(key_id), plaintext, aad)

    def open(self, key_id: str, sealed: bytes, aad: bytes) -> bytes:
        return aead.open_sealed(self._cipher(key_id), sealed, aad)

    def seal_text(self, key_id: str, text: str, aad: bytes) -> bytes:
        return self.seal(key_id, text.encode("utf-8"), aad)

    def open_text(self, key_id: str, sealed: bytes, aad: bytes) -> str:
        try:
            return self.open(key_id, sealed, aad).decode("utf-8")
        except UnicodeDecodeError:  # only text is sealed as text: what opened is not what was sealed here
            raise CiphertextInvalid("a sealed text value is not text") from None

    # -- rotation

    def rotate(
        self,
        *,
        rotation: dt.timedelta,
        backup_window: dt.timedelta,
        force: bool = False,
        now: dt.datetime | None = None,
    ) -> RotationReport:
        """One rotation pass (the retention daemon runs it every cycle; each step is idempotent):

        1. a new primary KEK version when the primary is older than `rotation` (or `force`);
        2. every wrapped key not under the primary is rewrapped with it;
        3. each older version is destroyed once the version after it was made more than `backup_window`
           ago and no wrapped key uses it any more.
        """
        now = now or self._now()
        versions = self.kek.versions()
        rotated_to = None
        primary = next((v for v in versions if v.primary), None)
        if primary is None or force or now - primary.created >= rotation:
            primary = self.kek.rotate()
            rotated_to = primary.name
            versions = self.kek.versions()
            now = max(now, primary.created)  # the new version exists from its own creation time
            log.info("KEK rotated", extra={"kek_version": primary.name})
        rewrapped = 0
        unreadable = 0
        in_use: set[str] = set()
        # New keys are always wrapped with the primary: once a pass left no key under another version, the
        # store need not be listed again until the primary changes (a restart lists it once).
        stored_keys = self.store.list() if self._all_wrapped_with != primary.name else iter(())
        for stored in stored_keys:
            if stored.kek_version == primary.name:
                continue
            try:
                dek = self.kek.unwrap(stored.wrapped, aead.wrap_aad(stored.key_id), stored.kek_version)
            except (KekMissing, CiphertextInvalid) as exc:  # lost already: the pass goes on with the others
                log.error("data key does not unwrap", extra={"key_id": stored.key_id, "reason": exc.reason})
                unreadable += 1
                continue
            wrapped, version = self.kek.wrap(dek, aead.wrap_aad(stored.key_id))
            if self.store.replace(WrappedKey(stored.key_id, wrapped, version, stored.created), stored.kek_version):
                rewrapped += 1
            else:
                in_use.add(stored.kek_version)  # changed meanwhile (shredded or rewrapped): looked at next pass
        if not in_use and not unreadable:
            self._all_wrapped_with = primary.name
        due = [
            older.name
            for older, newer in zip(versions, versions[1:], strict=False)
            if not older.primary and now - newer.created >= max(backup_window, WRAP_GRACE)
        ]
        destroyed = []
        if due:
            # A key wrapped by a process that had not yet seen the new primary could still name an old version:
            # the whole store is looked at again before any version is destroyed.
            used = {stored.kek_version for stored in self.store.list() if stored.kek_version in due}
            for name in due:
                if name in used:
                    self._all_wrapped_with = None  # rewrapped next pass, destroyed after it
                    continue
                self.kek.destroy(name)
                destroyed.append(name)
                log.info("KEK version destroyed", extra={"kek_version": name})
        return RotationReport(rotated_to, rewrapped, destroyed)


class KeyringProxy:
    """The process's keyring, set once at start-up (like peewee's DatabaseProxy): the models' sealed columns
    and the blob stores use it."""

    def __init__(self) -> None:
        self._keyring: Keyring | None = None

    def initialize(self, keyring: Keyring | None) -> None:
        self._keyring = keyring

    @property
    def obj(self) -> Keyring:
        if self._keyring is None:
            raise RuntimeError("no keyring: the process did not open one (core/keys/factory.py)")
        return self._keyring

    def __getattr__(self, name: str):
        return getattr(self.obj, name)


keyring = KeyringProxy()
