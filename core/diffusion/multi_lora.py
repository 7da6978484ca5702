"""Mixed-adapter LoRA for one UNet forward: every sample of a batch gets its own adapter.

Owns:

* `LoRAWeights`: one adapter validated against a UNet and laid out per projection layer
  (`down` (r, in), `up` (out, r), on the UNet's device and dtype), made by `prepare_lora`.
* `MultiLoRALinear`: a wrapper around one attention projection `nn.Linear` (to_q, to_k, to_v, to_out.0).
  For an input batch x of R rows it returns `base(x) + bmm(bmm(x, A_s^T), B_s^T)`, where A_s, B_s are the
  matrices of row s's adapter, gathered from per-adapter stacks by an index tensor. Adapters of different
  ranks are zero-padded to the batch's largest rank: the padded rows of A and columns of B are exactly zero,
  so they add exact zeros and the result equals the unpadded product. Rows without an adapter point at an
  all-zero slot (slot 0) and get `base(x) + 0`, i.e. exactly the base output. When every row uses the same
  adapter the layer takes a plain (broadcast) matmul path instead of `bmm`; layers no row's adapter touches
  run the bare `base(x)`.
* `install_multi_lora(unet)` / `uninstall_multi_lora(unet)`: wrap the UNet's target projections in place
  and put the very same `nn.Linear` objects back, so the UNet's modules, parameters and state dict are
  exactly as before. `MultiLoRAHandle.batch(adapters, index)` is the context manager that sets the
  per-row adapter set before a forward and clears it afterwards.

Classifier-free guidance: the caller builds the UNet batch (e.g. [uncond rows, cond rows]) and passes one
index entry per *row*, i.e. repeats each sample's index for its unconditional row. Nothing here knows
about prompts or guidance.

The gather (index_select of the stacks, one per layer) happens once when the batch is set, not in every
forward: a denoising loop runs the same batch through the UNet `steps` times.

The adapter state dict format is adapter_format.py's (what the trainer writes): keys
`unet.<module path>.<to_q|to_k|to_v|to_out.0>.lora.<down|up>.weight` (peft's `lora_A`/`lora_B` spelling
accepted), alpha already folded into `up`, so the LoRA scale is 1.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from faceharmony.core.diffusion.adapter_format import DOWN_HALVES, LORA_KEY

TARGET_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


class AdapterMismatch(ValueError):
    """A LoRA state dict is malformed or does not fit this UNet (unknown layer, wrong shape, bad values)."""


@dataclass(eq=False)
class LoRAWeights:
    """One adapter ready for `MultiLoRALinear`: {layer path: (down (r, in), up (out, r))} on the UNet's device.

    Compared by identity: two requests carrying the same `LoRAWeights` object share one slot of a batch.
    """

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int  # the largest rank over its layers
    nbytes: int = 0
    name: str = ""  # free-form label for logs
    meta: dict = field(default_factory=dict)


def target_layers(unet: nn.Module, targets: Sequence[str] = TARGET_PROJECTIONS) -> dict[str, nn.Module]:
    """{dotted path: module} of the UNet's attention projections named by `targets`, wrapped or not."""
    found: dict[str, nn.Module] = {}
    for name, module in unet.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and isinstance(
            module, (nn.Linear, MultiLoRALinear)
        ):
            found[name] = module
    return found


def _layer_shapes(unet: nn.Module) -> dict[str, tuple[int, int]]:
    shapes = {}
    for name, module in target_layers(unet).items():
        base = module.base if isinstance(module, MultiLoRALinear) else module
        shapes[name] = (base.in_features, base.out_features)
    return shapes


def prepare_lora(
    state_dict: Mapping[str, torch.Tensor],
    unet: nn.Module,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    name: str = "",
) -> LoRAWeights:
    """Validate a LoRA state dict against `unet` and lay it out per layer; raise AdapterMismatch if it does not fit.

    Checks: every key is a UNet attention-projection LoRA key, each layer has both halves, down is (r, in) and
    up is (out, r) for that layer's Linear, tensors are floating point and finite. Layers the adapter does not
    name simply get no delta. Tensors are copied to the UNet's device and dtype (or those given).
    """
    if not isinstance(state_dict, Mapping):
        raise AdapterMismatch(f"adapter must be a mapping of tensors, not {type(state_dict).__name__}")
    if not state_dict:
        raise AdapterMismatch("adapter holds no tensors")
    ref = next(iter(unet.parameters()))
    device = torch.device(device) if device is not None else ref.device
    dtype = dtype or ref.dtype
    shapes = _layer_shapes(unet)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        m = LORA_KEY.fullmatch(key) if isinstance(key, str) else None
        if not m:
            raise AdapterMismatch(f"unexpected key in adapter: {str(key)[:120]!r}")
        if not isinstance(tensor, torch.Tensor):
            raise AdapterMismatch(f"adapter value for {key[:120]!r} is not a tensor")
        half = "down" if m["half"] in DOWN_HALVES else "up"
        if half in halves.setdefault(m["layer"], {}):
            raise AdapterMismatch(f"adapter names layer {m['layer'][:120]!r} twice")
        halves[m["layer"]][half] = tensor
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    nbytes, rank = 0, 0
    for path, pair in halves.items():
        if path not in shapes:
            raise AdapterMismatch(f"adapter layer {path[:120]!r} is not an attention projection of this base model")
        if set(pair) != {"down", "up"}:
            raise AdapterMismatch(f"adapter layer {path[:120]!r} lacks its {'up' if 'down' in pair else 'down'} half")
        down, up = pair["down"], pair["up"]
        in_f, out_f = shapes[path]
        if (
            down.ndim != 2
            or up.ndim != 2
            or down.shape[1] != in_f
            or up.shape[0] != out_f
            or up.shape[1] != down.shape[0]
        ):
            raise AdapterMismatch(
                f"adapter layer {path[:120]!r} has shapes {tuple(down.shape)}, {tuple(up.shape)}; "
                f"this base needs (r, {in_f}), ({out_f}, r)"
            )
        if down.shape[0] < 1:
            raise AdapterMismatch(f"adapter layer {path[:120]!r} has rank 0")
        if not (down.is_floating_point() and up.is_floating_point()):
            raise AdapterMismatch(f"adapter layer {path[:120]!r} is not floating point")
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
            raise AdapterMismatch(f"adapter layer {path[:120]!r} holds non-finite values")
        d = down.detach().to(device=device, dtype=dtype).contiguous()
        u = up.detach().to(device=device, dtype=dtype).contiguous()
        layers[path] = (d, u)
        nbytes += d.numel() * d.element_size() + u.numel() * u.element_size()
        rank = max(rank, d.shape[0])
    return LoRAWeights(layers=layers, rank=rank, nbytes=nbytes, name=name)


class MultiLoRALinear(nn.Module):
    """An `nn.Linear` plus a per-row LoRA delta. Holds the original layer as `base`; adds nothing when unset.

    Modes, chosen by `set_rows`:
      * none:   `base(x)` (no row's adapter touches this layer);
      * shared: every row has the same adapter: `base(x) + (x A^T) B^T` with plain matmuls;
      * mixed:  `base(x) + bmm(bmm(x, A_rows^T), B_rows^T)` with A_rows (R, r_max, in) and B_rows (R, out, r_max)
                gathered from stacks whose slot 0 is all zeros (rows without an adapter).
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self._mode = "none"
        self._down: torch.Tensor | None = None  # shared: (r, in); mixed: (R, in, r_max) (a transposed view)
        self._up: torch.Tensor | None = None  # shared: (out, r); mixed: (R, r_max, out)
        self._rows = 0

    # Attributes some diffusers code reads from a projection layer directly.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def mode(self) -> str:
        return self._mode

    def clear(self) -> None:
        self._mode, self._down, self._up, self._rows = "none", None, None, 0

    def set_shared(self, down: torch.Tensor, up: torch.Tensor) -> None:
        self._mode, self._down, self._up, self._rows = "shared", down, up, 0

    def set_stacked(self, down_stack: torch.Tensor, up_stack: torch.Tensor, slot_index: torch.Tensor) -> None:
        """down_stack (S, r_max, in), up_stack (S, out, r_max), slot 0 all zeros; slot_index (R,) long in [0, S)."""
        down_rows = down_stack.index_select(0, slot_index)  # (R, r_max, in)
        up_rows = up_stack.index_select(0, slot_index)  # (R, out, r_max)
        self._mode = "mixed"
        self._down = down_rows.transpose(1, 2)  # (R, in, r_max)
        self._up = up_rows.transpose(1, 2)  # (R, r_max, out)
        self._rows = int(slot_index.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._mode == "none":
            return y
        down, up = self._down, self._up
        if down.dtype != x.dtype:  # type: ignore[union-attr]  # both are set whenever the mode is not "none"
            down, up = down.to(x.dtype), up.to(x.dtype)  # type: ignore[union-attr]
        if self._mode == "shared":
            return y + F.linear(F.linear(x, down), up)
        rows = x.shape[0]
        if rows != self._rows:
            raise RuntimeError(f"multi-LoRA batch set for {self._rows} rows, but the forward has {rows}")
        h = torch.bmm(x.reshape(rows, -1, x.shape[-1]), down)  # (R, L, r_max)
        return y + torch.bmm(h, up).view(y.shape)

    def extra_repr(self) -> str:
        return f"mode={self._mode}"


def _set_child(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


# Installed UNets -> their handle (weak: a UNet that is garbage collected takes its handle along).
_HANDLES: weakref.WeakKeyDictionary[nn.Module, MultiLoRAHandle] = weakref.WeakKeyDictionary()


class MultiLoRAHandle:
    """The wrapped projections of one UNet; set a batch's adapters with `batch(...)`."""

    def __init__(self, unet: nn.Module, wrappers: dict[str, MultiLoRALinear]) -> None:
        self.unet = unet
        self.layers = wrappers

    def set_batch(self, adapters: Sequence[LoRAWeights], index: Sequence[int] | torch.Tensor) -> None:
        """Per row r of the coming forwards, apply `adapters[index[r]]`, or nothing where index[r] == -1.

        `adapters` should hold each adapter once (requests that share an adapter share its index). With
        classifier-free guidance the caller repeats a sample's index for each of its rows.
        """
        idx = torch.as_tensor(index, dtype=torch.long).flatten().cpu()
        n = len(adapters)
        if idx.numel() == 0:
            raise ValueError("empty batch index")
        if int(idx.min()) < -1 or int(idx.max()) >= n:
            raise ValueError(f"batch index out of range for {n} adapters")
        used = sorted({int(i) for i in idx.tolist() if i >= 0})
        for path, layer in self.layers.items():
            having = [i for i in used if path in adapters[i].layers]
            if not having:
                layer.clear()
                continue
            first = adapters[having[0]].layers[path]
            if len(used) == 1 and int(idx.min()) >= 0:  # every row has this one adapter
                layer.set_shared(*first)
                continue
            # Slot 0 is the zero adapter; adapter i (when it has this layer) is slot 1 + position in `having`.
            r_max = max(adapters[i].layers[path][0].shape[0] for i in having)
            down0, up0 = first
            down_stack = down0.new_zeros((len(having) + 1, r_max, down0.shape[1]))
            up_stack = up0.new_zeros((len(having) + 1, up0.shape[0], r_max))
            slot_of = torch.zeros(n + 1, dtype=torch.long)  # entry 0 stands for index -1
            for slot, i in enumerate(having, start=1):
                d, u = adapters[i].layers[path]
                down_stack[slot, : d.shape[0]] = d
                up_stack[slot, :, : u.shape[1]] = u
                slot_of[i + 1] = slot
            slot_index = slot_of.index_select(0, idx + 1).to(down0.device)
            layer.set_stacked(down_stack, up_stack, slot_index)

    def clear(self) -> None:
        for layer in self.layers.values():
            layer.clear()

    @contextlib.contextmanager
    def batch(self, adapters: Sequence[LoRAWeights], index: Sequence[int] | torch.Tensor) -> Iterator[MultiLoRAHandle]:
        """Context manager form of `set_batch`; the adapter set is cleared on exit (also after an error)."""
        self.set_batch(adapters, index)
        try:
            yield self
        finally:
            self.clear()


def _check_installable(unet: nn.Module) -> None:
    for name, module in unet.named_modules():
        if type(module).__module__.startswith("peft."):
            raise RuntimeError(
                f"the UNet carries a peft adapter layer ({name}); unload it before installing multi-LoRA"
            )
        if getattr(module, "fused_projections", False):
            raise RuntimeError(f"attention {name} has fused QKV projections, which bypass to_q/to_k/to_v")


def install_multi_lora(unet: nn.Module, targets: Sequence[str] = TARGET_PROJECTIONS) -> MultiLoRAHandle:
    """Wrap the UNet's target projections in place (idempotent: an installed UNet returns its handle)."""
    handle = _HANDLES.get(unet)
    if handle is not None:
        return handle
    _check_installable(unet)
    wrappers: dict[str, MultiLoRALinear] = {}
    for path, module in target_layers(unet, targets).items():
        if isinstance(module, MultiLoRALinear):  # wrapped by an install whose handle was lost
            raise RuntimeError(f"{path} is already wrapped by another multi-LoRA install")
        wrapper = MultiLoRALinear(module)
        _set_child(unet, path, wrapper)
        wrappers[path] = wrapper
    if not wrappers:
        raise RuntimeError(f"the UNet has no {'/'.join(targets)} Linear layers to adapt")
    handle = MultiLoRAHandle(unet, wrappers)
    _HANDLES[unet] = handle
    return handle


def uninstall_multi_lora(unet: nn.Module) -> bool:
    """Put the original Linear objects back; True if something was installed."""
    handle = _HANDLES.pop(unet, None)
    if handle is None:
        return False
    for path, wrapper in handle.layers.items():
        wrapper.clear()
        _set_child(unet, path, wrapper.base)
    return True


@contextlib.contextmanager
def installed(unet: nn.Module, targets: Sequence[str] = TARGET_PROJECTIONS) -> Iterator[MultiLoRAHandle]:
    """Install for the duration of a block; uninstall afterwards unless it was already installed before."""
    was = _HANDLES.get(unet) is not None
    handle = install_multi_lora(unet, targets)
    try:
        yield handle
    finally:
        if not was:
            uninstall_multi_lora(unet)


__all__ = [
    "TARGET_PROJECTIONS",
    "AdapterMismatch",
    "LoRAWeights",
    "MultiLoRAHandle",
    "MultiLoRALinear",
    "install_multi_lora",
    "installed",
    "prepare_lora",
    "target_layers",
    "uninstall_multi_lora",
]
