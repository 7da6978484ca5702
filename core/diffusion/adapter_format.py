"""The LoRA adapter file format: what the trainer stores in `models/` and the inference side reads back.

An adapter is one safetensors file:

* Tensors: keys `unet.<module path>.<to_q|to_k|to_v|to_out.0>.lora.<down|up>.weight` (the diffusers
  spelling `StableDiffusionPipeline.save_lora_weights` writes; peft's `lora_A`/`lora_B` spelling is accepted
  on reading), both halves of each layer, down (r, in) and up (out, r), floating point (the trainer writes
  float32), finite. The LoRA scale alpha/rank is already folded into the `up` matrices, so whoever applies
  the file uses scale 1 (the diffusers LoRA config in the header declares lora_alpha == rank for the same
  reason).
* Header `__metadata__`: what diffusers writes there, plus `METADATA_KEY` holding the training metadata as
  JSON with sorted keys (its "format" is `FORMAT_NAME`, its "format_version" `FORMAT_VERSION`), so the blob
  describes itself and an adapter is never applied to a base it was not trained on ("base_fingerprint").
* The header JSON is canonical (sorted keys, compact, space-padded to a multiple of 8 bytes, as the format
  allows): the same adapter always serializes to the same bytes.

Owns the constants above, `encode_adapter` (tensors + header + metadata -> bytes), `parse_adapter_bytes`
(bytes -> validated state dict, `AdapterCorrupt` otherwise), `adapter_metadata` and `adapter_ranks`. It is the
one writer and reader of the format: the trainer (trainer/lora.py) and the inference side
(adapter_cache, multi_lora) both import it from here, since core must not import a process package. The
parser checks the file's own consistency, because the inference side does not trust what it reads from
storage; whether an adapter fits the loaded base (layer names and widths) is checked by the engine
(`multi_lora.prepare_lora`). It does not insist on one rank for all layers (the engine pads ranks anyway;
the trainer's own reader adds that check).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch

FORMAT_NAME = "diffusers-lora-safetensors"  # the "format" of the embedded training metadata
FORMAT_VERSION = 1  # its "format_version"
METADATA_KEY = "faceharmony_training"  # where the trainer embeds its JSON metadata in the safetensors header

# One tensor key: the layer (a UNet attention projection) and which half of the LoRA pair it holds.
LORA_KEY = re.compile(
    r"^unet\.(?P<layer>[A-Za-z0-9_.]+\.(?:to_q|to_k|to_v|to_out\.0))\.(?P<half>lora\.down|lora\.up|lora_A|lora_B)\.weight$"
)
DOWN_HALVES = ("lora.down", "lora_A")  # the `half` spellings of the down (r, in) matrix; the others are up


class AdapterError(Exception):
    """An adapter cannot be served."""


class AdapterCorrupt(AdapterError):
    """The stored bytes are not a LoRA adapter of the trainer's format (the message says what is wrong)."""


def encode_adapter(tensors: Mapping[str, torch.Tensor], header: Mapping[str, str], metadata: dict) -> bytes:
    """The adapter file: `tensors` (keys as `LORA_KEY`, alpha folded into up) with `header` as the
    safetensors `__metadata__` plus `metadata` as JSON under `METADATA_KEY`, header canonical."""
    import safetensors.torch

    full = dict(header)
    full[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
    return canonical_header(safetensors.torch.save(dict(tensors), metadata=full))


def canonical_header(data: bytes) -> bytes:
    """Rewrite a safetensors header as sorted, compact JSON (space-padded to 8 bytes, as the format allows).

    safetensors writes `__metadata__` in hash-map order, which differs between calls, so the same adapter
    would otherwise serialize to different bytes. Tensor data and offsets are untouched.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def parse_adapter_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Validate adapter bytes and return the state dict; AdapterCorrupt for anything else."""
    import safetensors.torch

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AdapterCorrupt(f"adapter must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < 16:
        raise AdapterCorrupt(f"adapter is {len(data)} bytes, too short for safetensors")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own and other error types
        raise AdapterCorrupt(f"adapter is not valid safetensors: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not tensors:
        raise AdapterCorrupt("adapter holds no tensors")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = LORA_KEY.fullmatch(key)
        if m is None:
            raise AdapterCorrupt(f"unexpected key in adapter: {key[:120]!r}")
        half = "down" if m["half"] in DOWN_HALVES else "up"
        if half in layers.setdefault(m["layer"], {}):
            raise AdapterCorrupt(f"adapter names layer {m['layer'][:120]!r} twice")
        layers[m["layer"]][half] = tensor
    for layer, pair in layers.items():
        if len(pair) != 2:
            raise AdapterCorrupt(f"adapter layer {layer[:120]!r} has only its {next(iter(pair))} half")
        down, up = pair["down"], pair["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] < 1 or up.shape[1] != down.shape[0]:
            raise AdapterCorrupt(
                f"adapter layer {layer[:120]!r} has inconsistent shapes {tuple(down.shape)}, {tuple(up.shape)}"
            )
        if not (down.is_floating_point() and up.is_floating_point()):
            raise AdapterCorrupt(f"adapter layer {layer[:120]!r} is not floating point")
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
            raise AdapterCorrupt(f"adapter layer {layer[:120]!r} holds non-finite values")
    return tensors


def adapter_ranks(tensors: Mapping[str, torch.Tensor]) -> set[int]:
    """The ranks (rows of the down matrices) of a parsed adapter's layers."""
    return {t.shape[0] for key, t in tensors.items() if key.endswith(("lora.down.weight", "lora_A.weight"))}


def adapter_metadata(data: bytes) -> dict:
    """The trainer's JSON metadata embedded in the safetensors header; {} when absent or unreadable."""
    try:
        n = int.from_bytes(bytes(data[:8]), "little")
        header = json.loads(bytes(data[8 : 8 + n]))
        raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else {}
        return meta if isinstance(meta, dict) else {}
    except (ValueError, AttributeError, TypeError):
        return {}


__all__ = [
    "DOWN_HALVES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LORA_KEY",
    "METADATA_KEY",
    "AdapterCorrupt",
    "AdapterError",
    "adapter_metadata",
    "adapter_ranks",
    "canonical_header",
    "encode_adapter",
    "parse_adapter_bytes",
]
