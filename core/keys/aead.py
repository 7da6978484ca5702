"""The one ciphertext format of personal data: AES-256-GCM, a random 96-bit nonce, and associated data that
names where the value lives (table, column and row, or blob kind and id) and whose key sealed it.

    sealed = MAGIC (4 bytes, b"FHe1") || nonce (12) || AES-GCM ciphertext and tag (len(plaintext) + 16)

AES-GCM with random nonces stays within its safety bound (2**32 messages per key) for a per-person key many
times over. The associated data makes a value copied to another row, column, blob or person fail to open
(CiphertextInvalid) instead of reading as someone else's data.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from faceharmony.core.keys.errors import CiphertextInvalid

MAGIC = b"FHe1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
OVERHEAD = len(MAGIC) + NONCE_BYTES + TAG_BYTES


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def is_sealed(data: bytes) -> bool:
    """True for bytes in this format (a plaintext JPEG, PNG, safetensors or JSON never starts with MAGIC)."""
    return len(data) >= OVERHEAD and data[: len(MAGIC)] == MAGIC


def seal(key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + aead.encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes | AESGCM, sealed: bytes, aad: bytes) -> bytes:
    if not is_sealed(sealed):
        raise CiphertextInvalid("not a sealed value")
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    start = len(MAGIC)
    try:
        return aead.decrypt(sealed[start : start + NONCE_BYTES], sealed[start + NONCE_BYTES :], aad)
    except InvalidTag:
        raise CiphertextInvalid("the value does not open with this key and place") from None


def field_aad(table: str, column: str, row_id: str, key_id: str) -> bytes:
    """The associated data of a database column's value."""
    return f"fh1\x00row\x00{table}\x00{column}\x00{row_id}\x00{key_id}".encode()


def blob_aad(kind: str, blob_id: str, key_id: str) -> bytes:
    """The associated data of a blob's content."""
    return f"fh1\x00blob\x00{kind}\x00{blob_id}\x00{key_id}".encode()


def wrap_aad(key_id: str) -> bytes:
    """The associated data under which the KEK wraps a data key: a wrapped key cannot be swapped for another."""
    return f"fh1\x00dek\x00{key_id}".encode()


def triton_image_aad(adapter_blob_id: str, model_version_key: str, seed: int, key_id: str) -> bytes:
    """The associated data of a generated image on its way from Triton to the order worker (sealed by the model
    with the request's ADAPTER_KEY_ID): it opens only as the answer to a request with these inputs, as sent."""
    return f"fh1\x00triton-image\x00{adapter_blob_id}\x00{model_version_key}\x00{int(seed)}\x00{key_id}".encode()
