"""Shared by the tests that run the real Triton server from the nvidia-pytriton wheel."""

from __future__ import annotations

import importlib.util
import io
import os

import pytest
from PIL import Image
from skimage import data as skdata


def require_triton() -> None:
    """Skips the module where the wheel is missing on a developer machine; CI must have it."""
    if importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None:
        if os.environ.get("CI"):
            raise RuntimeError("nvidia-pytriton / tritonclient[grpc] must be installed in CI")
        pytest.skip("nvidia-pytriton or tritonclient is not installed", allow_module_level=True)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def train_tiny_adapters(base, store, ranks=(4, 8), *, key_id: str) -> dict[str, bytes]:
    """One tiny adapter per rank, each from another photo, stored in models/ (trainer role) sealed with the data
    key `key_id`: blob id -> bytes."""
    from faceharmony.trainer.lora import TrainingSettings, train_lora

    photos = [
        Image.fromarray(skdata.astronaut()).crop((100, 0, 400, 300)),
        Image.fromarray(skdata.chelsea()),
        Image.fromarray(skdata.coffee()),
    ]
    out = {}
    for i, rank in enumerate(ranks):
        settings = TrainingSettings(rank=rank, steps=10, batch_size=2, learning_rate=2e-2, seed=200 + i, flip=False)
        blob = train_lora(base, [_jpeg(photos[i % len(photos)])], settings).safetensors
        out[store.create("models", blob, key_id=key_id)] = blob
    return out


def triton_env(data_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env["FACEHARMONY_DATA_DIR"] = str(data_dir)
    return env
