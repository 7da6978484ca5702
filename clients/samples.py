"""The demo's sample photos: two people's face photos and a set of photos the verifier refuses, made in memory.

Everything is built from real photographs that ship inside scikit-image's `data` module (nothing is
downloaded, nothing is read from disk but the package): Eileen Collins (`astronaut`) and the cameraman
(`camera`, toned sepia so it is a colour photo) are the two demo people, each with variants of one face
(crops, a mirror image, small rotations and scalings, a colour shift) that the local verifier accepts;
the refused examples each show one reason: a cat (`chelsea`) or a coffee cup with no face, two faces side
by side, the cameraman's grayscale original, a thumbnail below the minimum side, and a text file.

`people()` returns both people's samples in upload order; each `Sample` holds the bytes to upload, the
verdict the local verifier gives it (`expect`: "" for accepted, else the reason) and a caption. The
expectations are checked against the real verifier by tests/test_demo.py.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

INSTALL_HINT = "the demo's sample photos come from scikit-image: pip install 'faceharmony[demo]' (or scikit-image)"

# Grey fill of the corners a rotation uncovers (a plain colour the face detectors ignore).
FILL = (118, 118, 118)


class SamplesUnavailable(RuntimeError):
    """scikit-image, which ships the photographs, is not installed."""


@dataclass(frozen=True)
class Sample:
    """One photo to upload: its file name, its bytes, and the verdict it should get ("" = accepted)."""

    name: str
    caption: str
    content: bytes
    expect: str = ""

    @property
    def accepted(self) -> bool:
        return not self.expect


@dataclass(frozen=True)
class Person:
    """A demo user: a display name, the photographs' source, and the samples in upload order."""

    name: str
    source: str
    samples: tuple[Sample, ...]

    @property
    def accepted(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.accepted)

    @property
    def rejected(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if not s.accepted)


def _skimage_data() -> Any:
    try:
        from skimage import data
    except ImportError as exc:
        raise SamplesUnavailable(INSTALL_HINT) from exc
    return data


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@cache
def astronaut() -> Image.Image:
    """Eileen Collins in her space suit, 512x512 RGB."""
    return Image.fromarray(_skimage_data().astronaut())


@cache
def cameraman() -> Image.Image:
    """The cameraman, 512x512 grayscale as shipped."""
    return Image.fromarray(_skimage_data().camera())


def sepia(gray: Image.Image) -> Image.Image:
    """A grayscale photo toned brown (its channels differ, so it is a colour photo)."""
    return ImageOps.colorize(gray.convert("L"), black=(30, 18, 8), white=(255, 236, 200), mid=(160, 120, 80))


def turned(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=FILL)


def scaled(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)


def warmer(image: Image.Image) -> Image.Image:
    """A colour shift: more red, less blue, a little more saturation."""
    r, g, b = image.split()
    r = r.point(lambda v: min(255, int(v * 1.12) + 8))
    b = b.point(lambda v: int(v * 0.82))
    return ImageEnhance.Color(Image.merge("RGB", (r, g, b))).enhance(1.2)


def cooler(image: Image.Image) -> Image.Image:
    """A colour shift towards blue."""
    r, g, b = image.split()
    r = r.point(lambda v: int(v * 0.8))
    b = b.point(lambda v: min(255, int(v * 1.15) + 12))
    return Image.merge("RGB", (r, g, b))


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), FILL)
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def eileen(photos: int = 5) -> Person:
    """Eileen Collins: `photos` accepted variants (4-7), then a cat, two faces and a text file."""
    astro = astronaut()
    head = astro.crop((120, 0, 370, 250))
    variants = [
        Sample("eileen-1.jpg", "the photo", jpeg(astro)),
        Sample("eileen-2.jpg", "head crop", jpeg(head)),
        Sample("eileen-3.jpg", "mirrored, 8° turn", jpeg(turned(ImageOps.mirror(astro), 8))),
        Sample("eileen-4.jpg", "warmer colours", jpeg(warmer(astro.crop((40, 0, 472, 360))))),
        Sample("eileen-5.jpg", "scaled to 60 %", jpeg(scaled(astro, 0.6))),
        Sample("eileen-6.jpg", "turned -10°", jpeg(turned(astro, -10))),
        Sample("eileen-7.jpg", "upper body", jpeg(astro.crop((60, 0, 460, 300)))),
    ]
    refused = [
        Sample("chelsea.jpg", "a cat", jpeg(Image.fromarray(_skimage_data().chelsea())), "NO_FACE"),
        Sample("two-of-us.jpg", "two faces", jpeg(side_by_side(head, ImageOps.mirror(head))), "MULTIPLE_FACES"),
        Sample("notes.jpg", "a text file", b"Shopping list: milk, eggs, film for the camera.\n", "UNDECODABLE_IMAGE"),
    ]
    return Person("Eileen (demo)", "scikit-image data.astronaut()", (*_take(variants, photos), *refused))


def cameraman_person(photos: int = 5) -> Person:
    """The cameraman, toned sepia: `photos` accepted variants (4-7), then his grayscale original, coffee, a thumbnail."""
    gray = cameraman()
    toned = sepia(gray)
    head = toned.crop((60, 0, 410, 350))
    variants = [
        Sample("cameraman-1.jpg", "the photo, sepia", jpeg(toned)),
        Sample("cameraman-2.jpg", "head crop", jpeg(head)),
        Sample("cameraman-3.jpg", "mirrored", jpeg(ImageOps.mirror(toned))),
        Sample("cameraman-4.jpg", "bluer, 6° turn", jpeg(turned(cooler(toned), 6))),
        Sample("cameraman-5.jpg", "scaled to 50 %", jpeg(scaled(toned, 0.5))),
        Sample("cameraman-6.jpg", "turned -8°", jpeg(turned(toned, -8))),
        Sample("cameraman-7.jpg", "head, scaled to 70 %", jpeg(scaled(head, 0.7))),
    ]
    refused = [
        Sample("cameraman-gray.png", "grayscale original", png(gray), "NOT_RGB"),
        Sample("coffee.jpg", "coffee, no one", jpeg(Image.fromarray(_skimage_data().coffee())), "NO_FACE"),
        Sample("tiny.jpg", "100 px thumbnail", jpeg(scaled(head, 100 / head.width)), "IMAGE_TOO_SMALL"),
    ]
    return Person("Cameraman (demo)", "scikit-image data.camera(), sepia", (*_take(variants, photos), *refused))


def _take(variants: list[Sample], photos: int) -> list[Sample]:
    if not 4 <= photos <= len(variants):
        raise ValueError(f"photos per person must be 4-{len(variants)} (a model needs 4)")
    return variants[:photos]


def people(photos: int = 5) -> tuple[Person, Person]:
    """Both demo people, each with `photos` accepted samples and three refused ones."""
    return eileen(photos), cameraman_person(photos)


def thumbnail_source(sample: Sample) -> Image.Image | None:
    """The sample as an RGB image for the contact sheet, or None when it is not an image."""
    try:
        with Image.open(io.BytesIO(sample.content)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return None
