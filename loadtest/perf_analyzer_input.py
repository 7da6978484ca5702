"""An input-data file for NVIDIA's perf_analyzer (`--input-data`), made from a seeded manifest's real ids.

perf_analyzer sends the file's `data` entries in turn, one request each: here one entry per seeded model
(its ADAPTER_BLOB_ID, ADAPTER_KEY_ID and MODEL_VERSION_KEY), each with a prompt, a seed, STEPS, GUIDANCE,
WIDTH and HEIGHT, the very inputs triton_target.py sends (`request_inputs`). BYTES inputs are written as JSON
strings, numbers as one-element lists, per perf_analyzer's input-data format. `perf_analyzer/input_data.example.json`
in this package is the same file for a placeholder manifest (`example_manifest()`) (it shows the shape; real runs need real ids,
since the model refuses a blob or key it cannot open).

The file holds ids only (no key material, no image); it is written 0600 anyway, like the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from faceharmony.loadtest.seed import Manifest, SeededModel
from faceharmony.loadtest.triton_target import PROMPTS, request_inputs, request_seed

EXAMPLE = Path(__file__).parent / "perf_analyzer" / "input_data.example.json"


def input_data(manifest: Manifest, *, width: int, height: int, steps: int, guidance: float = 7.5) -> dict[str, Any]:
    entries = []
    for i, model in enumerate(manifest.models):
        inputs = request_inputs(
            model,
            prompt=PROMPTS[i % len(PROMPTS)],
            seed=request_seed(0, i),
            steps=steps,
            guidance=guidance,
            width=width,
            height=height,
        )
        entries.append({name: [value] for name, (_dtype, value) in inputs.items()})
    return {"data": entries}


def example_manifest(models: int = 2) -> Manifest:
    """Placeholders where a seeded manifest has its ids (the shipped example file)."""
    return Manifest(
        [
            SeededModel(f"<blob id of model {i}>", f"<data key id of model {i}>", f"<model version key of model {i}>")
            for i in range(1, models + 1)
        ],
        base_fingerprint="<base fingerprint>",
        rank=4,
        created="",
    )


def write_input_data(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    return path
