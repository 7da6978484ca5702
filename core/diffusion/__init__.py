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
