"""`faceharmony-order-worker`: claims orders from the database queue and has Triton make their images.

    faceharmony-order-worker           loop until SIGTERM/SIGINT (the orders in hand are handed back)
    faceharmony-order-worker --once    process at most one order, then exit

One worker holds up to FACEHARMONY_ORDER_WORKER_ORDERS orders at once and keeps up to
FACEHARMONY_ORDER_WORKER_INFLIGHT image requests in flight at Triton (gRPC, one request per image), so
Triton's dynamic batcher sees requests of many orders and users together and serves them in one
denoising loop. With several Triton replicas (FACEHARMONY_TRITON_REPLICAS), every image of one model version
goes to the same replica by rendezvous hashing, so its adapter is fetched once and its images batch together;
a replica that does not answer fails over to the next in the key's hash order (order_worker/routing.py). Per image: the worker checks the model may still be served (not pending deletion, the
account active: P13, P17), asks Triton, encodes the PNG and a small JPEG preview, stores both with the
order-processor role, and records the photo in one transaction fenced by its lease (`core/jobs/orders.py`).
Both are sealed with the order's data key (the owner's: core/blobstore/base.py) before they reach the store; the
worker tells Triton the adapter's blob id and the data key id it was sealed with (ADAPTER_KEY_ID), and Triton
opens it with its own keyring. Triton answers the image sealed with that same key (IMAGE_SEALED, bound to the
request: core/diffusion/sealed_image.py), so no pixel is in Triton's shared-memory files or on the wire in the
clear; the worker opens it in memory (an image that does not open fails: CIPHERTEXT_INVALID). The worker opens
the process's keyring at start-up (install_keyring).

Failure handling:
* Triton unreachable or overloaded: the image is retried with capped exponential backoff for as long as
  the worker holds the order (heartbeats keep the lease); nothing is failed or refunded meanwhile.
* Triton refuses an image (adapter gone, invalid input): that image fails and its credits are refunded;
  the order's other images go on.
* A model deleted mid-order: its remaining images fail (MODEL_DELETED) and are refunded.
* Models that may no longer be served (deleted, account deactivated or purged) leave Triton's adapter
  cache: every EVICT_SWEEP_SECONDS the worker takes the pending eviction records (core/jobs/evictions.py), asks
  each configured Triton replica to drop the keys it has not confirmed (EVICT_KEYS), and records each
  replica's confirmation; a replica that fails or is unreachable is asked again at the next sweep, by this
  worker or another. An image request that was at Triton when its model became unservable requests the
  eviction again (Triton may have fetched the adapter after the sweep).
* The worker dies: the lease lapses, another worker claims the order and fills only the slots still
  pending (each slot is recorded once; blobs of an unrecorded image are swept as orphans).
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import peewee as pw
from PIL import Image

from faceharmony.core import metrics
from faceharmony.core.blobstore.base import BlobError, BlobStore, Role
from faceharmony.core.clock import Clock, SystemClock
from faceharmony.core.db.connection import open_database, write_transaction
from faceharmony.core.db.models import JobState, ModelVersion, Order, OrderImage, UserModel
from faceharmony.core.diffusion.sealed_image import open_image
from faceharmony.core.jobs import evictions, styles
from faceharmony.core.jobs.orders import OrderQueue, unservable_reason
from faceharmony.core.jobs.queue import Claim, default_worker_id
from faceharmony.core.keys.aead import triton_image_aad
from faceharmony.core.keys.errors import CiphertextInvalid, KeyShredded, KeysUnavailable
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.keyring import keyring as process_keyring
from faceharmony.core.settings import Settings
from faceharmony.core.triton_streaming import DECOUPLED_MODELS, ThreadStreams, status_of
from faceharmony.order_worker.routing import FAILOVER_STATUSES, Router

log = logging.getLogger("faceharmony.order_worker")

RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
EVICT_SWEEP_SECONDS = 10.0
# Triton answers that are worth retrying (the server, not the request, is the problem).
RETRYABLE_STATUSES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "CANCELLED",
    "ABORTED",
    "UNKNOWN",
    "INTERNAL",
)
# An image that keeps failing with a retryable internal error is given up after this many tries.
MAX_INTERNAL_TRIES = 3


class TritonRetryable(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class TritonRejected(Exception):
    """Triton refused this one request; `reason` is the stable reason the image fails with."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# tritonclient's own channel options (its defaults are replaced whole by channel_args), plus a reconnect backoff
# bounded at a few seconds instead of gRPC's 120 s: a replica that comes back is reached again within seconds,
# when the router's down while (order_worker/routing.py) sends its models back to it.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]

model_key = evictions.model_key  # the adapter-cache key Triton uses for a model version


class TritonImages:
    """The Triton side of the worker: one image per gRPC request, a client per thread. Triton answers each image
    sealed with the request's ADAPTER_KEY_ID (IMAGE_SEALED, core/diffusion/sealed_image.py); `keyring`
    (default: the process's) opens it."""

    def __init__(self, url: str, model: str, timeout: float, keyring: Keyring | None = None) -> None:
        self.url, self.model, self.timeout = url, model, timeout
        self.keyring = keyring if keyring is not None else process_keyring
        self.streaming = model in DECOUPLED_MODELS
        self._local = threading.local()
        self._streams = ThreadStreams(self._client)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpcclient

            client = self._local.client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return client

    @staticmethod
    def _input(name: str, value, dtype: str):
        import tritonclient.grpc as grpcclient

        np_type = {"BYTES": object, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32}[dtype]
        arr = np.array([[value]], dtype=np_type)
        x = grpcclient.InferInput(name, list(arr.shape), dtype)
        x.set_data_from_numpy(arr)
        return x

    def _call(self, inputs, outputs: list[str]):
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
            if self.streaming:
                result = self._streams.call(self.model, inputs, requested, self.timeout)
            else:
                result = self._client().infer(self.model, inputs, outputs=requested, client_timeout=self.timeout)
        except InferenceServerException as exc:
            # The model answers with status codes (model.py): NOT_FOUND for a missing adapter, UNAVAILABLE
            # when its blob store is down, INVALID_ARG for a bad request; on a stream, in the message.
            status = status_of(exc)
            metrics.TRITON_REQUESTS.labels(self.url, status or "UNAVAILABLE").inc()
            if status in RETRYABLE_STATUSES or not status:
                raise TritonRetryable(status or "UNAVAILABLE") from None
            if status == "NOT_FOUND":
                raise TritonRejected("MODEL_DELETED") from None
            raise TritonRejected("GENERATION_REFUSED") from None
        metrics.TRITON_REQUESTS.labels(self.url, "OK").inc()
        return result

    def generate(
        self,
        *,
        adapter_blob_id: str,
        adapter_key_id: str,
        key: str,
        prompt: str,
        negative: str,
        seed: int,
        steps: int,
        guidance: float,
        width: int,
        height: int,
    ) -> np.ndarray:
        """The image's [H, W, 3] uint8 pixels, opened here from the sealed bytes Triton returned. Raises
        TritonRetryable, TritonRejected (also CIPHERTEXT_INVALID: what came back does not open as this request's
        image with its key), KeyShredded (the key is gone: the owner is being purged) or KeysUnavailable."""
        inputs = [
            self._input("PROMPT", prompt.encode(), "BYTES"),
            self._input("NEGATIVE_PROMPT", negative.encode(), "BYTES"),
            self._input("ADAPTER_BLOB_ID", adapter_blob_id.encode(), "BYTES"),
            self._input("ADAPTER_KEY_ID", adapter_key_id.encode(), "BYTES"),
            self._input("MODEL_VERSION_KEY", key.encode(), "BYTES"),
            self._input("SEED", seed, "INT64"),
            self._input("STEPS", steps, "INT32"),
            self._input("GUIDANCE", guidance, "FP32"),
        ]
        if width and height:
            inputs += [self._input("WIDTH", width, "INT32"), self._input("HEIGHT", height, "INT32")]
        started = time.monotonic()
        try:
            sealed = self._call(inputs, ["IMAGE_SEALED"]).as_numpy("IMAGE_SEALED")
        finally:
            metrics.TRITON_SECONDS.labels(self.url).observe(time.monotonic() - started)
        if sealed is None or sealed.shape != (1, 1) or not isinstance(sealed[0, 0], bytes):
            raise TritonRejected("CIPHERTEXT_INVALID")
        aad = triton_image_aad(adapter_blob_id, key, seed, adapter_key_id)
        try:
            return open_image(self.keyring, adapter_key_id, sealed[0, 0], aad)
        except CiphertextInvalid as exc:
            raise TritonRejected(exc.reason) from None

    def evict(self, keys: list[str]) -> int:
        import tritonclient.grpc as grpcclient

        arr = np.array([[k.encode() for k in keys]], dtype=object)
        x = grpcclient.InferInput("EVICT_KEYS", list(arr.shape), "BYTES")
        x.set_data_from_numpy(arr)
        return int(self._call([x], ["EVICTED"]).as_numpy("EVICTED")[0, 0])


class RoutedTriton:
    """Images from the Triton replicas, each model version's from its own replica by rendezvous hashing, failing
    over to the next replica in its hash order when one does not answer (order_worker/routing.py). The same
    `generate` as TritonImages: a failover happens inside one call, so an image is asked again elsewhere only
    when its replica did not answer, and its slot is still recorded once."""

    def __init__(
        self,
        replicas: Sequence[str],
        model: str,
        timeout: float,
        keyring: Keyring | None = None,
        *,
        policy: str = "rendezvous",
    ) -> None:
        self.router = Router(replicas, policy=policy)
        self.clients = {r: TritonImages(r, model, timeout, keyring) for r in self.router.replicas}
        self.url = self.router.replicas[0]
        for replica in self.router.replicas:
            metrics.TRITON_UP.labels(replica).set(1)

    def generate(self, *, key: str, **request) -> np.ndarray:
        last: TritonRetryable | None = None
        for replica in self.router.order(key):
            try:
                pixels = self.clients[replica].generate(key=key, **request)
            except TritonRetryable as exc:
                if exc.status not in FAILOVER_STATUSES:
                    self._answered(replica)
                    raise
                if not self.router.is_down(replica):
                    seconds = self.router.failed(replica)
                    metrics.TRITON_UP.labels(replica).set(0)
                    log.warning(
                        "Triton replica did not answer: its models go to the next replica",
                        extra={"replica": replica, "status": exc.status, "down_seconds": seconds},
                    )
                last = exc
                metrics.TRITON_FAILOVERS.inc()
                continue
            except TritonRejected:
                self._answered(replica)
                raise
            self._answered(replica)
            return pixels
        assert last is not None
        raise last

    def _answered(self, replica: str) -> None:
        metrics.TRITON_UP.labels(replica).set(1)
        if self.router.answered(replica):
            log.info("Triton replica answers again: its models come back to it", extra={"replica": replica})


def encode(pixels: np.ndarray, preview_max_side: int) -> tuple[bytes, bytes]:
    """The stored PNG and its JPEG preview."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    png = io.BytesIO()
    image.save(png, "PNG", optimize=False)
    preview = image.copy()
    preview.thumbnail((preview_max_side, preview_max_side), Image.Resampling.LANCZOS)
    jpeg = io.BytesIO()
    preview.save(jpeg, "JPEG", quality=85)
    return png.getvalue(), jpeg.getvalue()


@dataclass
class _Held:
    claim: Claim
    lost: threading.Event


class OrderWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        store: BlobStore | None = None,
        db: pw.Database | None = None,
        triton: TritonImages | None = None,
        replicas: Sequence[str] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        """`keyring`: default, the configured one, opened, checked and made the process's (KekMissing or
        KeysUnavailable when it is not usable)."""
        from faceharmony.core.blobstore.factory import open_blob_store
        from faceharmony.core.keys.factory import install_keyring

        self.settings = settings
        self.keyring = keyring or install_keyring(settings)
        self.clock = clock or SystemClock()
        self.worker_id = worker_id or default_worker_id()
        self.db = db or open_database(
            settings.resolved_database_url, pool_size=settings.order_worker_inflight + settings.order_worker_orders + 2
        )
        self.queue = OrderQueue(self.db, self.clock, settings.order_lease_seconds)
        self.store = store or open_blob_store(settings, Role.ORDER, self.keyring)
        # The Triton replicas: each routed to (RoutedTriton) and each of whose adapter caches must confirm an
        # eviction (core/jobs/evictions.py).
        self.replicas = tuple(replicas or evictions.replicas(settings))
        self.triton: TritonImages | RoutedTriton = triton or RoutedTriton(
            self.replicas, settings.triton_model, settings.triton_timeout_seconds, self.keyring
        )
        self.shutting_down = threading.Event()
        self._held: dict[str, _Held] = {}
        self._held_lock = threading.Lock()
        self._images = concurrent.futures.ThreadPoolExecutor(settings.order_worker_inflight, thread_name_prefix="image")
        self._evictors: dict[str, TritonImages] = {}
        self._last_evict_sweep: float = 0.0

    # --- the loop ------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("order worker started", extra={"worker": self.worker_id})
        # Heartbeats go on while the pools drain on shutdown: an image still at Triton keeps its order's lease.
        beats_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(beats_stop,), name="heartbeat", daemon=True)
        beat.start()
        orders = concurrent.futures.ThreadPoolExecutor(self.settings.order_worker_orders, thread_name_prefix="order")
        running: set[concurrent.futures.Future] = set()
        try:
            while not self.shutting_down.is_set():
                self._evict_sweep()
                running = {f for f in running if not f.done()}
                claimed = False
                if len(running) < self.settings.order_worker_orders:
                    claim = self._claim()
                    if claim is not None:
                        running.add(orders.submit(self._run_claim, claim))
                        claimed = True
                if not claimed:
                    self.shutting_down.wait(self.settings.order_worker_poll_seconds)
        finally:
            orders.shutdown(wait=True)
            self._images.shutdown(wait=True)
            beats_stop.set()
            beat.join()
            log.info("order worker stopped", extra={"worker": self.worker_id})

    def run_once(self) -> bool:
        """Claims one order and processes it to the end (with heartbeats); False when none was due."""
        self._evict_sweep()
        claim = self._claim()
        if claim is None:
            return False
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(stop,), name="heartbeat", daemon=True)
        beat.start()
        try:
            self._run_claim(claim)
        finally:
            stop.set()
            beat.join()
        return True

    def close(self) -> None:
        self._images.shutdown(wait=True)

    def _db(self, fn, *args, **kwargs):
        """Runs fn with a database connection taken for just this call (returned to the pool after): a
        thread never holds a connection while it waits on Triton or sleeps."""
        with self.db.connection_context():
            return fn(*args, **kwargs)

    def _claim(self) -> Claim | None:
        try:
            claim = self._db(self.queue.claim, self.worker_id)
        except pw.DatabaseError:
            log.warning("order claim failed (database)", exc_info=True)
            return None
        if claim is not None:
            with self._held_lock:
                self._held[claim.job_id] = _Held(claim, threading.Event())
            log.info("order claimed", extra={"order_id": claim.job_id, "attempt": claim.attempt})
        return claim

    def _run_claim(self, claim: Claim) -> None:
        try:
            self.process(claim)
        except Exception:
            log.exception("order failed", extra={"order_id": claim.job_id})
            try:
                self._db(lambda: self.queue.fail(claim, "ORDER_ERROR", retryable=True))
            except Exception:  # noqa: BLE001 - the lease lapses and another worker takes the order
                log.warning("order could not be handed back", extra={"order_id": claim.job_id})
        finally:
            with self._held_lock:
                held = self._held.pop(claim.job_id, None)
            if held is not None:
                held.lost.set()  # its images still queued or retrying stop; a late one is fenced out anyway

    def _heartbeats(self, stop: threading.Event) -> None:
        interval = max(0.2, min(2.0, self.settings.order_lease_seconds / 4))
        while not stop.wait(interval):
            with self._held_lock:
                held = list(self._held.values())
            for h in held:
                try:
                    if not self._db(self.queue.heartbeat, h.claim):
                        h.lost.set()
                except Exception:  # noqa: BLE001 - the lease may lapse; the fenced writes keep it safe
                    log.warning("heartbeat failed", extra={"order_id": h.claim.job_id})

    # --- one order ---------------------------------------------------------------------------
    def _lost(self, claim: Claim) -> threading.Event:
        with self._held_lock:
            held = self._held.get(claim.job_id)
        return held.lost if held is not None else threading.Event()

    def process(self, claim: Claim) -> None:
        lost = self._lost(claim)
        account_id, key_id, work = self._db(self._plan, claim)
        futures = [self._images.submit(self._make_image, claim, account_id, key_id, lost, *item) for item in work]
        for future in concurrent.futures.as_completed(futures):
            future.result()
        self._db(self._conclude, claim, lost)

    def _plan(self, claim: Claim) -> tuple[str, str, list[tuple]]:
        """(the order's account and data key, the images still to make); fails at once those of models that may
        no longer be served."""
        order = Order.get_by_id(claim.job_id)
        style = styles.get(order.style_id)
        slots = self.queue.pending_slots(claim)
        if style is None:
            self.queue.fail_image(claim, [s.id for s in slots], "UNKNOWN_STYLE")
            slots = []
        by_model: dict[tuple[str, int], list[OrderImage]] = {}
        for slot in slots:
            by_model.setdefault((slot.model_id, slot.model_version), []).append(slot)
        work = []
        for (model_id, version), group in by_model.items():
            reason = unservable_reason(order.account_id, model_id)
            model = UserModel.get_or_none(UserModel.id == model_id)
            adapter = ModelVersion.get_or_none(ModelVersion.model == model_id, ModelVersion.version == version)
            if reason is None and (model is None or adapter is None):
                reason = "MODEL_DELETED"
            if reason is not None:
                self.queue.fail_image(claim, [s.id for s in group], reason)
                continue
            prompt = style.prompt_for(model.trigger_token)
            for slot in group:
                work.append(
                    (
                        slot,
                        adapter.adapter_blob_id,
                        adapter.key_id,
                        model_key(model_id, version),
                        prompt,
                        style.negative_prompt,
                    )
                )
        return order.account_id, order.key_id, work

    def _conclude(self, claim: Claim, lost: threading.Event) -> None:
        if self.shutting_down.is_set() and self.queue.pending_slots(claim):
            if self.queue.fail(claim, "INTERRUPTED", retryable=True, count_attempt=False) == JobState.QUEUED:
                log.info("order handed back on shutdown", extra={"order_id": claim.job_id})
            return
        if lost.is_set():
            log.info("order lost (lease taken over); stopping", extra={"order_id": claim.job_id})
            return
        state = self.queue.finish(claim)
        if state is not None:
            log.info("order finished", extra={"order_id": claim.job_id, "state": state})

    def _make_image(
        self,
        claim: Claim,
        account_id: str,
        key_id: str,
        lost: threading.Event,
        slot: OrderImage,
        adapter_blob_id: str,
        adapter_key_id: str,
        key: str,
        prompt: str,
        negative: str,
    ) -> None:
        s = self.settings
        delay = RETRY_MIN_SECONDS
        internal_tries = 0
        made: tuple[bytes, bytes, int, int] | None = None  # kept across retries: a storage or database
        stored: tuple[str, str] | None = None  # failure does not make the image (or its blobs) again
        photo_key: str | None = None  # the generated photo's own data key (its purge shreds it), made once
        asked = False  # a request of this image reached (or may have reached) Triton
        while not (lost.is_set() or self.shutting_down.is_set()):
            try:
                reason = self._db(unservable_reason, account_id, slot.model_id)
                if reason is not None:
                    metrics.IMAGES.labels("failed").inc()
                    self._db(self.queue.fail_image, claim, [slot.id], reason)
                    if asked:
                        self._evict_again(slot)
                    return
                if made is None:
                    asked = True
                    pixels = self.triton.generate(
                        adapter_blob_id=adapter_blob_id,
                        adapter_key_id=adapter_key_id,
                        key=key,
                        prompt=prompt,
                        negative=negative,
                        seed=int(slot.seed),
                        steps=s.generation_steps,
                        guidance=s.generation_guidance,
                        width=s.generation_width,
                        height=s.generation_height,
                    )
                    made = (*encode(pixels, s.preview_max_side), pixels.shape[1], pixels.shape[0])
                png, jpeg, width, height = made
                if photo_key is not None and not self.keyring.exists(photo_key):
                    # Retried past the orphan margin (storage or database down for hours): the key sweep took
                    # the key no row named yet. A new key and new blobs; the old blobs are orphans, swept.
                    photo_key, stored = None, None
                if photo_key is None:
                    photo_key = self.keyring.new_key()
                if stored is None:
                    stored = (
                        self.store.create("generated", png, "image/png", key_id=photo_key),
                        self.store.create("generated", jpeg, "image/jpeg", key_id=photo_key),
                    )
                if not self._db(
                    self.queue.record_image,
                    claim,
                    slot,
                    *stored,
                    "image/png",
                    len(png),
                    width,
                    height,
                    key_id=photo_key,
                ):
                    log.info(
                        "image not recorded: order or slot no longer ours, or model no longer served",
                        extra={"order_id": claim.job_id},
                    )
                    if self._db(unservable_reason, account_id, slot.model_id) is not None:
                        self._evict_again(slot)
                else:
                    metrics.IMAGES.labels("made").inc()
                return
            except KeyShredded:  # the owner is being purged: nothing of theirs is made any more
                metrics.IMAGES.labels("failed").inc()
                self._db(self.queue.fail_image, claim, [slot.id], "MODEL_DELETED")
                return
            except TritonRejected as exc:
                log.warning(
                    "image refused by Triton", extra={"order_id": claim.job_id, "slot": slot.id, "reason": exc.reason}
                )
                metrics.IMAGES.labels("failed").inc()
                self._db(self.queue.fail_image, claim, [slot.id], exc.reason)
                return
            except (TritonRetryable, BlobError, KeysUnavailable, pw.DatabaseError) as exc:
                status = exc.status if isinstance(exc, TritonRetryable) else type(exc).__name__
                internal_tries += status in ("INTERNAL", "UNKNOWN")
                if internal_tries >= MAX_INTERNAL_TRIES:
                    metrics.IMAGES.labels("failed").inc()
                    self._db(self.queue.fail_image, claim, [slot.id], "GENERATION_FAILED")
                    return
                metrics.IMAGES.labels("retried").inc()
                log.warning(
                    "image retried", extra={"order_id": claim.job_id, "status": status, "retry_in": round(delay, 2)}
                )
                self._pause(lost, delay)
                delay = min(RETRY_MAX_SECONDS, delay * 2)

    def _pause(self, lost: threading.Event, seconds: float) -> None:
        """Sleeps up to `seconds`, waking early when the order is lost or the worker shuts down."""
        deadline = time.monotonic() + seconds
        while not (lost.is_set() or self.shutting_down.is_set()) and time.monotonic() < deadline:
            lost.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    # --- unservable models leave every Triton replica's cache (core/jobs/evictions.py) ----------
    def _evict_sweep(self) -> None:
        if time.monotonic() - self._last_evict_sweep < EVICT_SWEEP_SECONDS:
            return
        self._last_evict_sweep = time.monotonic()
        self.sweep_evictions()

    def _evictor(self, replica: str) -> TritonImages:
        if isinstance(self.triton, RoutedTriton) and replica in self.triton.clients:
            return self.triton.clients[replica]
        if isinstance(self.triton, TritonImages) and replica == self.triton.url:
            return self.triton
        if replica not in self._evictors:
            s = self.settings
            self._evictors[replica] = TritonImages(replica, s.triton_model, s.triton_timeout_seconds)
        return self._evictors[replica]

    def sweep_evictions(self) -> int:
        """Asks each replica to drop the keys of the pending eviction records it has not confirmed, and records
        its confirmation (a record every replica confirmed is done). A replica that fails is asked again at the
        next sweep. Returns how many cached adapters the replicas reported dropped."""
        try:
            records = self._db(evictions.pending)
        except pw.DatabaseError:
            log.warning("eviction sweep skipped (database)")
            return 0
        dropped = completed = 0
        for replica in self.replicas:
            todo = [r for r in records if replica not in r.confirmed_by]
            if not todo:
                continue
            try:
                dropped += self._evictor(replica).evict(sorted({r.key for r in todo}))
            except (TritonRetryable, TritonRejected) as exc:
                metrics.EVICTIONS.labels(replica, "failed").inc()
                status = exc.status if isinstance(exc, TritonRetryable) else exc.reason
                log.warning(
                    "eviction not confirmed by a Triton replica: asked again at the next sweep",
                    extra={"replica": replica, "records": len(todo), "status": status},
                )
                try:
                    self._db(evictions.failed, self.db, todo, status)
                except pw.DatabaseError:
                    pass
                continue
            metrics.EVICTIONS.labels(replica, "confirmed").inc()
            try:
                completed += self._db(evictions.confirm, self.db, todo, replica, self.replicas)
            except pw.DatabaseError:
                log.warning(
                    "eviction confirmation not recorded (database): asked again at the next sweep",
                    extra={"replica": replica},
                )
        if dropped or completed:
            log.info("unservable models evicted from Triton", extra={"evicted": dropped, "records_done": completed})
        return dropped

    def _evict_again(self, slot: OrderImage) -> None:
        """This slot's request was at Triton when its model became unservable: Triton may have fetched the
        adapter after a sweep evicted it, so the eviction is requested again."""

        def again() -> None:
            with write_transaction(self.db):
                evictions.request_versions([(slot.model_id, slot.model_version)], self.clock.now())

        try:
            self._db(again)
        except pw.DatabaseError:
            log.warning("eviction not requested again (database)", extra={"model_id": slot.model_id})
