"""The Triton launcher (`faceharmony-triton`): the nvidia-pytriton wheel's server on `triton_models/`, loopback and
locked down (no HTTP, no model control, restricted protocols)."""
