"""The trainer's ML core: the tiny offline base pipeline, loading and fingerprinting it, photo preparation,
LoRA training (progress, cancellation, determinism, the base left untouched) and the adapter format.

A tiny random-weight pipeline is built once per module; training runs use few steps so the whole file stays
well under a minute and a half on a 2-core CPU.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from faceharmony.core.diffusion import pipeline as pipeline_mod
from faceharmony.core.diffusion.pipeline import BasePipelineMissing, build_tiny_pipeline, fingerprint_folder, load_base
from faceharmony.trainer.lora import (
    CorruptAdapter,
    PhotoUnreadable,
    TrainingCancelled,
    TrainingSettings,
    has_adapter,
    load_adapter_bytes,
    prepare_images,
    read_adapter_metadata,
    train_lora,
)
from tests.support.images import astronaut, encode

pytestmark = pytest.mark.torch  # LoRA training and generation with torch on the CPU

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# Enough signal for a visible loss drop in a few seconds on the tiny random model.
FAST = dict(steps=60, batch_size=4, learning_rate=5e-3, seed=1234)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Four real photos of one face: crops of skimage's astronaut, one mirrored, one non-square."""
    img = astronaut()
    crops = [
        img.crop((100, 0, 400, 300)),
        img.crop((120, 20, 420, 320)),
        img.crop((80, 10, 380, 310)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        img.crop((130, 0, 410, 360)),
    ]
    return [encode(c, quality=90) for c in crops]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-base")
    build_tiny_pipeline(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def base(tiny_folder):
    return load_base(tiny_folder, device="cpu")


def _unet_snapshot(unet) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    modules = [(name, type(m).__name__) for name, m in unet.named_modules()]
    return state, modules


@pytest.fixture(scope="module")
def trained(base, photos):
    """One training run shared by several tests, with the base UNet captured before and after."""
    before = _unet_snapshot(base.unet)
    calls: list[tuple[int, int]] = []
    result = train_lora(base, photos, TrainingSettings(**FAST), on_progress=lambda s, t: calls.append((s, t)))
    after = _unet_snapshot(base.unet)
    return result, calls, before, after


def _unet_out(unet, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 32, 32, generator=g)
    emb = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample


# --------------------------------------------------------------------------------------------------------
# The base pipeline


def test_tiny_pipeline_reloads_and_generates(tiny_folder):
    from diffusers import StableDiffusionPipeline

    assert (tiny_folder / "model_index.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a portrait photo of a smiling woman").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert "portrait</w>" in tokens and "photo</w>" in tokens
    out = pipe(
        "a photo of sks person",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pil",
    )
    assert out.images[0].size == (256, 256)


def test_build_is_deterministic(tiny_folder, tmp_path):
    build_tiny_pipeline(tmp_path / "again", seed=0)
    assert fingerprint_folder(tmp_path / "again") == fingerprint_folder(tiny_folder)


def test_load_base_exposes_components(base, tiny_folder):
    assert base.device.type == "cpu" and base.dtype == torch.float32
    assert base.resolution == 256 and base.vae_scale_factor == 8
    assert base.noise_scheduler.config.num_train_timesteps == 1000
    assert all(not p.requires_grad for p in base.unet.parameters())
    assert base.fingerprint == fingerprint_folder(tiny_folder)
    assert len(base.fingerprint) == 64


def test_fingerprint_stable_and_sensitive(base, tiny_folder, tmp_path, monkeypatch):
    again = load_base(tiny_folder, device="cpu")
    assert again.fingerprint == base.fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    assert fingerprint_folder(copy) == base.fingerprint  # the path itself is not part of it
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the middle of the UNet weights
    weights.write_bytes(bytes(raw))
    assert fingerprint_folder(copy) != base.fingerprint
    # The sampled path used for multi-GB production weights still sees a changed first tensor.
    monkeypatch.setattr(pipeline_mod, "FULL_HASH_LIMIT", 0)
    sampled = fingerprint_folder(copy)
    raw[len(raw) - 10] ^= 0x01
    weights.write_bytes(bytes(raw))
    assert fingerprint_folder(copy) != sampled


def test_missing_or_incomplete_base(tiny_folder, tmp_path):
    def check(folder: Path, fragment: str) -> None:
        with pytest.raises(BasePipelineMissing, match=fragment) as info:
            load_base(folder, device="cpu")
        exc = info.value  # no chained hub/loader traceback behind the message
        assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)

    check(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", "model_index.json")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_folder, no_weights)
    (no_weights / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    check(no_weights, "no weights")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_folder, no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    check(no_tokenizer, "tokenizer")
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_folder, truncated)
    vae = truncated / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:5000])
    check(truncated, "cannot be loaded")


# --------------------------------------------------------------------------------------------------------
# Photos


def test_prepare_images_shapes_and_range(photos):
    png = encode(Image.new("L", (64, 200), 255), "PNG")  # grey, portrait, PNG: still fine
    pixels = prepare_images(photos + [png], 64)
    assert pixels.shape == (5, 3, 64, 64) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert pixels[:4].min() < -0.9 and pixels[:4].max() > 0.9
    assert torch.allclose(pixels[4], torch.ones(3, 64, 64))
    with pytest.raises(PhotoUnreadable, match="photo 1"):
        prepare_images([photos[0], b"not a jpeg"], 64)


def test_prepare_images_applies_exif_orientation():
    img = Image.new("RGB", (80, 40), (0, 0, 0))
    img.paste((255, 255, 255), (40, 0, 80, 40))  # stored: left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: black on top
    pixels = prepare_images([encode(img, exif=exif.tobytes())], 32)[0]
    assert pixels[:, :8].mean() < -0.8 and pixels[:, -8:].mean() > 0.8


# --------------------------------------------------------------------------------------------------------
# Training


def test_training_lowers_loss_and_reports_progress(trained):
    result, calls, _, _ = trained
    assert result.steps == FAST["steps"] and len(result.losses) == FAST["steps"]
    first, last = result.losses[:10], result.losses[-10:]
    assert sum(last) / 10 < sum(first) / 10
    assert result.final_loss == pytest.approx(sum(last) / 10)
    assert calls == [(i, FAST["steps"]) for i in range(1, FAST["steps"] + 1)]
    assert set(result.timings) == {"prepare", "cache", "train", "serialize"}


def test_base_unet_unchanged_after_training(trained, base):
    _, _, (state_before, modules_before), (state_after, modules_after) = trained
    assert modules_after == modules_before
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    assert not has_adapter(base.unet)
    assert not getattr(base.unet, "peft_config", None)
    assert all(not p.requires_grad for p in base.unet.parameters())


def test_adapter_keys_and_metadata(trained, base):
    result, _, _, _ = trained
    tensors = load_adapter_bytes(result.safetensors)
    matches = [
        re.fullmatch(r"unet\.[\w.]+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.lora\.(down|up)\.weight", k) for k in tensors
    ]
    assert tensors and all(matches), [k for k, m in zip(tensors, matches) if not m]
    assert {m[1] for m in matches} == set(PROJECTIONS)
    assert len(tensors) == 2 * 4 * 2 * 6  # down+up, 4 projections, 2 attentions, 6 transformer blocks
    assert all(t.shape[0] == 4 for k, t in tensors.items() if k.endswith("down.weight"))
    assert len(result.safetensors) < 500_000
    meta = result.metadata
    for key in (
        "base_fingerprint",
        "rank",
        "alpha",
        "trigger_token",
        "class_word",
        "steps",
        "learning_rate",
        "resolution",
        "seed",
        "num_images",
        "library_versions",
    ):
        assert key in meta, key
    assert meta["base_fingerprint"] == base.fingerprint
    assert (meta["rank"], meta["alpha"], meta["trigger_token"], meta["class_word"]) == (4, 4.0, "sks", "person")
    assert (meta["steps"], meta["resolution"], meta["num_images"], meta["seed"]) == (60, 256, 4, 1234)
    assert {"torch", "diffusers", "peft"} <= set(meta["library_versions"])
    assert read_adapter_metadata(result.safetensors) == meta


def test_adapter_loads_into_fresh_pipeline_and_changes_unet(trained, tiny_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    result, _, _, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    plain = _unet_out(pipe.unet)
    pipe.load_lora_weights(load_adapter_bytes(result.safetensors), adapter_name="from_dict")
    with_dict = _unet_out(pipe.unet)
    assert not torch.allclose(plain, with_dict, atol=1e-6)

    (tmp_path / "adapter.safetensors").write_bytes(result.safetensors)
    other = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    other.load_lora_weights(tmp_path, weight_name="adapter.safetensors", adapter_name="from_file")
    assert torch.allclose(with_dict, _unet_out(other.unet), atol=1e-6)


def test_loaded_adapter_reproduces_the_trained_unet(base, photos, tiny_folder, tmp_path, monkeypatch):
    """alpha != rank: the scale is folded into the file, so file and dict loading both match training."""
    from diffusers import StableDiffusionPipeline

    from faceharmony.trainer import lora as lora_mod

    seen = {}
    detach = lora_mod._detach_adapter

    def capture_then_detach(b, *args):
        seen["trained"] = _unet_out(b.unet)  # the UNet with the adapter as trained, just before removal
        detach(b, *args)

    monkeypatch.setattr(lora_mod, "_detach_adapter", capture_then_detach)
    result = train_lora(base, photos[:2], TrainingSettings(rank=2, alpha=8, steps=3, learning_rate=1e-2, batch_size=2))
    assert result.metadata["alpha"] == 8.0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    pipe.load_lora_weights(load_adapter_bytes(result.safetensors))
    (tmp_path / "a.safetensors").write_bytes(result.safetensors)
    other = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    other.load_lora_weights(tmp_path, weight_name="a.safetensors")
    assert not torch.allclose(_unet_out(pipe.unet), _unet_out(base.unet), atol=1e-6)
    assert torch.allclose(_unet_out(pipe.unet), seen["trained"], atol=1e-5)
    assert torch.allclose(_unet_out(other.unet), seen["trained"], atol=1e-5)


def test_should_stop_cancels_promptly(base, photos):
    before, _ = _unet_snapshot(base.unet)
    calls: list[int] = []
    asked = {"n": 0}

    def should_stop() -> bool:
        asked["n"] += 1
        return asked["n"] > 4  # once before preparing, once after caching, then before steps 1 and 2

    with pytest.raises(TrainingCancelled, match="after 2 of 500"):
        train_lora(
            base, photos, TrainingSettings(steps=500), on_progress=lambda s, t: calls.append(s), should_stop=should_stop
        )
    assert calls == [1, 2]  # stopped at the next step, not at the end
    assert not has_adapter(base.unet)
    assert all(torch.equal(v, base.unet.state_dict()[k]) for k, v in before.items())
    with pytest.raises(TrainingCancelled):
        train_lora(base, photos, TrainingSettings(steps=5), should_stop=lambda: True)


def test_same_seed_same_adapter_bytes(base, photos):
    settings = dict(steps=6, batch_size=2, learning_rate=1e-3)
    a = train_lora(base, photos, TrainingSettings(seed=5, **settings))
    b = train_lora(base, photos, TrainingSettings(seed=5, **settings))
    c = train_lora(base, photos, TrainingSettings(seed=6, **settings))
    assert a.safetensors == b.safetensors and a.losses == b.losses
    assert c.safetensors != a.safetensors


def test_bad_training_input(base, photos):
    with pytest.raises(PhotoUnreadable, match="no photos"):
        train_lora(base, [], TrainingSettings(steps=1))
    with pytest.raises(ValueError, match="multiple of") as info:
        train_lora(base, photos, TrainingSettings(steps=1, resolution=100))
    assert not isinstance(info.value, PhotoUnreadable)  # a settings problem: the trainer retries it
    with pytest.raises(PhotoUnreadable, match="cannot be decoded"):
        train_lora(base, [b"\xff\xd8 broken"], TrainingSettings(steps=1))
    for bad in (
        dict(rank=0),
        dict(steps=0),
        dict(learning_rate=-1.0),
        dict(trigger_token="a b"),
        dict(target_modules=()),
    ):
        with pytest.raises(ValueError, match="invalid training settings"):
            TrainingSettings(**bad)
    assert TrainingSettings(rank=8).alpha == 8.0
    assert not has_adapter(base.unet)


# --------------------------------------------------------------------------------------------------------
# Adapter bytes


def _save(tensors: dict[str, torch.Tensor]) -> bytes:
    import safetensors.torch

    return safetensors.torch.save(tensors)


def _two_ranks(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every layer consistent on its own, but one layer cut down to rank 2 beside the others' rank 4."""
    layer = next(k for k in sorted(tensors) if k.endswith("lora.down.weight"))[: -len("lora.down.weight")]
    out = dict(tensors)
    out[layer + "lora.down.weight"] = tensors[layer + "lora.down.weight"][:2].contiguous()
    out[layer + "lora.up.weight"] = tensors[layer + "lora.up.weight"][:, :2].contiguous()
    return out


# name -> (payload from the good adapter's bytes and tensors, what the error says)
CORRUPT_PAYLOADS = {
    "garbage": (lambda good, t: b"\x00\x01garbage" * 50, "not valid safetensors"),
    "empty": (lambda good, t: b"", "too short"),
    "truncated": (lambda good, t: good[: len(good) // 2], "not valid safetensors"),
    "header only": (lambda good, t: good[:8], "too short"),
    "wrong keys": (lambda good, t: _save({"text_encoder.foo.weight": torch.zeros(2, 2)}), "unexpected key"),
    "no tensors": (lambda good, t: _save({}), "no tensors"),
    "half a pair": (
        lambda good, t: _save({k: v for k, v in t.items() if not k.endswith("lora.up.weight")}),
        "only its down half",
    ),
    "rank mismatch": (
        lambda good, t: _save(
            {k: (v[:, :2].contiguous() if k.endswith("lora.up.weight") else v) for k, v in t.items()}
        ),
        "inconsistent shapes",
    ),
    "mixed ranks": (lambda good, t: _save(_two_ranks(t)), r"mixes ranks \[2, 4\]"),
    "non-finite": (lambda good, t: _save({k: torch.full_like(v, float("nan")) for k, v in t.items()}), "non-finite"),
    "integer": (lambda good, t: _save({k: v.to(torch.int32) for k, v in t.items()}), "not floating point"),
    "not bytes": (lambda good, t: "not bytes", "must be bytes"),
}


@pytest.mark.parametrize("name", list(CORRUPT_PAYLOADS))
def test_load_adapter_bytes_rejects_corrupt_payloads(trained, name):
    good = trained[0].safetensors
    make, message = CORRUPT_PAYLOADS[name]
    payload = make(good, load_adapter_bytes(good))
    with pytest.raises(CorruptAdapter, match=message):
        load_adapter_bytes(payload)
    with pytest.raises(CorruptAdapter, match=message):
        read_adapter_metadata(payload)
