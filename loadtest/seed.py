"""Synthetic user models for the Triton target, the manifest that records them, and their cleanup.

A load test of per-user inference needs many distinct adapters in the blob store, readable by Triton's model
exactly as trained ones are. `seed_models(settings, n, manifest)` makes them on the operator side, without
training:

* the layer shapes come from the configured base's UNet config (`FACEHARMONY_BASE_MODEL`), built on torch's
  meta device (no weights are loaded), and its fingerprint from `fingerprint_folder`, so the adapters fit the
  base Triton serves and carry the "base_fingerprint" its adapter cache checks;
* each adapter holds random nonzero LoRA matrices of the trainer's shapes (down (r, in), up (out, r), float32,
  for every attention projection the engine serves) from a generator seeded by (seed, i), serialized with
  core's `encode_adapter` (the trainer's writer, trainer-style header and metadata, marked "synthetic");
* each is sealed under a data key of its own (`keyring.new_key()`) and stored in `models/` by a blob store
  of the trainer role, the one that may create there.

The manifest (JSON, mode 0600, never overwritten) holds per model the blob id, the key id and the
MODEL_VERSION_KEY the requests send: ids only, no key material. It is written once every model is stored;
a seed that fails midway deletes what it made. `cleanup(settings, manifest)` deletes the blobs (retention
role, the one that may delete) and shreds the keys, then removes the manifest. No database row names a seeded
model: on a system whose retention daemon runs, its orphan sweeps delete such blobs and shred such keys once
they are `FACEHARMONY_ORPHAN_MARGIN_HOURS` old (6 h). That also removes what a killed run left; it means a
kept manifest serves for that long only (seed again later), and a sweep of many long steps must end within it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.factory import open_blob_store
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.settings import Settings

MANIFEST_KIND = "faceharmony-loadtest-manifest"
MANIFEST_VERSION = 1
MAX_MODELS = 1000
SYNTHETIC_MARK = "faceharmony-loadtest"


@dataclass(frozen=True)
class SeededModel:
    blob_id: str
    key_id: str
    model_version_key: str


@dataclass(frozen=True)
class Manifest:
    models: list[SeededModel]
    base_fingerprint: str
    rank: int
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": MANIFEST_KIND,
            "version": MANIFEST_VERSION,
            "created": self.created,
            "base_fingerprint": self.base_fingerprint,
            "rank": self.rank,
            "models": [asdict(m) for m in self.models],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("kind") != MANIFEST_KIND or data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"not a {MANIFEST_KIND} version {MANIFEST_VERSION}")
        models = [SeededModel(m["blob_id"], m["key_id"], m["model_version_key"]) for m in data["models"]]
        if not models:
            raise ValueError("the manifest names no model")
        return cls(models, str(data["base_fingerprint"]), int(data["rank"]), str(data["created"]))


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"manifest {path} cannot be read: {exc}") from None


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Mode 0600; refuses to replace an existing file (it may name blobs not yet cleaned up)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest.to_json(), fh, indent=2)
        fh.write("\n")


def layer_shapes(base_dir: Path) -> dict[str, tuple[int, int]]:
    """{UNet attention projection path: (in, out)} of the base at `base_dir`, read from its UNet config only."""
    import torch
    from diffusers import UNet2DConditionModel

    from faceharmony.core.diffusion.multi_lora import target_layers

    config = UNet2DConditionModel.load_config(str(base_dir), subfolder="unet", local_files_only=True)
    with torch.device("meta"):  # the module tree and its shapes, no weights in memory
        unet = UNet2DConditionModel.from_config(config)
    return {name: (m.in_features, m.out_features) for name, m in target_layers(unet).items()}


def native_size(base_dir: Path) -> int:
    """The base's native image side in pixels (UNet sample size times the VAE's scale), from its configs."""
    try:
        unet = json.loads((Path(base_dir) / "unet" / "config.json").read_text())
        vae = json.loads((Path(base_dir) / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the base model at {base_dir} has no readable unet/vae config ({exc})") from None


def synthetic_adapter(
    shapes: dict[str, tuple[int, int]], rank: int, fingerprint: str, rng: np.random.Generator
) -> bytes:
    """One adapter in the trainer's format: random nonzero LoRA matrices (scale folded into up, alpha = rank)."""
    import torch

    from faceharmony.core.diffusion.adapter_format import FORMAT_NAME, FORMAT_VERSION, encode_adapter
    from faceharmony.core.diffusion.multi_lora import TARGET_PROJECTIONS

    tensors = {}
    for path, (in_f, out_f) in sorted(shapes.items()):
        down = rng.standard_normal((rank, in_f), dtype=np.float32) / np.float32(np.sqrt(in_f))
        up = rng.standard_normal((out_f, rank), dtype=np.float32) * np.float32(0.05 / np.sqrt(rank))
        tensors[f"unet.{path}.lora.down.weight"] = torch.from_numpy(down)
        tensors[f"unet.{path}.lora.up.weight"] = torch.from_numpy(up)
    lora_config = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": sorted(TARGET_PROJECTIONS)}
    header = {"format": "pt", "lora_adapter_metadata": json.dumps(lora_config, indent=2, sort_keys=True)}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "base_fingerprint": fingerprint,
        "rank": rank,
        "alpha": float(rank),
        "alpha_folded_into_up": True,
        "target_modules": list(TARGET_PROJECTIONS),
        "synthetic": SYNTHETIC_MARK,
    }
    return encode_adapter(tensors, header, metadata)


def seed_models(
    settings: Settings,
    count: int,
    manifest_path: Path,
    keyring: Keyring,
    *,
    rank: int = 4,
    seed: int = 0,
) -> Manifest:
    """Stores `count` synthetic adapters, each under a fresh data key, and writes the manifest."""
    from faceharmony.core.diffusion.pipeline import fingerprint_folder

    if not 1 <= count <= MAX_MODELS:
        raise ValueError(f"models must be 1..{MAX_MODELS}")
    if not 1 <= rank <= 128:
        raise ValueError("rank must be 1..128")
    manifest_path = Path(manifest_path)
    if manifest_path.exists():
        raise FileExistsError(f"{manifest_path} exists: clean it up first (`faceharmony-loadtest cleanup`)")
    base_dir = settings.base_model_dir
    shapes = layer_shapes(base_dir)
    fingerprint = fingerprint_folder(base_dir)
    store = open_blob_store(settings, Role.TRAINER, keyring)
    made: list[SeededModel] = []
    try:
        for i in range(count):
            data = synthetic_adapter(shapes, rank, fingerprint, np.random.default_rng([seed, i]))
            key_id = keyring.new_key()
            made.append(SeededModel("", key_id, ""))  # the key exists from here on: cleaned up on failure
            blob_id = store.create("models", data, key_id=key_id)
            made[-1] = SeededModel(blob_id, key_id, f"loadtest:{blob_id}:1")
        manifest = Manifest(made, fingerprint, rank, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        write_manifest(manifest_path, manifest)
    except BaseException:
        _remove(settings, keyring, made)
        raise
    return manifest


@dataclass(frozen=True)
class CleanupReport:
    blobs_deleted: int
    keys_shredded: int


def _remove(settings: Settings, keyring: Keyring, models: list[SeededModel]) -> CleanupReport:
    store = open_blob_store(settings, Role.RETENTION, keyring)
    blobs = keys = 0
    for model in models:
        if model.blob_id:
            blobs += int(store.delete("models", model.blob_id))
        keys += int(keyring.shred(model.key_id))
    return CleanupReport(blobs, keys)


def cleanup(settings: Settings, manifest_path: Path, keyring: Keyring) -> CleanupReport:
    """Deletes the manifest's blobs, shreds its keys (both idempotent), then removes the manifest."""
    manifest = read_manifest(manifest_path)
    report = _remove(settings, keyring, manifest.models)
    Path(manifest_path).unlink()
    return report
