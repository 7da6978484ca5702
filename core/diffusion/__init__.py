"""Per-user inference: one shared base pipeline, a different LoRA adapter per sample inside one batch.

* `multi_lora`: the per-sample LoRA projection wrapper (stacked, rank-padded matrices gathered by an index,
  two `bmm`s) and installing/removing it on a UNet.
* `engine`: `BatchedGenerator`, which validates requests one by one and runs each (steps, size) group as
  one batched denoising loop with per-sample adapters, seeds, prompts and guidance.
* `adapter_cache`: `AdapterCache`, adapters fetched with the order role's blob store, LRU-bounded in bytes.
* `adapter_format`: the LoRA adapter file the trainer writes and the inference side reads (encode, parse,
  metadata).
* `pipeline`: the base pipeline (`BasePipeline`, `load_base`), shared with the trainer.

Submodules import torch/diffusers lazily from here: importing this package costs nothing.
"""

import logging


class _TorchvisionFallbackNote(logging.Filter):
    """Drops transformers' note that an image processor "requires torchvision (not installed)" and falls back to
    its PIL version, with advice to install torchvision. The project never installs torchvision (it is kept out
    on purpose, beside the pinned torch) and the PIL fallback is what it means to use, so the advice would only
    alarm whoever reads the logs at every start of the trainer, Triton and the tiny-pipeline build."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNote())
