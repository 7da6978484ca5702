"""The trainer (`faceharmony-trainer`): claims training jobs and fine-tunes a LoRA per user model (lora.py)."""
