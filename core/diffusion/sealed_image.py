"""A generated image as it leaves Triton: raw RGB pixels sealed with a data key, never plain.

Triton's Python backend passes every response through POSIX shared memory (/dev/shm, triton_launcher/shm.py)
and then over gRPC; the model (triton_models/faceharmony_diffusion) therefore answers IMAGE_SEALED, one
`seal_image` per row, and the order worker turns it back into the same uint8 array with `open_image`.

    plaintext = MAGIC (4 bytes, b"FHi1") || height (uint32 BE) || width (uint32 BE) || pixels (height*width*3)
    sealed    = keyring.seal(key_id, plaintext, aad)      (core/keys/aead.py; aad: triton_image_aad(...))

Only numpy and the keyring are needed here (no torch): the order worker imports it.
"""

from __future__ import annotations

import struct

import numpy as np

from faceharmony.core.keys.errors import CiphertextInvalid

MAGIC = b"FHi1"
_HEADER = struct.Struct(">4sII")


def pack_image(pixels: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> the plaintext above."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"an RGB image is [H, W, 3], not {list(pixels.shape)}")
    height, width, _ = pixels.shape
    return _HEADER.pack(MAGIC, height, width) + pixels.tobytes()


def unpack_image(data: bytes) -> np.ndarray:
    """The plaintext above -> a writable [H, W, 3] uint8 array; anything else is CiphertextInvalid."""
    if len(data) < _HEADER.size:
        raise CiphertextInvalid("an opened image is too short")
    magic, height, width = _HEADER.unpack_from(data)
    if magic != MAGIC or len(data) != _HEADER.size + height * width * 3:
        raise CiphertextInvalid("an opened image is not in the image format")
    return np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size).reshape(height, width, 3).copy()


def seal_image(keyring, key_id: str, pixels: np.ndarray, aad: bytes) -> bytes:
    return keyring.seal(key_id, pack_image(pixels), aad)


def open_image(keyring, key_id: str, sealed: bytes, aad: bytes) -> np.ndarray:
    """Raises KeyShredded, KeysUnavailable, or CiphertextInvalid (another key, another request, not an image)."""
    return unpack_image(keyring.open(key_id, sealed, aad))
