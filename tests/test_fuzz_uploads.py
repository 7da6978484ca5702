"""Property-based: arbitrary bytes, truncated and mutated real images, huge dimensions, empty and oversized payloads sent to UploadPhoto. Every answer is a defined status with a reason, never UNKNOWN or INTERNAL, and after every rejection the database, the blob store and the temporary folder are unchanged."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceharmony.core.db import models as m
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import status_of

REAL = images.one_face()
REAL_PNG = images.encode(images.astronaut().resize((200, 200)), "PNG")
ALLOWED = {
    grpc.StatusCode.OK: {""},
    grpc.StatusCode.INVALID_ARGUMENT: {
        "NO_FACE",
        "MULTIPLE_FACES",
        "NSFW",
        "NOT_RGB",
        "UNDECODABLE_IMAGE",
        "IMAGE_TOO_LARGE",
        "IMAGE_TOO_SMALL",
        "EMPTY_UPLOAD",
    },
}


def png_with_size(width: int, height: int) -> bytes:
    """A PNG header claiming any size, with a tiny (wrong) body: dimensions are checked before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def mutate(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data)


payloads = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda n: REAL[:n], st.integers(0, len(REAL))),
    st.builds(
        mutate,
        st.just(REAL),
        st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.integers(0, 255)), min_size=1, max_size=20),
    ),
    st.builds(
        mutate, st.just(REAL_PNG), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=8)
    ),
    st.builds(png_with_size, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.sampled_from(
        [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", images.oversized(10 * 1024 * 1024)]
    ),
)


@pytest.fixture
def fuzz_target(harness, tmp_path, monkeypatch):
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    user = harness.sign_up("fuzz@example.com")
    return harness, user, folder


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(content=payloads)
def test_upload_photo_never_fails_undefined(fuzz_target, content):
    h, user, tmp = fuzz_target
    blobs = h.settings.blob_dir / "photos"
    before = (h.db_call(m.Photo.select().count), sorted(os.listdir(blobs)) if blobs.exists() else [])
    code, reason = status_of(h.photos.UploadPhoto, p.UploadPhotoRequest(content=content), metadata=user.md)
    assert code in ALLOWED and reason in ALLOWED[code], (code, reason)
    after = (h.db_call(m.Photo.select().count), sorted(os.listdir(blobs)) if blobs.exists() else [])
    if code != grpc.StatusCode.OK:
        assert after == before
    else:
        assert after[0] == before[0] + 1 and len(after[1]) == len(before[1]) + 1
    assert os.listdir(tmp) == []
