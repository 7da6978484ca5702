"""The Google Cloud Storage blob store (production): objects <kind>/<id> in one private bucket, uploaded create-only (if_generation_match=0).

Each process runs under its role's service account, whose IAM grants match the
role table (docker/README.md); this class also checks the table itself. The
retention daemon (the only role granted `storage.buckets.get`) reads the
bucket's soft-delete policy with `soft_delete_seconds` at start-up: while it
is on, deleted objects stay recoverable for its retention period, so a purge
is not final until then — the store warns, and the daemon accounts for it.
It also reads the bucket's object versioning (`keeps_deleted_versions`): on a
versioned bucket a delete only makes the live object a noncurrent version,
kept until a lifecycle rule or an operator removes it, so no purge is final —
the store logs an error, and the daemon refuses to call its purges final.
What is uploaded is already sealed with the owner's data key (core/blobstore/base.py), so a soft-deleted or
noncurrent copy is ciphertext that the purge's key shred makes unreadable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]  # google-cloud-storage ships no types

from faceharmony.core.blobstore.base import BlobError, BlobInfo, BlobNotFound, BlobStore, Role
from faceharmony.core.keys.keyring import Keyring, KeyringProxy

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 30


def make_client(project: str | None = None, endpoint: str | None = None) -> storage.Client:
    """The production client (default credentials), or an anonymous one for an emulator endpoint."""
    if endpoint:
        return storage.Client(
            project=project or "faceharmony-local",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    return storage.Client(project=project)


class GcsBlobStore(BlobStore):
    backend = "gcs"

    def __init__(
        self, client: storage.Client, bucket: str, role: Role, keyring: Keyring | KeyringProxy | None = None
    ) -> None:
        super().__init__(role, keyring)
        self.client = client
        self.bucket = client.bucket(bucket)

    def soft_delete_seconds(self) -> int:
        """Seconds deleted objects stay recoverable (0 when soft delete is off); warns when on. Reads the bucket's
        metadata, which needs `storage.buckets.get`."""
        try:
            self.bucket.reload(timeout=TIMEOUT_SECONDS)
        except gexc.GoogleAPIError as exc:
            raise BlobError(f"cannot read the bucket: {type(exc).__name__}") from exc
        policy = getattr(self.bucket, "soft_delete_policy", None)
        seconds = int(getattr(policy, "retention_duration_seconds", 0) or 0)
        if seconds:
            log.warning(
                "bucket soft delete is on: purged objects stay recoverable until it expires",
                extra={"soft_delete_seconds": seconds},
            )
        return seconds

    def keeps_deleted_versions(self) -> bool:
        """True when the bucket has object versioning on: a delete leaves a noncurrent copy (logged as an error).
        Reads the bucket's metadata, which needs `storage.buckets.get`."""
        try:
            self.bucket.reload(timeout=TIMEOUT_SECONDS)
        except gexc.GoogleAPIError as exc:
            raise BlobError(f"cannot read the bucket: {type(exc).__name__}") from exc
        versioned = bool(self.bucket.versioning_enabled)
        if versioned:
            log.error(
                "bucket object versioning is on: every deleted object stays as a noncurrent version; no purge is final"
            )
        return versioned

    def _name(self, kind: str, blob_id: str) -> str:
        return f"{kind}/{blob_id}"

    def _create(self, kind: str, blob_id: str, data: bytes, content_type: str) -> None:
        blob = self.bucket.blob(self._name(kind, blob_id))
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0, timeout=TIMEOUT_SECONDS)
        except gexc.GoogleAPIError as exc:
            raise BlobError(f"GCS upload failed: {type(exc).__name__}") from exc
        except OSError as exc:
            raise BlobError(f"GCS upload failed: {type(exc).__name__}") from exc

    def _read(self, kind: str, blob_id: str) -> bytes:
        try:
            return self.bucket.blob(self._name(kind, blob_id)).download_as_bytes(timeout=TIMEOUT_SECONDS)
        except gexc.NotFound:
            raise BlobNotFound(f"{kind} blob not found") from None
        except (gexc.GoogleAPIError, OSError) as exc:
            raise BlobError(f"GCS download failed: {type(exc).__name__}") from exc

    def _read_head(self, kind: str, blob_id: str, size: int) -> bytes:
        try:
            blob = self.bucket.blob(self._name(kind, blob_id))
            return blob.download_as_bytes(start=0, end=size - 1, timeout=TIMEOUT_SECONDS)
        except gexc.NotFound:
            raise BlobNotFound(f"{kind} blob not found") from None
        except gexc.RequestRangeNotSatisfiable:
            return b""  # an empty object
        except (gexc.GoogleAPIError, OSError) as exc:
            raise BlobError(f"GCS download failed: {type(exc).__name__}") from exc

    def _delete(self, kind: str, blob_id: str) -> bool:
        try:
            self.bucket.blob(self._name(kind, blob_id)).delete(timeout=TIMEOUT_SECONDS)
            return True
        except gexc.NotFound:
            return False
        except (gexc.GoogleAPIError, OSError) as exc:
            raise BlobError(f"GCS delete failed: {type(exc).__name__}") from exc

    def _list(self, kind: str) -> Iterator[BlobInfo]:
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=f"{kind}/", timeout=TIMEOUT_SECONDS):
                blob_id = blob.name.split("/", 1)[1]
                yield BlobInfo(kind, blob_id, int(blob.size or 0), blob.time_created)
        except (gexc.GoogleAPIError, OSError) as exc:
            raise BlobError(f"GCS list failed: {type(exc).__name__}") from exc
