"""The verifier interface: given a decoded, re-encoded RGB photo, how many human faces it shows and whether it is unsafe.

A backend raises VerifierUnavailable when it cannot answer (service down,
timeout, model failed to load); the API then answers UNAVAILABLE and stores
nothing. A Verdict never holds image bytes or anything personal: counts and
scores only, so it can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class VerifierUnavailable(Exception):
    """The verifier could not give an answer; the upload must fail with UNAVAILABLE and store nothing."""


@dataclass(frozen=True)
class PreparedImage:
    """A photo as the verifiers see it: the pixels after EXIF orientation, and the stripped JPEG that would be stored."""

    rgb: npt.NDArray[np.uint8]  # H x W x 3, RGB order
    jpeg: bytes  # re-encoded, no metadata: what is stored and what a remote verifier receives

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


@dataclass(frozen=True)
class Verdict:
    faces: int
    nsfw: bool
    # Counts and scores only (e.g. {"face_scores": [0.91], "nsfw_label": "..."}): safe to log.
    detail: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    name: str

    def verify(self, image: PreparedImage) -> Verdict:
        """Counts faces and judges safety. Thread-safe. Raises VerifierUnavailable."""
        ...
