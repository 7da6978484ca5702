"""The key store on Google Cloud Storage (production with several machines): a bucket of its own, one object per
data key.

    keys/<key_id>    content: the wrapped key; metadata: kek_version, created (ISO 8601, UTC)

* put: create-only (`if_generation_match=0`): an existing key is never overwritten (FileExistsError).
* replace (the rewrap of a rotation): only if the object still has the generation that was read and its
  kek_version is the expected one (`if_generation_match`), so a rewrap never revives a shredded key nor undoes
  another process's rewrap.
* delete: final only on a bucket without object versioning and without soft delete (else a deleted key stays
  recoverable for the retention period, or for ever): `check()` refuses any other bucket. What a backup of the
  bucket keeps is covered by the KEK rotation, as for the local store.

Every failure to reach the bucket raises KeysUnavailable; messages name no key material. The processes using
the store need objects get/create/delete/list on the bucket and `storage.buckets.get` (for `check()`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from google.api_core import exceptions as gexc
from google.cloud import storage  # type: ignore[attr-defined]  # google-cloud-storage ships no types
from google.cloud.storage.retry import DEFAULT_RETRY

from faceharmony.core.blobstore.gcs import make_client
from faceharmony.core.keys.errors import KeysUnavailable
from faceharmony.core.keys.store import WrappedKey

PREFIX = "keys/"
CONTENT_TYPE = "application/octet-stream"


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


class GcsKeyStore:
    """KeyStore over objects `keys/<key_id>` of a dedicated bucket. Thread-safe (the storage client is)."""

    def __init__(self, client: storage.Client, bucket: str, *, timeout_seconds: float = 10.0) -> None:
        if not bucket:
            raise KeysUnavailable("no key-store bucket configured (FACEHARMONY_KEY_STORE_BUCKET)")
        self.client = client
        self.bucket_name = bucket
        self.bucket = client.bucket(bucket)
        self.timeout_seconds = float(timeout_seconds)
        # The client's own retry (transient errors, conditional writes), bounded: an unreachable bucket fails
        # within about twice the per-request timeout instead of the library's 120 s.
        self._retry = DEFAULT_RETRY.with_timeout(2 * self.timeout_seconds)

    @classmethod
    def from_settings(cls, settings) -> GcsKeyStore:
        try:
            client = make_client(settings.gcs_project or None, settings.gcs_endpoint or None)
        except Exception as exc:  # noqa: BLE001 - e.g. google.auth DefaultCredentialsError: no client at all
            raise KeysUnavailable(f"key-store bucket client could not be created ({type(exc).__name__})") from None
        return cls(client, settings.key_store_bucket)

    def _fail(self, what: str, exc: BaseException) -> KeysUnavailable:
        return KeysUnavailable(f"key store bucket {self.bucket_name}: {what} failed ({type(exc).__name__})")

    def _kw(self) -> dict:
        return {"timeout": self.timeout_seconds, "retry": self._retry}

    @staticmethod
    def _key_id(name: str) -> str:
        return name[len(PREFIX) :]

    def _decode(self, blob, wrapped: bytes) -> WrappedKey:
        meta = blob.metadata or {}
        try:
            return WrappedKey(
                self._key_id(blob.name), wrapped, meta["kek_version"], dt.datetime.fromisoformat(meta["created"])
            )
        except (KeyError, ValueError):
            raise KeysUnavailable(
                f"key store bucket {self.bucket_name}: object {blob.name} lacks its metadata"
            ) from None

    def _read(self, blob) -> bytes | None:
        """The content of the generation `blob` names; None if that generation is gone (deleted or replaced)."""
        try:
            return blob.download_as_bytes(if_generation_match=blob.generation, **self._kw())
        except (gexc.NotFound, gexc.PreconditionFailed):
            return None

    # -- KeyStore

    def put(self, key: WrappedKey) -> None:
        blob = self.bucket.blob(PREFIX + key.key_id)
        blob.metadata = {"kek_version": key.kek_version, "created": _ts(key.created)}
        try:
            blob.upload_from_string(key.wrapped, content_type=CONTENT_TYPE, if_generation_match=0, **self._kw())
        except gexc.PreconditionFailed:
            # Exists. It may be this very upload, retried after an answer that was lost: the wrapped bytes are
            # random, so equal bytes mean it is ours.
            existing = self.get(key.key_id)
            if existing is not None and existing.wrapped == key.wrapped and existing.kek_version == key.kek_version:
                return
            raise FileExistsError(key.key_id) from None
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("put", exc) from None

    def _get_with_blob(self, key_id: str):
        try:
            for _ in range(5):  # replaced between the metadata read and the download: read again
                blob = self.bucket.get_blob(PREFIX + key_id, **self._kw())
                if blob is None:
                    return None, None
                wrapped = self._read(blob)
                if wrapped is not None:
                    return self._decode(blob, wrapped), blob
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("get", exc) from None
        raise KeysUnavailable(f"key store bucket {self.bucket_name}: a key kept changing while read")

    def get(self, key_id: str) -> WrappedKey | None:
        return self._get_with_blob(key_id)[0]

    def replace(self, key: WrappedKey, expected_version: str) -> bool:
        current, blob = self._get_with_blob(key.key_id)
        if current is None or current.kek_version != expected_version:
            return False
        new = self.bucket.blob(PREFIX + key.key_id)
        new.metadata = {"kek_version": key.kek_version, "created": _ts(current.created)}
        try:
            new.upload_from_string(
                key.wrapped, content_type=CONTENT_TYPE, if_generation_match=blob.generation, **self._kw()
            )
        except gexc.PreconditionFailed:
            return False  # shredded or rewrapped meanwhile
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("replace", exc) from None
        return True

    def delete(self, key_id: str) -> bool:
        try:
            self.bucket.blob(PREFIX + key_id).delete(**self._kw())
            return True
        except gexc.NotFound:
            return False
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("delete", exc) from None

    def _blobs(self):
        return self.client.list_blobs(self.bucket, prefix=PREFIX, **self._kw())

    def list(self) -> Iterator[WrappedKey]:
        try:
            blobs = list(self._blobs())
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("list", exc) from None
        for blob in sorted(blobs, key=lambda b: b.name):
            try:
                wrapped = self._read(blob)
            except (gexc.GoogleAPIError, OSError) as exc:
                raise self._fail("list", exc) from None
            if wrapped is not None:
                yield self._decode(blob, wrapped)
                continue
            again = self.get(self._key_id(blob.name))  # changed since the listing (None: shredded)
            if again is not None:
                yield again

    def count(self) -> int:
        try:
            return sum(1 for _ in self._blobs())
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("count", exc) from None

    def empty(self) -> bool:
        try:
            return (
                next(iter(self.client.list_blobs(self.bucket, prefix=PREFIX, max_results=1, **self._kw())), None)
                is None
            )
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("listing the keys", exc) from None

    def check(self) -> None:
        """Refuses a bucket it cannot reach, one with object versioning (a delete keeps a noncurrent copy) and one
        with soft delete (a deleted key stays recoverable for the retention period)."""
        try:
            self.bucket.reload(**self._kw())
        except gexc.NotFound:
            raise KeysUnavailable(f"key store bucket {self.bucket_name} does not exist") from None
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("reading the bucket", exc) from None
        if self.bucket.versioning_enabled:
            raise KeysUnavailable(
                f"key store bucket {self.bucket_name} has object versioning on: a shredded key would stay as a"
                " noncurrent version; turn versioning off"
            )
        policy = self.bucket.soft_delete_policy
        seconds = int(getattr(policy, "retention_duration_seconds", 0) or 0)
        if seconds > 0:
            raise KeysUnavailable(
                f"key store bucket {self.bucket_name} has soft delete on ({seconds} s): a shredded key would stay"
                " recoverable; set its soft-delete retention to 0"
            )
        try:  # objects can be listed too (one page of one name, whatever the store holds)
            next(iter(self.client.list_blobs(self.bucket, prefix=PREFIX, max_results=1, **self._kw())), None)
        except (gexc.GoogleAPIError, OSError) as exc:
            raise self._fail("listing the keys", exc) from None
