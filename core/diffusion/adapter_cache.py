"""The adapter cache of the inference side: user LoRA adapters fetched from the blob store, kept LRU by bytes.

The file format, its parser and `AdapterCorrupt` are in adapter_format.py (the trainer writes what it reads).

Owns:

* `AdapterCache(store, max_bytes)`: `get(model_version_key, blob_id, key_id)` returns the parsed state dict,
  from memory or fetched with the blob store (it must be a store of the ORDER role, the only one that may read
  `models/`), which opens the sealed blob with the owner's data key `key_id` (core/blobstore/base.py): an
  entry is a hit only for the same blob id and key id; a shredded key reads as a missing adapter
  (AdapterNotFound), one that does not open as a corrupt one (AdapterCorrupt); bounded by the total bytes of the cached tensors, least recently used evicted first;
  `evict(key)` drops one (a model pending deletion); counts hits, misses and evictions. Thread-safe:
  concurrent `get`s of one key fetch it once (the others wait for that fetch), and the blob store is never
  called with the cache's lock held. An adapter larger than `max_bytes` is returned but not kept.
  With `base_fingerprint` set, an adapter whose embedded training metadata names another base is refused
  (`AdapterMismatchedBase`). With `prepare` (e.g. `BatchedGenerator.prepare_adapter`), what is cached and
  returned is the prepared adapter (checked against the base and placed on the device once per fetch, not
  once per request); one that does not fit the base is refused (`AdapterMismatchedBase`). The byte bound
  counts the parsed tensors. Every stored adapter is parsed (`parse_adapter_bytes`) before it is cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from faceharmony.core.blobstore.base import PERMISSIONS, BlobNotFound, BlobStore, Op
from faceharmony.core.diffusion.adapter_format import (
    AdapterCorrupt,
    AdapterError,
    adapter_metadata,
    parse_adapter_bytes,
)
from faceharmony.core.keys.errors import CiphertextInvalid, KeyShredded


class AdapterNotFound(AdapterError):
    """No blob with that id (deleted, or never written), or its owner's data key was shredded (the purge)."""


class AdapterMismatchedBase(AdapterError):
    """The adapter was trained on another base model."""


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # fetches from the store (a wait on another thread's fetch counts as a hit)
    evictions: int = 0  # dropped to stay within max_bytes
    entries: int = 0
    bytes: int = 0


@dataclass
class _Entry:
    ref: tuple[str, str]  # (blob id, data key id)
    adapter: Any  # the parsed state dict, or what `prepare` made of it
    nbytes: int


class _Flight:
    def __init__(self, ref: tuple[str, str]) -> None:
        self.ref = ref
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False


class AdapterCache:
    """LRU of parsed adapters keyed by model version, bounded by the total bytes of their tensors."""

    def __init__(
        self,
        store: BlobStore,
        max_bytes: int,
        *,
        base_fingerprint: str | None = None,
        prepare: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    ) -> None:
        if Op.READ not in PERMISSIONS[store.role].get("models", frozenset()):
            raise ValueError(
                f"the adapter cache needs a blob store that may read models/ (role order), not {store.role.value}"
            )
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.store = store
        self.max_bytes = int(max_bytes)
        self.base_fingerprint = base_fingerprint
        self.prepare = prepare
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._inflight: dict[Hashable, _Flight] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    # -- reading

    def get(self, key: Hashable, blob_id: str, key_id: str) -> Any:
        """The adapter of model version `key`, stored as blob `blob_id` sealed with data key `key_id`.

        Raises AdapterNotFound (no such blob, or the key was shredded), AdapterCorrupt (also: the blob does not
        open with that key), AdapterMismatchedBase, or for a transient failure (nothing is cached) the store's
        BlobError or KeysUnavailable. A cached entry under `key` with another blob id or key id is replaced.
        """
        ref = (blob_id, key_id)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.ref == ref:
                    self._entries.move_to_end(key)
                    self._hits += 1
                    return entry.adapter
                flight = self._inflight.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._inflight[key] = _Flight(ref)
                    self._misses += 1
            if leader:
                return self._fetch(key, flight)
            flight.done.wait()
            if flight.ref != ref:
                continue  # that fetch was for another blob (or key); look again
            if flight.error is not None:
                raise flight.error
            with self._lock:
                self._hits += 1
            return flight.result

    def _fetch(self, key: Hashable, flight: _Flight) -> Any:
        try:
            adapter, nbytes = self._load(*flight.ref)
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                self._inflight.pop(key, None)
            flight.done.set()
            raise
        with self._lock:
            self._inflight.pop(key, None)
            if not flight.cancelled and nbytes <= self.max_bytes:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._entries[key] = _Entry(flight.ref, adapter, nbytes)
                self._bytes += nbytes
                while self._bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= dropped.nbytes
                    self._evictions += 1
        flight.result = adapter
        flight.done.set()
        return adapter

    def _load(self, blob_id: str, key_id: str) -> tuple[Any, int]:
        """(the adapter as cached, the bytes it counts)."""
        try:
            data = self.store.read("models", blob_id, key_id=key_id)
        except BlobNotFound:
            raise AdapterNotFound(f"adapter blob {blob_id} not found") from None
        except KeyShredded:
            raise AdapterNotFound(f"adapter blob {blob_id}: its data key was shredded") from None
        except CiphertextInvalid:
            raise AdapterCorrupt(f"adapter blob {blob_id} does not open with its data key") from None
        tensors = parse_adapter_bytes(data)
        if self.base_fingerprint is not None:
            trained_on = adapter_metadata(data).get("base_fingerprint")
            if trained_on is not None and trained_on != self.base_fingerprint:
                raise AdapterMismatchedBase(f"adapter blob {blob_id} was trained on another base model")
        nbytes = tensor_bytes(tensors)
        if self.prepare is None:
            return tensors, nbytes
        try:
            return self.prepare(tensors), nbytes
        except ValueError as exc:  # multi_lora.AdapterMismatch: layer names or widths of another base
            raise AdapterMismatchedBase(
                f"adapter blob {blob_id} does not fit the base model: {str(exc)[:200]}"
            ) from None

    # -- management

    def evict(self, key: Hashable) -> bool:
        """Drop `key` (and keep a fetch of it now in flight from being cached); True if it was cached."""
        with self._lock:
            flight = self._inflight.get(key)
            if flight is not None:
                flight.cancelled = True
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry.nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            for flight in self._inflight.values():
                flight.cancelled = True
            self._entries.clear()
            self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._bytes)


__all__ = [
    "AdapterCache",
    "AdapterCorrupt",
    "AdapterError",
    "AdapterMismatchedBase",
    "AdapterNotFound",
    "CacheStats",
    "tensor_bytes",
]
