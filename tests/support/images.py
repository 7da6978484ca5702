"""Test images made from real photos that ship with scikit-image: one face, two faces, no face, a cat, grayscale, and broken or hostile files."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image
from skimage import data


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


@cache
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def one_face() -> bytes:
    """Eileen Collins, 512x512: exactly one face."""
    return encode(astronaut(), quality=90)


def face_crop() -> Image.Image:
    return astronaut().crop((120, 0, 370, 250))


def two_faces() -> bytes:
    """Two faces side by side (the astronaut and her mirror image)."""
    crop = face_crop()
    canvas = Image.new("RGB", (crop.width * 2, crop.height))
    canvas.paste(crop, (0, 0))
    canvas.paste(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (crop.width, 0))
    return encode(canvas, quality=90)


def no_face() -> bytes:
    return encode(Image.fromarray(data.coffee()), quality=90)


def cat() -> bytes:
    return encode(Image.fromarray(data.chelsea()), quality=90)


def grayscale() -> bytes:
    return encode(Image.fromarray(data.camera()), quality=90)


def grayscale_saved_as_rgb() -> bytes:
    return encode(astronaut().convert("L").convert("RGB"), quality=90)


def truncated() -> bytes:
    full = one_face()
    return full[: len(full) // 2]


def decompression_bomb() -> bytes:
    """A small PNG that claims 20000x20000 pixels (400 MP)."""
    return encode(Image.new("RGB", (20000, 20000)), "PNG")


def oversized(limit: int) -> bytes:
    """A valid JPEG padded past the byte limit."""
    return one_face() + b"\0" * (limit + 1)


def with_exif_gps_and_rotation() -> bytes:
    """A 512x400 one-face photo stored sideways (400x512) with EXIF orientation 6 and a GPS tag."""
    image = astronaut().crop((0, 0, 512, 400)).rotate(90, expand=True)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    exif[0x010F] = "SecretCam"  # Make
    gps = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    exif[0x8825] = gps
    return encode(image, exif=exif.tobytes(), quality=90)


def noise(size: int = 256, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), quality=90)
