"""The Google Cloud Storage emulator (gcp-storage-emulator), in-process on 127.0.0.1, with a fresh bucket per test."""

from __future__ import annotations

import socket
import uuid

from gcp_storage_emulator.server import create_server

from faceharmony.core.blobstore.gcs import make_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = create_server("127.0.0.1", self.port, in_memory=True)

    def start(self) -> GcsEmulator:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def client(self):
        return make_client("faceharmony-test", self.endpoint)

    def new_bucket(self) -> str:
        name = "fh-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(name)
        return name

    def new_key_bucket(self) -> str:
        """A fresh bucket as the key store needs it (core/keys/gcs_store.py): soft delete off (the emulator,
        like GCS, turns it on for a new bucket) and no versioning."""
        name = self.new_bucket()
        bucket = self.client().bucket(name)
        bucket.reload()
        bucket.soft_delete_policy.retention_duration_seconds = 0
        bucket.patch()
        return name
