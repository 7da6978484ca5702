"""The base diffusion pipeline shared by the trainer and the inference side: building a tiny offline one, loading any one, fingerprinting it.

Owns three things:

* `build_tiny_pipeline(folder, seed)`: writes a Stable-Diffusion-1.5-shaped pipeline with random weights
  (UNet2DConditionModel, AutoencoderKL, 2-layer CLIPTextModel, a CLIP-style byte-level BPE tokenizer
  learned here from a built-in English corpus, EulerDiscreteScheduler) with `save_pretrained`. Nothing is
  downloaded; the same seed writes the same bytes. Used by the embedded default and the tests, because no
  real weights can be fetched in this environment.
* `load_base(folder, device)`: loads UNet, VAE, text encoder, tokenizer and a DDPM training scheduler from a
  local diffusers folder with `local_files_only=True`: the same code path for the tiny pipeline and a real
  SD 1.5 folder. CUDA runs the UNet and text encoder in bf16 (fp16 where bf16 is unsupported); the VAE stays
  float32 everywhere (it only encodes the training photos once, and SD's VAE overflows in fp16). The CPU
  runs float32. A missing or incomplete folder raises `BasePipelineMissing` with one clear message.
* `fingerprint_folder(folder)`: a stable sha256 over the pipeline's files (see its docstring for what is
  read), recorded in each adapter's metadata so an adapter is never applied to a base it was not trained on.

The loaded `BasePipeline` is shared by every training run of a trainer process; `train_lora` takes its
`lock` while it has an adapter attached, so runs on one base never overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from faceharmony.core.datadir import make_private, private_dir

# Components the trainer needs, with the files that must be present for each.
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_MODEL_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")

# Files up to this size are hashed in full; larger ones (production weights, GBs) are sampled.
FULL_HASH_LIMIT = 16 * 1024 * 1024
_EDGE = 1024 * 1024  # bytes hashed at each end of a large file
_WINDOWS = 14  # evenly spaced windows hashed in between
_WINDOW = 64 * 1024


class BasePipelineMissing(Exception):
    """The base-model folder is missing, incomplete or unreadable. The message says which and where."""


@dataclass(eq=False)
class BasePipeline:
    """A loaded base pipeline: the components training needs, where they run, and what they are."""

    folder: Path
    unet: Any  # diffusers.UNet2DConditionModel, frozen, `dtype` on `device`
    vae: Any  # diffusers.AutoencoderKL, frozen, float32 on `device`
    text_encoder: Any  # transformers.CLIPTextModel, frozen, `dtype` on `device`
    tokenizer: Any  # transformers.CLIPTokenizer
    noise_scheduler: Any  # diffusers.DDPMScheduler built from the folder's scheduler config
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    resolution: int  # native training resolution in pixels: unet sample_size * vae_scale_factor
    vae_scale_factor: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# --------------------------------------------------------------------------------------------------------
# Fingerprint


def _component_dirs(folder: Path, index: dict[str, Any]) -> list[str]:
    names = []
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        if (folder / key).is_dir():
            names.append(key)
    return sorted(names)


def _hash_file(path: Path, size: int, h: hashlib._Hash) -> None:
    with path.open("rb") as f:
        if size <= max(FULL_HASH_LIMIT, 2 * _EDGE + (_WINDOWS + 1) * _WINDOW):
            for chunk in iter(lambda: f.read(1024 * 1024), b""):
                h.update(chunk)
            return
        h.update(f.read(_EDGE))
        span = size - 2 * _EDGE - _WINDOW
        for i in range(_WINDOWS):
            f.seek(_EDGE + span * (i + 1) // (_WINDOWS + 1))
            h.update(f.read(_WINDOW))
        f.seek(size - _EDGE)
        h.update(f.read(_EDGE))


def fingerprint_folder(folder: Path) -> str:
    """A stable sha256 hex digest identifying a diffusers pipeline folder.

    Covers `model_index.json` and every non-hidden file in the component subfolders it names, in sorted
    relative-path order, each as (path, size, content digest). Files up to 16 MiB (configs, tokenizer
    files, all of the tiny pipeline) are hashed in full. Larger files (production weights: the SD 1.5
    UNet is 3.4 GB) are hashed by their size, first and last MiB (the safetensors header and the first and
    last tensors) and 14 evenly spaced 64 KiB windows: about 3 MiB read per file, so loading a real base
    costs milliseconds, not a full read. Any other set of weights, any changed config, added, removed or
    resized file changes the fingerprint; it is an identity check, not a tamper-proof checksum.
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    files = [index_path]
    for name in _component_dirs(folder, index):
        for root, dirs, filenames in os.walk(folder / name):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files.extend(Path(root) / fn for fn in filenames if not fn.startswith("."))
    h = hashlib.sha256(b"faceharmony-base-fingerprint-v1\0")
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        size = path.stat().st_size
        file_hash = hashlib.sha256()
        _hash_file(path, size, file_hash)
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0{file_hash.hexdigest()}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No diffusers/transformers progress bars while loading or saving (the trainer logs structured lines)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    was = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            dlog.enable_progress_bar()
        if was[1]:
            tlog.enable_progress_bar()


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 (fp16 where bf16 is unsupported) when available, else CPU float32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dev, torch.float32


def _weight_variant(component_dir: Path, stem: str) -> str | None | bool:
    """None: standard weights present; "fp16" etc.: only that variant present; False: no weights at all."""
    for ext in ("safetensors", "bin"):
        if (component_dir / f"{stem}.{ext}").is_file() or (component_dir / f"{stem}.{ext}.index.json").is_file():
            return None
    for path in sorted(component_dir.glob(f"{stem}.*.*")):
        parts = path.name[len(stem) + 1 :].split(".")
        if len(parts) >= 2 and parts[1] in ("safetensors", "bin"):
            return parts[0]
    return False


def _check_folder(folder: Path) -> dict[str, str | None]:
    """Raise BasePipelineMissing unless `folder` holds every file the trainer loads; return weight variants."""
    if not folder.exists():
        raise BasePipelineMissing(f"base model folder {folder} does not exist")
    if not folder.is_dir():
        raise BasePipelineMissing(f"base model path {folder} is not a folder")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise BasePipelineMissing(f"base model folder {folder} has no model_index.json (not a diffusers pipeline)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BasePipelineMissing(f"{index_path} is unreadable: {exc}") from None
    if not isinstance(index, dict):
        raise BasePipelineMissing(f"{index_path} is not a JSON object")
    variants: dict[str, str | None] = {}
    for name in _COMPONENTS:
        sub = folder / name
        if name not in index:
            raise BasePipelineMissing(f"{index_path} names no {name!r} component")
        if not sub.is_dir():
            raise BasePipelineMissing(f"base model folder {folder} lacks the {name}/ subfolder")
        if name in _MODEL_WEIGHT_STEMS:
            if not (sub / "config.json").is_file():
                raise BasePipelineMissing(f"{sub} has no config.json")
            variant = _weight_variant(sub, _MODEL_WEIGHT_STEMS[name])
            if variant is False:
                raise BasePipelineMissing(f"{sub} has no weights ({_MODEL_WEIGHT_STEMS[name]}.safetensors or .bin)")
            variants[name] = variant  # type: ignore[assignment]
        elif name == "tokenizer":
            if not any((sub / f).is_file() for f in _TOKENIZER_FILES):
                raise BasePipelineMissing(f"{sub} has neither tokenizer.json nor vocab.json")
        elif not (sub / "scheduler_config.json").is_file():
            raise BasePipelineMissing(f"{sub} has no scheduler_config.json")
    return variants


def load_base(folder: Path, device: str | None = None) -> BasePipeline:
    """Load a local diffusers SD-1.5-style folder for training (never touches the network).

    Raises BasePipelineMissing (message only, no chained hub errors) when the folder is missing, incomplete or
    its files cannot be loaded.
    """
    folder = Path(folder)
    variants = _check_folder(folder)
    dev, dtype = pick_device(device)
    with _quiet_progress():
        base = _load_components(folder, variants, dev, dtype)
    return base


def _load_components(
    folder: Path, variants: dict[str, str | None], dev: torch.device, dtype: torch.dtype
) -> BasePipeline:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        common = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", variant=variants["unet"], dtype=dtype, **common
        )
        vae = AutoencoderKL.from_pretrained(
            folder, subfolder="vae", variant=variants["vae"], dtype=torch.float32, **common
        )
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", variant=variants["text_encoder"], dtype=dtype, **common
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common)
        noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **common)
        fingerprint = fingerprint_folder(folder)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every load failure means the same thing to the caller
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BasePipelineMissing(
            f"base model in {folder} cannot be loaded: {type(exc).__name__}: {first_line}"
        ) from None

    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    unet.to(dev)
    text_encoder.to(dev)
    vae.to(dev)
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return BasePipeline(
        folder=folder,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        device=dev,
        dtype=dtype,
        fingerprint=fingerprint,
        resolution=int(unet.config.sample_size) * vae_scale_factor,
        vae_scale_factor=vae_scale_factor,
    )


# --------------------------------------------------------------------------------------------------------
# The tiny offline pipeline

# A small English corpus for the tokenizer: portrait-prompt vocabulary first, then general words.
_CORPUS = """
a photo of a person. a portrait photo of a man. a portrait photo of a woman. a close-up photo of a face.
a headshot of a smiling person with natural light. a professional headshot, studio lighting, soft shadows.
a portrait of a young woman with long hair, wearing a red dress, in a garden.
a portrait of an old man with a grey beard and glasses, black and white photograph.
a smiling child in a park, golden hour, shallow depth of field, bokeh background.
a person standing on a beach at sunset, wearing a white shirt, looking at the camera.
a painting of a person in the style of an oil portrait, renaissance, dramatic lighting.
a watercolor illustration of a woman reading a book by the window.
a digital art portrait of a man as an astronaut in a space suit, stars in the background.
a cinematic photo of a person in a city street at night, neon lights, rain, reflections.
a photo of a person wearing a suit and tie, corporate portrait, office background.
a pencil sketch of a face, detailed, high quality, sharp focus.
a fantasy portrait of a knight in armor, epic, highly detailed, artstation, concept art.
a vintage photograph of a family, sepia tone, film grain, 35mm, kodak portra.
a photo of a woman with curly brown hair and blue eyes, freckles, natural makeup.
a photo of a man with short black hair and brown eyes, beard, casual jacket.
a person hiking in the mountains, snow, blue sky, wide angle, landscape photography.
a studio portrait on a plain grey backdrop, rim light, 85mm lens, f/1.8, canon, nikon, sony.
an anime style drawing of a girl with a hat, pastel colors, cute.
a comic book illustration of a superhero, bold lines, vibrant colors.
a pixar style 3d render of a boy, soft lighting, octane render, unreal engine.
a photo of a person sitting in a cafe, drinking coffee, warm tones, cozy atmosphere.
a photo of a bride and groom at a wedding, flowers, elegant, romantic.
a photo of an athlete running on a track, motion, sports photography, dynamic.
a photo of a chef in a kitchen, cooking, apron, smiling.
a photo of a doctor in a hospital, white coat, stethoscope.
a photo of a musician playing guitar on stage, concert, spotlight.
a photo of a dog and a cat on a sofa. a photo of a cat. a photo of a dog.
the quick brown fox jumps over the lazy dog. she sells sea shells by the sea shore.
happy sad angry calm serious surprised laughing thoughtful confident friendly.
red orange yellow green blue purple pink brown black white grey gold silver.
hair eyes nose mouth lips ears cheeks forehead chin neck shoulders hands skin teeth smile.
morning afternoon evening night spring summer autumn winter sun moon cloud rain snow fog.
beautiful handsome elegant modern classic realistic photorealistic ultra detailed 4k 8k hdr.
low quality, blurry, deformed, ugly, bad anatomy, extra fingers, watermark, text, cropped, jpeg artifacts.
best quality, masterpiece, award winning photograph, trending, sharp, crisp, clean.
portrait photography is the art of capturing the personality of a person or group by using lighting,
backdrops and poses. a good portrait shows the face clearly and the eyes are in focus.
people often ask for pictures of themselves in different places, clothes and styles.
""".strip()

_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_TOKENIZER_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2's byte-to-unicode alphabet, in byte order (printable bytes map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def train_tokenizer_vocab(vocab_size: int = 2048) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn a CLIP-style byte-level BPE on the built-in corpus; return (vocab, merges), deterministically.

    The `tokenizers` library normalizes and pre-tokenizes the corpus exactly as `CLIPTokenizer` will (NFC,
    whitespace folding, lowercase, CLIP's split pattern, byte-to-unicode mapping). The merges are learned
    here with the classic BPE loop (most frequent adjacent pair; ties go to the lexicographically smallest
    pair) instead of `tokenizers.trainers.BpeTrainer`, whose tie-breaking follows a per-process hash-map
    order: with it, two builds with the same seed wrote different tokenizer.json files and so different
    base fingerprints. Layout follows CLIP's vocabulary: the 256 byte characters, the same 256 with `</w>`,
    merged tokens in merge order, then `<|startoftext|>` and `<|endoftext|>` last.
    """
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_TOKENIZER_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    word_counts: Counter[str] = Counter()
    for line in _CORPUS.splitlines():
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in sorted(word_counts.items())}

    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    while len(vocab) + len(_SPECIAL_TOKENS) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merged = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(merged, len(vocab))
        new_words: dict[tuple[str, ...], int] = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    for special in _SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    return vocab, merges


def build_tiny_pipeline(folder: Path, seed: int = 0) -> None:
    """Write a tiny SD-1.5-shaped pipeline with random weights into `folder` (created if needed).

    Sizes: UNet (32, 64) channels, 2 layers per block, sample_size 32 latents, transformer blocks (self- and
    cross-attention) at the 16x16 level and in the mid block, head width 16: 1.45 M parameters, 12 attention
    layers, 48 LoRA target projections. (Attention at the 32x32 level too, or SD's head count of 8 at these
    widths, makes a CPU training step 2-7x slower for no gain in what the tests exercise); VAE with 4 blocks (scale factor 8, like SD) of (16, 32, 64, 64)
    channels, so the native resolution is 256 px; CLIP text encoder with 2 layers of width 32 and a
    vocabulary holding every corpus word (1290 tokens); EulerDiscreteScheduler with SD 1.5's betas and steps_offset=1. About 2 MB on
    disk; the same seed writes byte-identical weight files.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    vocab, merges = train_tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),  # heads per block (SD's legacy naming): head width 16
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 64, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=256,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    private_dir(folder)
    with _quiet_progress():
        pipe.save_pretrained(folder, safe_serialization=True)
    make_private(folder)  # diffusers writes with the umask's modes: folders 0700, files 0600
