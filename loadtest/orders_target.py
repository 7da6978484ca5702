"""The orders target: the whole order path over the public gRPC API, through the Python SDK, as an app would.

`OrdersTarget.prepare(url, users=N)` makes N test users on a system running on its embedded defaults
(`clients/embedded.py`: waiting list, approval by a staff account made with `faceharmony-admin`, the emailed
code read from the outbox, so `FACEHARMONY_DATA_DIR` must be the server's), each with a READY model trained
from the demo's sample face photos (`clients/samples.py`, from scikit-image's photographs), and, where the
free trial would not cover the run's bound on requests, credits recorded as a store purchase (this build
does not verify receipts; a system that does needs its test users credited another way).

`warm_up` places one order per user before anything is measured. Request `i` is one order of one image by user `i mod N` of their model in the first style: `CreateOrder`,
then `WatchOrder` until the order is COMPLETED, FAILED or CANCELLED, then each generated photo downloaded and
decoded as a PNG of the size the API gave for it (`opened`). Latency runs from CreateOrder to the last byte of
the download. An error is its ErrorInfo reason (`INSUFFICIENT_CREDITS`, `TOO_MANY_CONCURRENT_CALLS`, ...), the
gRPC code name where the transport answered, `ORDER_FAILED`/`ORDER_CANCELLED`, or `BAD_IMAGE`.

`close()` deletes the test accounts (the retention daemon purges them after the grace period) and closes the
channels. Image size and steps are the server's settings (FACEHARMONY_GENERATION_*), not the load tester's.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceharmony.loadtest.address import check_target
from faceharmony.loadtest.report import Outcome

MAX_USERS = 8
ADDRESS_DOMAIN = "loadtest.faceharmony.invalid"
CREDIT_PACK = "credits_200"


class Stopped(Exception):
    """SIGINT/SIGTERM came while the test users were being set up (what was made is deleted)."""


@dataclass
class _User:
    address: str
    client: Any  # faceharmony.clients.sdk.Client
    model_id: str = ""


@dataclass
class OrdersTarget:
    url: str
    users: list[_User]
    style_id: str
    timeout_s: float
    setup_s: float = 0.0
    image_sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height) of the photos downloaded
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def prepare(
        cls,
        url: str,
        outbox: Path,
        *,
        users: int = 2,
        timeout_s: float = 600.0,
        allow_remote_host: str | None = None,
        requests_bound: int = 0,
        stop: threading.Event | None = None,
    ) -> OrdersTarget:
        """Signs up `users` users, trains a model each (in parallel), credits them for `requests_bound` orders.
        `outbox`: the server's (`<data dir>/outbox`), made (0700) if no mail was sent yet. `stop` set meanwhile:
        the users made so far are deleted and Stopped is raised."""
        from faceharmony.clients.embedded import EmbeddedSystem
        from faceharmony.clients.samples import people
        from faceharmony.core.datadir import private_dir

        check_target(url, allow_remote_host)
        if not 1 <= users <= MAX_USERS:
            raise ValueError(f"users must be 1..{MAX_USERS}")
        private_dir(outbox)  # a fresh system has none until its first mail; the helper insists on one
        stop = stop or threading.Event()

        def check() -> None:
            if stop.is_set():
                raise Stopped("stopped while the test users were being set up")

        t0 = time.monotonic()
        run_id = secrets.token_hex(4)
        made: list[_User] = []
        target = None
        with EmbeddedSystem(target=url, outbox=outbox) as system:
            try:
                for i in range(users):
                    check()
                    address = f"loadtest-{run_id}-{i}@{ADDRESS_DOMAIN}"
                    made.append(_User(address, system.sign_up(address, f"Load Test {i}")))
                persons = people()
                for i, user in enumerate(made):
                    check()
                    photo_ids = [
                        user.client.photos.upload_photo(s.content, filename=s.name).id
                        for s in persons[i % len(persons)].accepted
                    ]
                    user.model_id = user.client.models.create_model(f"loadtest {i}", photo_ids).id
                target = cls(url, made, "", timeout_s)
                target._wait_ready(stop)
                check()
                target.style_id = made[0].client.orders.list_styles()[0].id
                target._credit(requests_bound)
            except BaseException:
                (target or cls(url, made, "", timeout_s)).close()
                raise
        target.setup_s = time.monotonic() - t0
        return target

    def _wait_ready(self, stop: threading.Event) -> None:
        from faceharmony.v1 import model_pb2

        errors: list[str] = []

        def follow(user: _User) -> None:
            state = 0
            for event in user.client.models.watch_model(user.model_id, timeout=self.timeout_s):
                state = event.state
                if stop.is_set():
                    return
            if state != model_pb2.MODEL_STATE_READY:
                errors.append(model_pb2.ModelState.Name(state))

        threads = [threading.Thread(target=follow, args=(u,), daemon=True) for u in self.users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout_s + 30)
        if errors or any(t.is_alive() for t in threads):
            raise RuntimeError(f"a test user's model did not become READY: {errors or 'timed out'}")

    def _credit(self, requests_bound: int) -> None:
        from faceharmony.v1 import purchase_pb2

        per_user = -(-requests_bound // len(self.users))
        for user in self.users:
            while user.client.purchases.get_balance().credits < per_user:
                user.client.purchases.record_purchase(
                    purchase_pb2.STORE_GOOGLE_PLAY, CREDIT_PACK, f"loadtest-{secrets.token_hex(8)}"
                )

    def meta(self) -> dict[str, Any]:
        return {
            "target": "orders",
            "url": self.url,
            "settings": {
                "users": len(self.users),
                "models": len(self.users),
                "images_per_order": 1,
                "style": self.style_id,
                "setup_s": round(self.setup_s, 1),
                "summary": f"{len(self.users)} users, 1 image per order, server-side size and steps",
            },
        }

    def warm_up(self, first_index: int, stop: threading.Event) -> list[Outcome]:
        """One order per user, one at a time (each model's adapter reaches Triton's cache)."""
        outcomes = []
        for i in range(len(self.users)):
            if stop.is_set():
                break
            outcomes.append(self.send(first_index + i))
        return outcomes

    def send(self, index: int) -> Outcome:
        from PIL import Image

        from faceharmony.clients.sdk import FaceHarmonyError
        from faceharmony.v1 import order_pb2

        user = self.users[index % len(self.users)]
        fh = user.client
        t0 = time.monotonic()
        try:
            order = fh.orders.create_order([user.model_id], self.style_id, 1)
            for event in fh.orders.watch_order(order.id, timeout=self.timeout_s):
                order = event.order
            if order.state != order_pb2.ORDER_STATE_COMPLETED:
                name = order_pb2.OrderState.Name(order.state).removeprefix("ORDER_STATE_")
                return Outcome(ok=False, latency_s=time.monotonic() - t0, reason=f"ORDER_{name}")
            opened = 0
            photos = fh.orders.list_generated_photos(order_id=order.id)
            for photo in photos:
                content = fh.orders.download(photo.id, timeout=self.timeout_s)
                with self._lock:
                    self.image_sizes.add((photo.width, photo.height))
                with Image.open(io.BytesIO(content)) as image:
                    image.load()
                    opened += int(image.format == "PNG" and image.size == (photo.width, photo.height))
        except FaceHarmonyError as exc:
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason=exc.reason or exc.code.name)
        except OSError:  # PIL: not an image
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason="BAD_IMAGE")
        latency = time.monotonic() - t0
        if order.images_done < 1 or opened != len(photos):
            return Outcome(ok=False, latency_s=latency, reason="BAD_IMAGE")
        return Outcome(ok=True, latency_s=latency, images=order.images_done, opened=opened)

    def close(self) -> int:
        """Deletes the test accounts and closes their channels; returns how many were deleted."""
        from faceharmony.clients.sdk import FaceHarmonyError

        deleted = 0
        for user in self.users:
            try:
                user.client.accounts.delete_account(user.address)
                deleted += 1
            except FaceHarmonyError:
                pass
            finally:
                user.client.close()
        self.users = []
        return deleted
