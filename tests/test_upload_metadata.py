"""The stored photo, and what Cloud Vision receives, is made from the pixels alone (P6, P9): no container field of the upload survives.

Each case writes an upload in an accepted format (JPEG, PNG, WebP) with a
unique marker string in one container field Pillow can write (comments,
EXIF with GPS, XMP, IPTC, ICC, DPI, PNG tEXt/zTXt/iTXt/eXIf/private chunks,
WebP EXIF/XMP/ICC, extra JPEG segments, an MPO's second picture, bytes after
the end of the image), sends it through the running server with the Cloud
Vision verifier (speaking to the local fake Vision server) and checks the
stored blob and the bytes sent to Vision: no marker anywhere, an empty `info`
besides the JFIF header the encoder writes itself, and no COM, APP1-APP15
segment in the JPEG.
"""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image, ImageCms, IptcImagePlugin, PngImagePlugin

from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.settings import Settings
from faceharmony.core.verify.factory import make_verifier
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.fake_vision import FakeVision
from tests.support.harness import start_harness

# What the encoder itself writes into a JPEG with no resolution: the JFIF APP0 header.
JFIF_INFO = {"jfif": 257, "jfif_version": (1, 1), "jfif_unit": 0, "jfif_density": (1, 1)}


def marker(field: str) -> bytes:
    return f"ada.lovelace+{field}@example.com".encode()


def _exif() -> tuple[bytes, list[bytes]]:
    """EXIF with personal strings in IFD0, the Exif IFD (UserComment) and the GPS IFD."""
    exif = Image.Exif()
    fields = {0x010E: "exif-description", 0x013B: "exif-artist", 0x8298: "exif-copyright", 0x010F: "exif-make"}
    for tag, name in fields.items():
        exif[tag] = marker(name).decode()
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + marker("exif-usercomment")
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0), 27: b"ASCII\0\0\0" + marker("exif-gps")})
    names = [*fields.values(), "exif-usercomment", "exif-gps"]
    return exif.tobytes(), [marker(n) for n in names]


def _xmp(field: str) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>'
        + marker(field)
        + b"</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>"
    )


def _icc(field: str) -> bytes:
    """A real sRGB profile with a marker appended (Pillow copies the profile bytes as they are)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() + marker(field)


def _segment(code: int, payload: bytes) -> bytes:
    return bytes((0xFF, code)) + struct.pack(">H", len(payload) + 2) + payload


def _iptc_app13(field: str) -> bytes:
    """An APP13 Photoshop segment with an IPTC-IIM record (2:80 by-line, 2:120 caption)."""
    by_line, caption = marker(field + "-byline"), marker(field + "-caption")
    iim = (
        b"\x1c\x02\x50"
        + struct.pack(">H", len(by_line))
        + by_line
        + b"\x1c\x02\x78"
        + struct.pack(">H", len(caption))
        + caption
    )
    iim += b"\0" * (len(iim) % 2)
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iim)) + iim
    return _segment(0xED, b"Photoshop 3.0\0" + resource)


def _jpeg(**kwargs) -> bytes:
    return images.encode(images.astronaut(), "JPEG", quality=90, **kwargs)


def _png(info: PngImagePlugin.PngInfo | None = None, **kwargs) -> bytes:
    return images.encode(images.astronaut(), "PNG", pnginfo=info, **kwargs)


def _webp(**kwargs) -> bytes:
    return images.encode(images.astronaut(), "WEBP", quality=90, **kwargs)


def _png_text() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", marker("png-text-comment").decode())
    info.add_text("Author", marker("png-text-author").decode())
    info.add_text("Description", marker("png-ztxt").decode(), zip=True)
    info.add_itxt("Title", marker("png-itxt").decode(), lang="en", tkey=marker("png-itxt-tkey").decode(), zip=False)
    info.add_itxt("Comment", marker("png-itxt-zip").decode(), zip=True)
    info.add_itxt("XML:com.adobe.xmp", _xmp("png-xmp").decode())
    return info


def _png_private_chunks() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add(b"prVt", marker("png-private-chunk"))  # ancillary, private, safe to copy
    info.add(b"tIME", struct.pack(">HBBBBB", 2026, 1, 15, 12, 0, 0))
    return info


def _mpo() -> bytes:
    """A multi-picture JPEG whose second picture carries a comment."""
    out = io.BytesIO()
    second = images.astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    second.encoderinfo = {"comment": marker("mpo-second-comment")}
    images.astronaut().save(
        out, "MPO", save_all=True, append_images=[second], comment=marker("mpo-comment"), quality=90
    )
    return out.getvalue()


def _exif_case(make):
    data, markers = _exif()
    return make(data), markers


CASES = {
    "jpeg-comment": lambda: (_jpeg(comment=marker("jpeg-comment")), [marker("jpeg-comment")]),
    "jpeg-exif-gps": lambda: _exif_case(lambda e: _jpeg(exif=e)),
    "jpeg-xmp": lambda: (_jpeg(xmp=_xmp("jpeg-xmp")), [marker("jpeg-xmp")]),
    "jpeg-icc": lambda: (_jpeg(icc_profile=_icc("jpeg-icc")), [marker("jpeg-icc")]),
    "jpeg-iptc": lambda: (
        _jpeg(extra=_iptc_app13("jpeg-iptc")),
        [marker("jpeg-iptc-byline"), marker("jpeg-iptc-caption")],
    ),
    "jpeg-other-segments": lambda: (
        _jpeg(extra=_segment(0xEC, b"Ducky\0" + marker("jpeg-app12")) + _segment(0xEF, marker("jpeg-app15"))),
        [marker("jpeg-app12"), marker("jpeg-app15")],
    ),
    "jpeg-dpi": lambda: (_jpeg(dpi=(300, 300), comment=marker("jpeg-dpi")), [marker("jpeg-dpi")]),
    "jpeg-everything": lambda: (
        _jpeg(
            comment=marker("all-comment"),
            exif=_exif()[0],
            xmp=_xmp("all-xmp"),
            icc_profile=_icc("all-icc"),
            dpi=(72, 72),
            extra=_iptc_app13("all-iptc"),
        ),
        [marker("all-comment"), *_exif()[1], marker("all-xmp"), marker("all-icc"), marker("all-iptc-byline")],
    ),
    "jpeg-trailer": lambda: (_jpeg() + marker("after-eoi"), [marker("after-eoi")]),
    "mpo-second-picture": lambda: (_mpo(), [marker("mpo-comment"), marker("mpo-second-comment")]),
    "png-text-ztxt-itxt-xmp": lambda: (
        _png(_png_text()),
        [
            marker(n)
            for n in (
                "png-text-comment",
                "png-text-author",
                "png-ztxt",
                "png-itxt",
                "png-itxt-tkey",
                "png-itxt-zip",
                "png-xmp",
            )
        ],
    ),
    "png-exif": lambda: _exif_case(lambda e: _png(exif=e)),
    "png-icc": lambda: (_png(icc_profile=_icc("png-icc")), [marker("png-icc")]),
    "png-dpi-and-private-chunks": lambda: (_png(_png_private_chunks(), dpi=(300, 300)), [marker("png-private-chunk")]),
    "webp-exif": lambda: _exif_case(lambda e: _webp(exif=e)),
    "webp-xmp": lambda: (_webp(xmp=_xmp("webp-xmp")), [marker("webp-xmp")]),
    "webp-icc": lambda: (_webp(icc_profile=_icc("webp-icc")), [marker("webp-icc")]),
    "webp-lossless-everything": lambda: (
        _webp(lossless=True, exif=_exif()[0], xmp=_xmp("webp-all-xmp"), icc_profile=_icc("webp-all-icc")),
        [*_exif()[1], marker("webp-all-xmp"), marker("webp-all-icc")],
    ),
}


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker byte, payload) of every segment from SOI up to and including SOS, read independently of Pillow."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    segments, pos = [], 2
    while True:
        assert data[pos] == 0xFF, f"no segment marker at {pos}"
        while data[pos] == 0xFF:  # fill bytes
            pos += 1
        code = data[pos]
        length = struct.unpack(">H", data[pos + 1 : pos + 3])[0]
        segments.append((code, data[pos + 3 : pos + 1 + length]))
        pos += 1 + length
        if code == 0xDA:  # start of scan: entropy-coded data follows
            return segments


def everything_readable(data: bytes) -> bytes:
    """The upload's bytes plus every field Pillow reads out of them (decompressed text chunks, IPTC), as bytes."""
    image = Image.open(io.BytesIO(data))
    iptc = IptcImagePlugin.getiptcinfo(image) if image.format in ("JPEG", "MPO") else None
    return data + repr(image.info).encode() + repr(iptc).encode()


@pytest.fixture(scope="module")
def vision_server():
    with FakeVision() as vision:
        yield vision


@pytest.fixture(scope="module")
def server(tmp_path_factory, vision_server):
    folder = tmp_path_factory.mktemp("metadata")
    settings = Settings(
        verifier="google-cloud-vision", vision_endpoint=vision_server.address, vision_timeout_seconds=10
    )
    h = start_harness(folder / "data", f"sqlite:///{folder / 'db.sqlite3'}", verifier=make_verifier(settings))
    h.user = h.sign_up("metadata@example.com")
    yield h
    h.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_container_field_survives_into_the_stored_photo_or_to_vision(server, vision_server, case):
    upload, markers = CASES[case]()
    readable = everything_readable(upload)
    assert all(x in readable for x in markers), "the upload does not carry its markers"
    photo = server.photos.UploadPhoto(
        p.UploadPhotoRequest(content=upload, filename="me"), metadata=server.user.md
    ).photo
    row = server.db_call(lambda: m.Photo.get_by_id(photo.id))
    stored = LocalBlobStore(server.settings.blob_dir, Role.TRAINER).read("photos", row.blob_id, key_id=row.key_id)
    sent = vision_server.requests[-1].requests[0].image.content
    assert sent == stored  # Vision receives exactly the stored patch
    for x in markers:
        assert x not in stored
    assert b"example.com" not in stored
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG" and image.size == (512, 512)
    assert image.info == JFIF_INFO  # no comment, exif, xmp, icc_profile, dpi, progressive, ...
    assert not image.getexif() and not image.applist[1:]
    segments = jpeg_segments(stored)
    codes = [code for code, _ in segments]
    assert 0xFE not in codes  # COM
    assert not [hex(c) for c in codes if 0xE1 <= c <= 0xEF]  # APP1 (Exif, XMP), APP2 (ICC, MPF), APP13 (IPTC), ...
    app0 = [payload for code, payload in segments if code == 0xE0]
    assert len(app0) == 1 and app0[0].startswith(b"JFIF\0") and app0[0][7:12] == b"\0\0\x01\0\x01"  # no resolution


def test_the_local_verifier_path_stores_the_same_pixels_only_photo(sqlite_harness):
    upload, markers = CASES["jpeg-everything"]()
    user = sqlite_harness.sign_up("metadata-local@example.com")
    photo = sqlite_harness.photos.UploadPhoto(p.UploadPhotoRequest(content=upload), metadata=user.md).photo
    row = sqlite_harness.db_call(lambda: m.Photo.get_by_id(photo.id))
    stored = LocalBlobStore(sqlite_harness.settings.blob_dir, Role.TRAINER).read(
        "photos", row.blob_id, key_id=row.key_id
    )
    assert not [x for x in markers if x in stored]
    assert Image.open(io.BytesIO(stored)).info == JFIF_INFO
    assert [code for code, _ in jpeg_segments(stored) if code == 0xFE or 0xE1 <= code <= 0xEF] == []
