"""Turns uploaded bytes into a PreparedImage, or rejects them with a reason, entirely in memory (no temporary file).

The checks run cheapest first and before any pixel is decoded where they can:
byte size; the container format and its header (dimensions, bit depth,
colour type); the pixel count (a decompression bomb is refused before
decoding); the minimum side. Then the image is decoded, EXIF orientation
applied, the colour model checked (three-channel RGB only, P7: grayscale,
CMYK, palette and 16-bit images are refused; RGBA is accepted only when
fully opaque; an RGB image whose channels are all equal is grayscale), and it
is re-encoded as a JPEG, scaled down so its longer side is at most
`store_max_side`. The JPEG is made from the pixels alone (a new image, with an
empty `info`): Pillow's encoders reuse an opened image's `info`, so nothing of
the upload's container (JPEG comment, EXIF, GPS, XMP, IPTC, ICC profile, DPI,
PNG text chunks, WebP EXIF/XMP, any other segment or chunk) reaches what is
stored or what a remote verifier receives.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from faceharmony.core.verify.base import PreparedImage

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
JPEG_QUALITY = 92


class ImageRejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 128
    store_max_side: int = 2048


def _png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, read without decoding."""
    if len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def _is_grayscale(rgb: np.ndarray) -> bool:
    """True when (almost) no pixel has colour: channel spread above 8 in under 0.5 % of pixels."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    sample = rgb[::step, ::step].astype(np.int16)
    spread = sample.max(axis=2) - sample.min(axis=2)
    return float((spread > 8).mean()) < 0.005


def declared_pixels(data: bytes, limits: Limits) -> int:
    """The pixels decoding `data` would allocate (width x height from the header, nothing decoded), for the budget
    of pixels in flight; 0 when prepare_upload refuses it before decoding (empty, too many bytes or pixels,
    too small, no readable header)."""
    if not data or len(data) > limits.max_bytes:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError, struct.error, EOFError, Image.DecompressionBombError):
            return 0
    pixels = width * height
    return pixels if pixels <= limits.max_pixels and min(width, height) >= limits.min_side else 0


def prepare_upload(data: bytes, limits: Limits) -> PreparedImage:
    if not data:
        raise ImageRejected("EMPTY_UPLOAD", "the upload is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected("IMAGE_TOO_LARGE", f"the file is larger than {limits.max_bytes} bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: we check the size ourselves
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
        except Image.DecompressionBombError:
            raise ImageRejected("IMAGE_TOO_LARGE", f"the image has more than {limits.max_pixels} pixels") from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError):
            raise ImageRejected("UNDECODABLE_IMAGE", "not a JPEG, PNG or WebP image") from None
        if width * height > limits.max_pixels:
            raise ImageRejected("IMAGE_TOO_LARGE", f"the image has more than {limits.max_pixels} pixels")
        if min(width, height) < limits.min_side:
            raise ImageRejected("IMAGE_TOO_SMALL", f"each side must be at least {limits.min_side} pixels")
        png = _png_header(data)
        if png is not None and png[0] == 16:
            raise ImageRejected("NOT_RGB", "16-bit images are not accepted; use 8-bit RGB")
        if image.mode not in ("RGB", "RGBA"):
            raise ImageRejected(
                "NOT_RGB", f"the image is {_describe_mode(image.mode)}; a three-channel RGB image is required"
            )
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, struct.error, EOFError, Image.DecompressionBombError, MemoryError):
            raise ImageRejected("UNDECODABLE_IMAGE", "the image data is corrupt or truncated") from None
    if image.mode == "RGBA":
        low, _ = image.getchannel("A").getextrema()
        if low != 255:
            raise ImageRejected("NOT_RGB", "the image has transparency; a three-channel RGB image is required")
        image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.uint8)
    if _is_grayscale(rgb):
        raise ImageRejected("NOT_RGB", "the image is grayscale; a colour RGB photo is required")
    if max(image.size) > limits.store_max_side:
        image.thumbnail((limits.store_max_side, limits.store_max_side), Image.Resampling.LANCZOS)
        rgb = np.asarray(image, dtype=np.uint8)
    rgb = np.ascontiguousarray(rgb)
    return PreparedImage(rgb=rgb, jpeg=_encode_pixels(rgb))


def _encode_pixels(rgb: np.ndarray) -> bytes:
    """The stored JPEG of H x W x 3 uint8 pixels, made from the pixels alone: only the encoder's own JFIF header.

    A new image has an empty `info`, so no field of the upload (a JPEG comment, which Pillow's JPEG encoder
    copies from `info`, EXIF, XMP, ICC, DPI, text chunks) can be written; no metadata argument is passed.
    """
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def _describe_mode(mode: str) -> str:
    return {
        "L": "grayscale",
        "LA": "grayscale with alpha",
        "1": "black and white",
        "P": "palette-based",
        "PA": "palette-based",
        "CMYK": "CMYK",
        "I;16": "16-bit grayscale",
        "I;16B": "16-bit grayscale",
        "I;16L": "16-bit grayscale",
        "I": "32-bit integer",
        "F": "floating point",
        "YCbCr": "YCbCr",
        "LAB": "Lab",
        "HSV": "HSV",
    }.get(mode, mode)
