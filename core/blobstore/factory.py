"""Opens the configured blob store for a role: the local folder by default, GCS when FACEHARMONY_BLOB_BACKEND=gcs."""

from __future__ import annotations

from faceharmony.core.blobstore.base import BlobStore, Role
from faceharmony.core.keys.keyring import Keyring, KeyringProxy
from faceharmony.core.settings import Settings


def open_blob_store(settings: Settings, role: Role, keyring: Keyring | KeyringProxy | None = None) -> BlobStore:
    """`keyring`: the one that seals and opens its blobs (default: the process's, core.keys.keyring.keyring)."""
    if settings.blob_backend == "gcs":
        from faceharmony.core.blobstore.gcs import GcsBlobStore, make_client

        return GcsBlobStore(
            make_client(settings.gcs_project or None, settings.gcs_endpoint or None), settings.gcs_bucket, role, keyring
        )
    from faceharmony.core.blobstore.local import LocalBlobStore

    return LocalBlobStore(settings.blob_dir, role, keyring)
