"""Key-encryption keys (KEKs) with versions: they wrap the per-person data keys and never leave their provider.

Two providers with one contract:

* `LocalKek`: the embedded default, versions as files `<folder>/v<NNNNNN>.key` (32 random bytes, 0600 in a
  0700 folder). The newest enabled version is the primary. Destroying a version unlinks its file.
* `CloudKmsKek` (core/keys/kms.py): a Cloud KMS symmetric CryptoKey; its versions are KMS's.

A wrapped key names the version that wrapped it (`KekVersion.name`), so rotation knows which wrapped keys
still need a rewrap and when a version no live key uses may be destroyed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from faceharmony.core.datadir import private_dir
from faceharmony.core.keys import aead
from faceharmony.core.keys.errors import CiphertextInvalid, KekMissing, KeysUnavailable


@dataclass(frozen=True)
class KekVersion:
    name: str  # the provider's name of the version ("v000001", or KMS's full resource name)
    created: dt.datetime
    primary: bool


class KekProvider(Protocol):
    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[bytes, str]:
        """(ciphertext, the name of the version that wrapped it), with the primary version."""
        ...

    def unwrap(self, ciphertext: bytes, aad: bytes, version: str) -> bytes:
        """The plaintext; CiphertextInvalid if it does not open, KekMissing if `version` was destroyed."""
        ...

    def versions(self) -> list[KekVersion]:
        """The enabled versions, oldest first; exactly one is primary."""
        ...

    def rotate(self) -> KekVersion:
        """Makes a new primary version."""
        ...

    def destroy(self, version: str) -> None:
        """Destroys a version that is not the primary, for good."""
        ...

    def ensure(self, create: bool) -> None:
        """Checks the provider is usable; `create`: make a first version when there is none (a fresh install)."""
        ...


_VERSION_FILE = re.compile(r"^v(\d{6})\.key$")


class LocalKek:
    """KEK versions as files in a private folder of the data folder (the embedded default)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}

    def _files(self) -> list[tuple[int, Path]]:
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeysUnavailable(f"local KEK folder unreadable: {exc.strerror}") from None
        found = []
        for entry in entries:
            m = _VERSION_FILE.fullmatch(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path)))
        return sorted(found)

    def _key(self, version: str) -> bytes:
        key = self._cache.get(version)
        if key is not None:
            return key
        if not re.fullmatch(r"v\d{6}", version):
            raise KekMissing(f"no local KEK version {version!r}")
        try:
            key = (self.folder / f"{version}.key").read_bytes()
        except FileNotFoundError:
            raise KekMissing(f"local KEK version {version} is missing (destroyed, or the wrong KEK folder)") from None
        except OSError as exc:
            raise KeysUnavailable(f"local KEK version {version} unreadable: {exc.strerror}") from None
        if len(key) != aead.KEY_BYTES:
            raise KekMissing(f"local KEK version {version} is not a key")
        self._cache[version] = key
        return key

    def _primary(self) -> str:
        files = self._files()
        if not files:
            raise KekMissing(f"no local KEK in {self.folder}")
        return f"v{files[-1][0]:06d}"

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[bytes, str]:
        version = self._primary()
        return aead.seal(self._key(version), plaintext, aad), version

    def unwrap(self, ciphertext: bytes, aad: bytes, version: str) -> bytes:
        try:
            return aead.open_sealed(self._key(version), ciphertext, aad)
        except CiphertextInvalid:
            raise CiphertextInvalid("a wrapped data key does not open with its KEK version") from None

    def versions(self) -> list[KekVersion]:
        files = self._files()
        out = []
        for i, (n, path) in enumerate(files):
            created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            out.append(KekVersion(f"v{n:06d}", created, primary=i == len(files) - 1))
        return out

    def _write(self, number: int) -> KekVersion:
        private_dir(self.folder)
        path = self.folder / f"v{number:06d}.key"
        tmp = self.folder / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(aead.new_key())
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)  # never overwrites a version another process made first
        finally:
            tmp.unlink(missing_ok=True)
        return KekVersion(path.stem, dt.datetime.now(dt.UTC), primary=True)

    def rotate(self) -> KekVersion:
        with self._lock:
            files = self._files()
            number = files[-1][0] + 1 if files else 1
            try:
                return self._write(number)
            except FileExistsError:  # another process rotated at the same moment: its version is the primary
                return self.versions()[-1]

    def destroy(self, version: str) -> None:
        with self._lock:
            if version == self._primary():
                raise ValueError("the primary KEK version cannot be destroyed")
            self._cache.pop(version, None)
            path = self.folder / f"{version}.key"
            try:
                # Overwritten before the unlink: a copy-on-write or journaling file system may keep the old
                # blocks, but nothing the system keeps names them any more.
                with open(path, "r+b") as fh:
                    fh.write(b"\x00" * aead.KEY_BYTES)
                    fh.flush()
                    os.fsync(fh.fileno())
                path.unlink()
            except FileNotFoundError:
                pass

    def ensure(self, create: bool) -> None:
        if self._files():
            self._key(self._primary())
            return
        if not create:
            raise KekMissing(f"no local KEK in {self.folder}, and the key store holds data keys")
        with self._lock:
            if not self._files():
                try:
                    self._write(1)
                except FileExistsError:
                    pass
