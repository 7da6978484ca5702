"""The trainer process: fine-tunes a LoRA per user model (filled in by the trainer issue)."""
