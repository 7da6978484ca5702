"""The orders target: the whole order path over the public gRPC API, through the Python SDK, as an app would.

`OrdersTarget.prepare(url, users=N)` makes N test users on a system running on its embedded defaults
(`clients/embedded.py`: waiting list, approval by a staff account made with `faceharmony-admin`, the emailed
code read from the outbox, so `FACEHARMONY_DATA_DIR` must be the server's), each with a READY model trained
from the demo's sample face photos (`clients/samples.py`, from scikit-image's photographs), and, where the
free trial would not cover the run's bound on requests, credits recorded as a store purchase (this build
does not verify receipts; a system that does needs its test users credited another way).

The set-up waits for every model on a thread of its own (futures): a model that ends in another state, a
watch that fails, or one not READY within the timeout is a RuntimeError naming each user's reason, and the
measurement does not start.

`warm_up` places one order per user before anything is measured. Request `i` is one order of one image by
user `i mod N` of their model in the first style: `CreateOrder`, then `WatchOrder` until the order is
COMPLETED, FAILED or CANCELLED, then each generated photo downloaded and decoded as a PNG of the size the API
gave for it (`opened`). Latency runs from CreateOrder to the last byte of the download. Each photo is then
deleted (`DeleteGeneratedPhoto`, not in the latency; one that could not be is counted in
`photos_not_deleted`). An error is its ErrorInfo reason (`INSUFFICIENT_CREDITS`, `TOO_MANY_CONCURRENT_CALLS`,
...), the gRPC code name where the transport answered, `ORDER_FAILED`/`ORDER_CANCELLED`, or `BAD_IMAGE`.

The test accounts' addresses (nothing else: no token, no code) are in a users file (JSON, 0600) written
before each sign-up, so a run killed with SIGKILL can be cleaned up: `cleanup_users(settings, path)`
(`faceharmony-loadtest cleanup --users FILE`) signs each in on the embedded system and deletes the account.
`close()` deletes the test accounts (the retention daemon purges them after the grace period), closes the
channels and removes the users file once every account is deleted. Image size and steps are the server's
settings (FACEHARMONY_GENERATION_*), not the load tester's.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceharmony.core.datadir import private_dir
from faceharmony.loadtest.address import check_target
from faceharmony.loadtest.arrivals import Control
from faceharmony.loadtest.report import Outcome

MAX_USERS = 8
ADDRESS_DOMAIN = "loadtest.faceharmony.invalid"
CREDIT_PACK = "credits_200"
USERS_KIND = "faceharmony-loadtest-users"


def write_users_file(path: Path, url: str, addresses: list[str]) -> Path:
    """The test accounts' addresses (0600, replaced atomically): what `cleanup --users` deletes."""
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"kind": USERS_KIND, "url": url, "addresses": addresses}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def read_users_file(path: Path) -> tuple[str, list[str]]:
    try:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != USERS_KIND:
            raise ValueError(f"not a {USERS_KIND} file")
        addresses = [str(a) for a in data["addresses"]]
        if any(not a.endswith("@" + ADDRESS_DOMAIN) for a in addresses):
            raise ValueError(f"an address is not a load tester's (@{ADDRESS_DOMAIN})")
        return str(data["url"]), addresses
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"users file {path} cannot be read: {exc}") from None


def cleanup_users(outbox: Path, path: Path, *, allow_remote_host: str | None = None) -> tuple[int, dict[str, int]]:
    """Signs each test account of the users file in (embedded: the code from `outbox`) and deletes it; an account
    already deleted counts as deleted. Returns (deleted, failures by reason); the file is removed when none
    failed."""
    from faceharmony.clients.embedded import EmbeddedError, EmbeddedSystem
    from faceharmony.clients.sdk import FaceHarmonyError

    url, addresses = read_users_file(path)
    check_target(url, allow_remote_host)
    deleted = 0
    failed: dict[str, int] = {}
    with EmbeddedSystem(target=url, outbox=Path(outbox)) as system:
        for address in addresses:
            client = system.client()
            try:
                client.accounts.sign_in(address, system.code_for(address, client=client))
                client.accounts.delete_account(address)
                deleted += 1
            except FaceHarmonyError as exc:
                if exc.reason in ("ACCOUNT_DEACTIVATED", "NOT_FOUND"):
                    deleted += 1  # deleted by the run itself, or never made
                else:
                    failed[exc.reason or exc.code.name] = failed.get(exc.reason or exc.code.name, 0) + 1
            except EmbeddedError:
                failed["NO_SIGN_IN_CODE"] = failed.get("NO_SIGN_IN_CODE", 0) + 1
            finally:
                client.close()
    if not failed:
        Path(path).unlink()
    return deleted, failed


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
    users_file: Path | None = None
    setup_s: float = 0.0
    image_sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height) of the photos downloaded
    photos_not_deleted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def prepare(
        cls,
        url: str,
        outbox: Path,
        *,
        users_file: Path,
        users: int = 2,
        timeout_s: float = 600.0,
        allow_remote_host: str | None = None,
        requests_bound: int = 0,
        stop: threading.Event | None = None,
    ) -> OrdersTarget:
        """Signs up `users` users, trains a model each (in parallel), credits them for `requests_bound` orders.
        `outbox`: the server's (`<data dir>/outbox`; the folder may not exist until its first mail).
        `users_file`: their addresses, written before each sign-up. `stop` set meanwhile: the users made so
        far are deleted and Stopped is raised."""
        from faceharmony.clients.embedded import EmbeddedSystem
        from faceharmony.clients.samples import people

        check_target(url, allow_remote_host)
        if not 1 <= users <= MAX_USERS:
            raise ValueError(f"users must be 1..{MAX_USERS}")
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
                addresses: list[str] = []
                for i in range(users):
                    check()
                    addresses.append(f"loadtest-{run_id}-{i}@{ADDRESS_DOMAIN}")
                    write_users_file(users_file, url, addresses)
                    made.append(_User(addresses[-1], system.sign_up(addresses[-1], f"Load Test {i}")))
                persons = people()
                for i, user in enumerate(made):
                    check()
                    photo_ids = [
                        user.client.photos.upload_photo(s.content, filename=s.name).id
                        for s in persons[i % len(persons)].accepted
                    ]
                    user.model_id = user.client.models.create_model(f"loadtest {i}", photo_ids).id
                target = cls(url, made, "", timeout_s, users_file)
                target._wait_ready(stop)
                check()
                target.style_id = made[0].client.orders.list_styles()[0].id
                target._credit(requests_bound)
            except BaseException:
                (target or cls(url, made, "", timeout_s, users_file)).close()
                raise
        target.setup_s = time.monotonic() - t0
        return target

    def _wait_ready(self, stop: threading.Event) -> None:
        """Every user's model READY, or RuntimeError naming each one's reason (Stopped on `stop`)."""
        from faceharmony.clients.sdk import FaceHarmonyError
        from faceharmony.v1 import model_pb2

        def follow(user: _User) -> str:
            """'' when READY, else why not."""
            state = 0
            try:
                for event in user.client.models.watch_model(user.model_id, timeout=self.timeout_s):
                    state = event.state
                    if stop.is_set():
                        return "stopped"
            except FaceHarmonyError as exc:
                return f"watch failed: {exc.reason or exc.code.name}"
            return "" if state == model_pb2.MODEL_STATE_READY else model_pb2.ModelState.Name(state)

        pool = ThreadPoolExecutor(max_workers=len(self.users), thread_name_prefix="loadtest-ready")
        futures = {pool.submit(follow, u): i for i, u in enumerate(self.users)}
        deadline = time.monotonic() + self.timeout_s + 30
        pending = set(futures)
        try:
            while pending and not stop.is_set() and time.monotonic() < deadline:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a watch still open ends when close() closes it
        if stop.is_set():
            raise Stopped("stopped while the test users' models were training")
        reasons = []
        for future, i in futures.items():
            if future in pending:
                reasons.append(f"user {i}: not READY within {self.timeout_s + 30:.0f} s")
            elif (exc := future.exception()) is not None:
                reasons.append(f"user {i}: {type(exc).__name__}: {exc}")
            elif future.result():
                reasons.append(f"user {i}: {future.result()}")
        if reasons:
            raise RuntimeError("a test user's model did not become READY (" + "; ".join(reasons) + ")")

    def _credit(self, requests_bound: int) -> None:
        from faceharmony.v1 import purchase_pb2

        per_user = -(-requests_bound // len(self.users))  # the bound includes each user's warm-up order
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

    def warm_up(self, first_index: int, control: Control, duration_s: float) -> list[Outcome]:
        """One order per user, one at a time (each model's adapter reaches Triton's cache), none started after
        `duration_s`."""
        outcomes = []
        deadline = time.monotonic() + duration_s
        for i in range(len(self.users)):
            if control.stop.is_set() or time.monotonic() > deadline:
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
            contents = [fh.orders.download(photo.id, timeout=self.timeout_s) for photo in photos]
            latency = time.monotonic() - t0
            self._delete_photos(fh, photos)
            for photo, content in zip(photos, contents):
                with self._lock:
                    self.image_sizes.add((photo.width, photo.height))
                with Image.open(io.BytesIO(content)) as image:
                    image.load()
                    opened += int(image.format == "PNG" and image.size == (photo.width, photo.height))
        except FaceHarmonyError as exc:
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason=exc.reason or exc.code.name)
        except OSError:  # PIL: not an image
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason="BAD_IMAGE")
        if order.images_done < 1 or opened != len(photos):
            return Outcome(ok=False, latency_s=latency, reason="BAD_IMAGE")
        return Outcome(ok=True, latency_s=latency, images=order.images_done, opened=opened)

    def _delete_photos(self, fh: Any, photos: list[Any]) -> None:
        from faceharmony.clients.sdk import FaceHarmonyError

        for photo in photos:
            try:
                fh.orders.delete(photo.id)
            except FaceHarmonyError:
                with self._lock:
                    self.photos_not_deleted += 1

    def close(self) -> int:
        """Deletes the test accounts and closes their channels (the users file goes once all are deleted);
        returns how many were deleted."""
        from faceharmony.clients.sdk import FaceHarmonyError

        deleted = 0
        users, self.users = self.users, []
        for user in users:
            try:
                user.client.accounts.delete_account(user.address)
                deleted += 1
            except FaceHarmonyError:
                pass
            finally:
                user.client.close()
        if deleted == len(users) and self.users_file is not None:
            Path(self.users_file).unlink(missing_ok=True)
        return deleted
