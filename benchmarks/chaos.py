"""A bounded chaos run against the whole system as `make up` starts it, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/chaos.py [--database sqlite|postgres|both] [--seconds 120] [--clients 16] [--seed 1]

For each database: `faceharmony-up` (the API server, a trainer, Triton, an order worker and the
retention daemon) starts in a temporary folder on free loopback ports (PostgreSQL: a throwaway
cluster started by `tests.support.postgres`, the one the test suite uses, so there is one tested way
to run a cluster as root or not). A staff account is made with `faceharmony-admin create-staff`.
Then, for `--seconds`, `--clients` threads each live the whole flow over the real gRPC API with the
generated stubs, one user after another: sign-up (waiting list and staff approval, or the invitation
the previous user of the thread sent; codes and invitation tokens are read from the email outbox),
uploads good and bad (real faces from scikit-image, a cat, coffee, grayscale, two faces, truncated,
empty, not an image), training (create, watch; sometimes deleted while training, or after
PATIENCE_SECONDS without result; at most TRAINING_SLOTS users train at once, which one trainer on
2 cores can serve, the others browse meanwhile), orders (sometimes repeated with the same request
id, credits bought when they run out, the model sometimes deleted while its order runs, so its
images fail and are refunded), previews, downloads, rejections, deletions of photos, generated
photos and models, and account deletion (sometimes reactivated and deleted again). Meanwhile the trainer, the `tritonserver` process, the order worker
and the retention daemon are each SIGKILLed at random moments (at least 30 s apart per process, so
the launcher's crash-loop rule, 5 exits in 2 minutes, is never what stops the run); the launcher
restarts them. Every random choice comes from `--seed`.

At the end the clients stop, the queues drain (bounded), the system is stopped with SIGTERM, a final
`faceharmony-retention --once` runs with the same settings, then once more with every file of the
data folder dated back past the orphan margin (what the sweep will see once the margin has passed:
blobs a kill left between writing a blob and committing its row are swept only then). It prints:

* requests by gRPC status code, and the errors by code, reason and method (goal: 0 UNKNOWN/INTERNAL);
* images lost or made twice: every order's slots against its generated_photo rows (goal: 0);
* credits charged against images delivered, refunded and still pending, from the orders, their slots
  and the credit ledger (goal: exact, every order's debit and every refund once);
* files not named by a row after the final retention run: blobs, temporary files in the data folder
  and files left in the system's TMPDIR (a folder of the run) (goal: 0 after the margin), and rows
  whose blob is gone (goal: 0);
* processes of the system still alive after the launcher exited (goal: 0);
* the API server's peak RSS (psutil, sampled every 0.25 s) and the kills of each process.

Exit status 1 when a goal is missed. Only loopback addresses are used. The system runs with a short
training (`FACEHARMONY_TRAINING_STEPS=2`: a step at the tiny base's 512 px takes about a second
on 2 free cores, several on a busy machine), 3 denoising steps per 128x128 image, leases of 15 s and a
retention cycle every 10 s, so that work finishes, is taken over and is purged within the run; the
other settings are the embedded defaults.
"""

from __future__ import annotations

import argparse
import collections
import email
import email.policy
import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support (images, the PostgreSQL cluster) from a source checkout

from faceharmony.clients.errors import reason_of
from faceharmony.v1 import (
    account_pb2 as acc,
)
from faceharmony.v1 import (
    account_pb2_grpc,
    admin_pb2_grpc,
    model_pb2_grpc,
    order_pb2_grpc,
    photo_pb2_grpc,
    purchase_pb2_grpc,
)
from faceharmony.v1 import (
    admin_pb2 as adm,
)
from faceharmony.v1 import (
    model_pb2 as mdl,
)
from faceharmony.v1 import (
    order_pb2 as ordr,
)
from faceharmony.v1 import (
    photo_pb2 as pho,
)
from faceharmony.v1 import (
    purchase_pb2 as pur,
)
from tests.support import images
from tests.support.stores import app_store_settings, shared_app_store

BIN = Path(sys.executable).parent
SYSTEM_SETTINGS = {
    "FACEHARMONY_TRAINING_STEPS": "2",
    "FACEHARMONY_GENERATION_STEPS": "3",
    "FACEHARMONY_GENERATION_WIDTH": "128",
    "FACEHARMONY_GENERATION_HEIGHT": "128",
    "FACEHARMONY_TRAINING_LEASE_SECONDS": "15",
    "FACEHARMONY_ORDER_LEASE_SECONDS": "15",
    "FACEHARMONY_RETENTION_INTERVAL_SECONDS": "10",
}
# The processes killed, and how each is recognised among the launcher's descendants.
KILL_TARGETS = {
    "trainer": lambda p: _module_of(p) == "faceharmony.trainer",
    "triton": lambda p: p.name() == "tritonserver",
    "order-worker": lambda p: _module_of(p) == "faceharmony.order_worker",
    "retention": lambda p: _module_of(p) == "faceharmony.retention",
}
KILL_GAP_SECONDS = (30.0, 50.0)
CALL_TIMEOUT = 60.0
PATIENCE_SECONDS = 90.0  # how long a user waits for training before deleting the model
# Models in training at once, over all clients: one trainer on 2 cores trains a tiny model in 10-40 s, so
# more would leave a queue that cannot drain in a bounded time; the other users leave before training.
TRAINING_SLOTS = 3
SHM_DIR = Path("/dev/shm")
SHM_PREFIX_OPTION = "shm-region-prefix-name="  # triton_launcher/shm.py names each launch's regions
LEFT_BEHIND_GRACE_SECONDS = (
    30.0  # how long a process of the system may outlive the launcher (a Triton stub notices late)
)
ORPHAN_MARGIN_HOURS = 6  # FACEHARMONY_ORPHAN_MARGIN_HOURS's default, which the run keeps
STAFF_EMAIL = "chaos-admin@staff.example.com"


def _module_of(process: psutil.Process) -> str:
    argv = process.cmdline()
    return argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def triton_port() -> int:
    """A gRPC port whose neighbours (Triton's HTTP and metrics ports) are free too."""
    for _ in range(50):
        port = free_port()
        try:
            for p in (port - 1, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port triple")


# --------------------------------------------------------------------------------------------
# Uploads: real faces and the bad cases, made once
# --------------------------------------------------------------------------------------------


def good_uploads(seed: int, count: int = 16) -> list[bytes]:
    """One-face photos: crops of the astronaut's face, jittered, sometimes mirrored, JPEG or PNG."""
    rng = random.Random(f"{seed}-images")
    base = images.astronaut()
    out = [images.one_face()]
    while len(out) < count:
        dx, dy, grow = rng.randint(-20, 20), rng.randint(0, 20), rng.randint(0, 60)
        crop = base.crop((max(0, 120 + dx - grow), max(0, dy), min(512, 370 + dx + grow), min(512, 250 + dy + grow)))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fmt = "PNG" if rng.random() < 0.2 else "JPEG"
        out.append(images.encode(crop, fmt, **({"quality": rng.randint(75, 95)} if fmt == "JPEG" else {})))
    return out


def bad_uploads() -> dict[str, bytes]:
    """What a careless or hostile client sends; each must be refused with a reason."""
    tiny = images.encode(images.astronaut().resize((64, 64)))
    return {
        "no face (coffee)": images.no_face(),
        "a cat": images.cat(),
        "grayscale": images.grayscale(),
        "grayscale saved as RGB": images.grayscale_saved_as_rgb(),
        "two faces": images.two_faces(),
        "truncated": images.truncated(),
        "too small": tiny,
        "noise": images.noise(),
        "not an image": b"%PDF-1.4 this is not an image\n" * 20,
        "empty": b"",
    }


# --------------------------------------------------------------------------------------------
# The system under test
# --------------------------------------------------------------------------------------------


class Outbox:
    """The email outbox folder, indexed by recipient; each message is handed out once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._by_to: dict[str, list[email.message.EmailMessage]] = collections.defaultdict(list)

    def _scan(self) -> None:
        if not self.folder.exists():
            return
        for path in self.folder.glob("*.eml"):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            self._by_to[str(message["To"]).strip().lower()].append(message)

    def take(self, address: str, subject_has: str, stop: threading.Event, timeout: float = 60.0) -> str | None:
        """The body of the next unread email to `address` whose subject contains `subject_has`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.is_set():
            with self._lock:
                self._scan()
                box = self._by_to.get(address.lower(), [])
                for i, message in enumerate(box):
                    if subject_has in str(message["Subject"]):
                        del box[i]
                        return message.get_content()
            time.sleep(0.2)
        return None


@dataclass
class System:
    """`faceharmony-up` in a run folder, with the launcher's process and what the run needs to reach it."""

    root: Path
    env: dict[str, str]
    api_port: int
    triton_port: int
    launcher: subprocess.Popen | None = None
    seen: dict[int, float] = field(default_factory=dict)  # pid -> create time of every descendant seen
    shm_prefixes: set[str] = field(default_factory=set)  # each tritonserver's shared-memory region prefix

    @property
    def data_dir(self) -> Path:
        return Path(self.env["FACEHARMONY_DATA_DIR"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def start(self) -> None:
        with (self.root / "up.log").open("ab") as log:
            self.launcher = subprocess.Popen(
                [str(BIN / "faceharmony-up")], env=self.env, cwd=self.root, stdout=log, stderr=log
            )

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.launcher.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in found:
            try:
                if p.pid not in self.seen:
                    self.seen[p.pid] = p.create_time()
                    if p.name() == "tritonserver":
                        self.shm_prefixes.update(
                            a.split(SHM_PREFIX_OPTION, 1)[1] for a in p.cmdline() if SHM_PREFIX_OPTION in a
                        )
            except psutil.NoSuchProcess:
                pass
        return found

    def shm_left(self) -> list[str]:
        """Shared-memory regions of this run's Triton launches still in /dev/shm (requests, generated images)."""
        names = os.listdir(SHM_DIR) if SHM_DIR.exists() else []
        return sorted(n for n in names if any(n.startswith(prefix) for prefix in self.shm_prefixes))

    def find(self, match) -> psutil.Process | None:
        for p in self.descendants():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and match(p):
                    return p
            except psutil.NoSuchProcess:
                continue
        return None

    def server_pid(self) -> int | None:
        p = self.find(lambda p: _module_of(p) == "faceharmony.server")
        return p.pid if p else None

    def wait_ready(self, timeout: float = 300.0) -> None:
        import tritonclient.grpc as tc

        deadline = time.monotonic() + timeout
        triton = tc.InferenceServerClient(f"127.0.0.1:{self.triton_port}")
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.launcher.poll() is not None:
                    raise RuntimeError(f"faceharmony-up exited with {self.launcher.returncode}: {self.log_tail()}")
                try:
                    serving = (
                        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                        == health_pb2.HealthCheckResponse.SERVING
                    )
                    if (
                        serving
                        and triton.is_model_ready("faceharmony_diffusion")
                        and all(self.find(m) for m in KILL_TARGETS.values())
                    ):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the system was not ready after {timeout:.0f}s: {self.log_tail()}")
                time.sleep(0.5)

    def stop(self, timeout: float = 90.0) -> int:
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in self.descendants():
                    p.kill()
                self.launcher.kill()
                self.launcher.wait()
        return self.launcher.returncode

    def left_behind(self) -> list[str]:
        """Descendants seen during the run that still live (a pid reused by another process does not count)."""
        out = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.name()} (pid {pid})")
            except psutil.NoSuchProcess:
                continue
        return out

    def log_tail(self, chars: int = 3000) -> str:
        return (self.root / "up.log").read_text(errors="replace")[-chars:]

    def admin(self, *argv: str) -> None:
        subprocess.run(
            [str(BIN / "faceharmony-admin"), *argv], env=self.env, cwd=self.root, check=True, capture_output=True
        )

    def retention_once(self) -> int:
        """One `faceharmony-retention --once` with the system's settings; its exit status."""
        return subprocess.run(
            [str(BIN / "faceharmony-retention"), "--once"], env=self.env, cwd=self.root, capture_output=True
        ).returncode


def system_env(root: Path, database_url: str | None, api_port: int, grpc_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    (root / "tmp").mkdir()
    env.update(SYSTEM_SETTINGS)
    env.update(
        FACEHARMONY_DATA_DIR=str(root / "data"),
        FACEHARMONY_LISTEN=f"127.0.0.1:{api_port}",
        FACEHARMONY_TRITON_URL=f"127.0.0.1:{grpc_port}",
        TMPDIR=str(root / "tmp"),
    )
    if database_url:
        env["FACEHARMONY_DATABASE_URL"] = database_url
    # Credits are bought with App Store transactions signed by the tests' own App Store, which the server trusts.
    for name, value in app_store_settings(shared_app_store(), root / "app-store").items():
        env[f"FACEHARMONY_{name.upper()}"] = str(value)
    return env


# --------------------------------------------------------------------------------------------
# Talking to the API, counting every answer
# --------------------------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(f"{code.name} {reason}")
        self.code = code
        self.reason = reason


class StopRun(Exception):
    """The run's time is up: the client stops where it is."""


class Tally:
    """Answers by (method, status code, reason), and what the users did, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: collections.Counter = collections.Counter()
        self.events: collections.Counter = collections.Counter()
        self.anomalies: collections.Counter = collections.Counter()  # answers that break a promise of the API
        self.deleted_generated: dict[str, str] = {}  # generated photo id -> its order id

    def answer(self, method: str, code: grpc.StatusCode, reason: str = "") -> None:
        with self.lock:
            self.answers[(method, code.name, reason)] += 1

    def event(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.events[what] += n

    def anomaly(self, what: str) -> None:
        with self.lock:
            self.anomalies[what] += 1


class Api:
    """The generated stubs on one channel; every call is counted, and a refusal raises Refused."""

    def __init__(self, address: str, tally: Tally) -> None:
        self.channel = grpc.insecure_channel(address)
        self.tally = tally
        self.stubs = {
            "accounts": account_pb2_grpc.AccountServiceStub(self.channel),
            "photos": photo_pb2_grpc.PhotoServiceStub(self.channel),
            "models": model_pb2_grpc.ModelServiceStub(self.channel),
            "orders": order_pb2_grpc.OrderServiceStub(self.channel),
            "purchases": purchase_pb2_grpc.PurchaseServiceStub(self.channel),
            "admin": admin_pb2_grpc.AdminServiceStub(self.channel),
        }

    def _method(self, name: str):
        service, method = name.split(".")
        return getattr(self.stubs[service], method), method

    def call(self, name: str, request, token: str | None = None, timeout: float = CALL_TIMEOUT):
        fn, method = self._method(name)
        md = (("authorization", f"Bearer {token}"),) if token else None
        try:
            reply = fn(request, metadata=md, timeout=timeout)
        except grpc.RpcError as exc:
            self.tally.answer(method, exc.code(), reason_of(exc))
            raise Refused(exc.code(), reason_of(exc)) from None
        self.tally.answer(method, grpc.StatusCode.OK)
        return reply

    def stream(self, name: str, request, token: str, timeout: float, until=None) -> list:
        """Reads a server stream to its end, or (a watch) until `until(reply)`, then cancels it, or its `timeout`
        passes: the watch's own deadline is counted as DEADLINE_EXCEEDED with that reason, our cancel as OK."""
        fn, method = self._method(name)
        replies = []
        call = fn(request, metadata=(("authorization", f"Bearer {token}"),), timeout=timeout)
        try:
            for reply in call:
                replies.append(reply)
                if until is not None and until(reply):
                    call.cancel()
                    break
        except grpc.RpcError as exc:
            if until is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.tally.answer(method, exc.code(), "(the watch's own deadline)")
                return replies
            if not (exc.code() == grpc.StatusCode.CANCELLED and replies and until is not None and until(replies[-1])):
                self.tally.answer(method, exc.code(), reason_of(exc))
                raise Refused(exc.code(), reason_of(exc)) from None
        self.tally.answer(method, grpc.StatusCode.OK)
        return replies

    def close(self) -> None:
        self.channel.close()


# --------------------------------------------------------------------------------------------
# One client: users living the whole flow, one after another
# --------------------------------------------------------------------------------------------

TERMINAL_MODEL = (mdl.MODEL_STATE_READY, mdl.MODEL_STATE_FAILED, mdl.MODEL_STATE_PENDING_DELETION)
TERMINAL_ORDER = (ordr.ORDER_STATE_COMPLETED, ordr.ORDER_STATE_FAILED, ordr.ORDER_STATE_CANCELLED)


@dataclass
class Shared:
    address: str
    outbox: Outbox
    staff_token: str
    good: list[bytes]
    bad: dict[str, bytes]
    tally: Tally
    stop: threading.Event
    seed: int
    training_slots: threading.Semaphore = field(default_factory=lambda: threading.BoundedSemaphore(TRAINING_SLOTS))


class Client(threading.Thread):
    def __init__(self, number: int, shared: Shared) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.number = number
        self.s = shared
        self.rng = random.Random(f"{shared.seed}-client-{number}")
        self.api = Api(shared.address, shared.tally)
        self.life = 0
        self.invitation: str | None = None  # the token the previous user of this thread sent
        self.crashed: str | None = None

    # --- plumbing ------------------------------------------------------------------------
    def check(self) -> None:
        if self.s.stop.is_set():
            raise StopRun

    def email_of(self, life: int) -> str:
        return f"user-{self.s.seed}-{self.number}-{life}@chaos.example.com"

    def request_id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128)).hex

    def run(self) -> None:
        try:
            while not self.s.stop.is_set():
                self.life += 1
                try:
                    self.one_user()
                except Refused as exc:  # an answer the flow cannot go on from: next user
                    self.s.tally.event(f"users that stopped at {exc.code.name} {exc.reason}".strip())
        except StopRun:
            pass
        except Exception as exc:  # noqa: BLE001 - reported, never hidden
            self.crashed = f"{type(exc).__name__}: {exc}"
        finally:
            self.api.close()

    # --- sign-up ---------------------------------------------------------------------------
    def sign_up(self, address: str) -> str:
        api, tally = self.api, self.s.tally
        if self.invitation:
            token, self.invitation = self.invitation, None
            reply = api.call(
                "accounts.AcceptInvitation", acc.AcceptInvitationRequest(invitation_token=token, is_16_or_older=True)
            )
            tally.event("users signed up by invitation")
            return reply.session_token
        api.call(
            "accounts.JoinWaitlist",
            acc.JoinWaitlistRequest(name=f"Chaos User {self.number}", email=address, is_16_or_older=True),
        )
        entry = self.find_waitlist_entry(address)
        api.call("admin.ApproveWaitlistEntry", adm.ApproveWaitlistEntryRequest(id=entry), self.s.staff_token)
        token = self.sign_in(address)
        tally.event("users signed up from the waiting list")
        return token

    def find_waitlist_entry(self, address: str) -> str:
        page = ""
        while True:
            reply = self.api.call(
                "admin.ListWaitlist",
                adm.ListWaitlistRequest(state=adm.WAITLIST_ENTRY_STATE_PENDING, page_size=100, page_token=page),
                self.s.staff_token,
            )
            for entry in reply.entries:
                if entry.email == address:
                    return entry.id
            if not reply.next_page_token:
                raise RuntimeError("own waiting-list entry not listed")
            page = reply.next_page_token

    def sign_in(self, address: str) -> str:
        self.api.call("accounts.RequestSignInCode", acc.RequestSignInCodeRequest(email=address))
        body = self.s.outbox.take(address, "sign-in code", self.s.stop)
        self.check()
        if body is None:
            raise RuntimeError("no sign-in code arrived")
        code = re.search(r"code is: (\d{6})", body).group(1)
        return self.api.call("accounts.SignIn", acc.SignInRequest(email=address, code=code)).session_token

    # --- photos ----------------------------------------------------------------------------
    def upload(self, token: str, content: bytes, retry: bool = False) -> str | None:
        request = pho.UploadPhotoRequest(
            content=content, filename="me.jpg", content_type="image/jpeg", request_id=self.request_id()
        )
        try:
            photo = self.api.call("photos.UploadPhoto", request, token).photo
        except Refused as exc:
            if exc.code in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNAVAILABLE,
            ):
                return None
            raise
        if retry:  # the app retries after a lost answer: the same photo comes back
            again = self.api.call("photos.UploadPhoto", request, token).photo
            if again.id == photo.id:
                self.s.tally.event("idempotent upload retries")
            else:
                self.s.tally.anomaly("upload retries that made a second photo")
        return photo.id

    def upload_photos(self, token: str, wanted: int) -> list[str]:
        accepted: list[str] = []
        for _ in range(wanted * 3):
            self.check()
            if len(accepted) >= wanted:
                break
            if self.rng.random() < 0.3:
                name, content = self.rng.choice(sorted(self.s.bad.items()))
                if self.upload(token, content) is not None:
                    self.s.tally.anomaly(f"bad uploads accepted ({name})")
                else:
                    self.s.tally.event("bad uploads refused")
                continue
            photo = self.upload(token, self.rng.choice(self.s.good), retry=self.rng.random() < 0.1)
            self.s.tally.event("good uploads accepted" if photo else "good uploads refused")
            if photo:
                accepted.append(photo)
        return accepted

    # --- models ----------------------------------------------------------------------------
    def create_model(self, token: str, photos: list[str]) -> str:
        request = mdl.CreateModelRequest(display_name="Me", photo_ids=photos, request_id=self.request_id())
        model = self.api.call("models.CreateModel", request, token).model
        self.s.tally.event("models created")
        return model.id

    def watch_model(self, token: str, model_id: str) -> int | None:
        """The model's final state, or None when it is not reached within the user's patience."""
        give_up = time.monotonic() + PATIENCE_SECONDS
        while time.monotonic() < give_up:
            self.check()
            replies = self.api.stream(
                "models.WatchModel",
                mdl.WatchModelRequest(id=model_id),
                token,
                10.0,
                lambda r: r.state in TERMINAL_MODEL,
            )
            if replies and replies[-1].state in TERMINAL_MODEL:
                return replies[-1].state
        return None

    # --- orders ----------------------------------------------------------------------------
    def order(self, token: str, model_id: str, styles: list[str]) -> str | None:
        request = ordr.CreateOrderRequest(
            model_ids=[model_id],
            style_id=self.rng.choice(styles),
            count=self.rng.randint(1, 3),
            request_id=self.request_id(),
        )
        for _ in range(2):
            try:
                created = self.api.call("orders.CreateOrder", request, token).order
                break
            except Refused as exc:
                if exc.reason != "INSUFFICIENT_CREDITS":
                    raise
                purchase = pur.RecordPurchaseRequest(
                    store=pur.STORE_APP_STORE, signed_transaction=shared_app_store().transaction()
                )
                self.api.call("purchases.RecordPurchase", purchase, token)
                self.s.tally.event("credits bought")
        else:
            return None
        self.s.tally.event("orders created")
        if self.rng.random() < 0.2:  # a retry with the same request id returns the same order
            again = self.api.call("orders.CreateOrder", request, token).order
            if again.id == created.id:
                self.s.tally.event("idempotent order retries")
            else:
                self.s.tally.anomaly("order retries that made a second order")
        return created.id

    def watch_order(self, token: str, order_id: str) -> int:
        while True:
            self.check()
            replies = self.api.stream(
                "orders.WatchOrder",
                ordr.WatchOrderRequest(id=order_id),
                token,
                10.0,
                lambda r: r.order.state in TERMINAL_ORDER,
            )
            if replies and replies[-1].order.state in TERMINAL_ORDER:
                return replies[-1].order.state

    def handle_generated(self, token: str, order_id: str) -> None:
        listed = self.api.call(
            "orders.ListGeneratedPhotos", ordr.ListGeneratedPhotosRequest(order_id=order_id, page_size=50), token
        )
        for photo in listed.generated_photos:
            self.check()
            action = self.rng.choice(["preview", "download", "download", "reject", "delete", "keep"])
            if action == "preview":
                self.api.call(
                    "orders.GetGeneratedPhotoPreview", ordr.GetGeneratedPhotoPreviewRequest(id=photo.id), token
                )
            elif action == "download":
                chunks = self.api.stream(
                    "orders.DownloadGeneratedPhoto",
                    ordr.DownloadGeneratedPhotoRequest(id=photo.id),
                    token,
                    CALL_TIMEOUT,
                )
                data = b"".join(c.data for c in chunks)
                ok = (
                    chunks
                    and len(data) == chunks[0].total_size
                    and Image.open(io.BytesIO(data)).size == (photo.width, photo.height)
                )
                if ok:
                    self.s.tally.event("images downloaded")
                else:
                    self.s.tally.anomaly("downloads that were not the image")
            elif action == "reject":
                self.api.call("orders.RejectGeneratedPhoto", ordr.RejectGeneratedPhotoRequest(id=photo.id), token)
                self.s.tally.event("images rejected")
            elif action == "delete":
                self.api.call("orders.DeleteGeneratedPhoto", ordr.DeleteGeneratedPhotoRequest(id=photo.id), token)
                with self.s.tally.lock:
                    self.s.tally.deleted_generated[photo.id] = order_id
                self.s.tally.event("images deleted")

    # --- a user's whole life ------------------------------------------------------------------
    def one_user(self) -> None:
        api, tally, rng = self.api, self.s.tally, self.rng
        address = self.email_of(self.life)
        token = self.sign_up(address)
        self.check()
        api.call("accounts.GetAccount", acc.GetAccountRequest(), token)
        photos = self.upload_photos(token, rng.randint(4, 5))
        if len(photos) < 4:
            tally.event("users with too few photos accepted")
            return
        if len(photos) > 4 and rng.random() < 0.5:  # a photo the user changed their mind about
            api.call("photos.DeletePhoto", pho.DeletePhotoRequest(id=photos.pop()), token)
            tally.event("photos deleted")
        api.call("photos.ListPhotos", pho.ListPhotosRequest(page_size=50), token)
        self.wait_for_a_training_slot(token)
        try:
            self.train_and_order(token, photos)
        finally:
            self.s.training_slots.release()
        self.leave(token, address)

    def wait_for_a_training_slot(self, token: str) -> None:
        """Browses (cheap calls) until fewer than TRAINING_SLOTS users train."""
        browse = [
            "purchases.GetBalance",
            "purchases.ListProducts",
            "photos.ListPhotos",
            "models.ListModels",
            "accounts.GetAccount",
        ]
        requests = {
            "purchases.GetBalance": pur.GetBalanceRequest(),
            "purchases.ListProducts": pur.ListProductsRequest(),
            "photos.ListPhotos": pho.ListPhotosRequest(page_size=50),
            "models.ListModels": mdl.ListModelsRequest(page_size=50),
            "accounts.GetAccount": acc.GetAccountRequest(),
        }
        while not self.s.training_slots.acquire(timeout=self.rng.uniform(2.0, 6.0)):
            self.check()
            name = self.rng.choice(browse)
            self.api.call(name, requests[name], token)
        if self.s.stop.is_set():
            self.s.training_slots.release()
            raise StopRun

    def train_and_order(self, token: str, photos: list[str]) -> None:
        api, tally, rng = self.api, self.s.tally, self.rng
        model = self.create_model(token, photos[:4])
        if rng.random() < 0.15:  # deleted while queued or training, then a second try with new photos
            time.sleep(rng.uniform(0, 5))
            api.call("models.DeleteModel", mdl.DeleteModelRequest(id=model), token)
            tally.event("models deleted before they were ready")
            photos = self.upload_photos(token, 4)
            if len(photos) < 4:
                tally.event("users with too few photos accepted")
                return
            model = self.create_model(token, photos)
        state = self.watch_model(token, model)
        if state is None:  # the user gave up waiting
            api.call("models.DeleteModel", mdl.DeleteModelRequest(id=model), token)
            tally.event("models deleted while waiting (the user gave up)")
        else:
            tally.event(f"models ended {mdl.ModelState.Name(state)}")
        if state == mdl.MODEL_STATE_READY:
            styles = [s.id for s in api.call("orders.ListStyles", ordr.ListStylesRequest(), token).styles]
            for _ in range(rng.randint(1, 3)):
                order = self.order(token, model, styles)
                if order is None:
                    break
                gone = rng.random() < 0.15  # the model deleted while its order runs: its images fail and are refunded
                if gone:
                    api.call("models.DeleteModel", mdl.DeleteModelRequest(id=model), token)
                    tally.event("models deleted while their order ran")
                final = self.watch_order(token, order)
                tally.event(f"orders ended {ordr.OrderState.Name(final)}")
                self.handle_generated(token, order)
                if gone:
                    return
            api.call("purchases.GetBalance", pur.GetBalanceRequest(), token)
            if rng.random() < 0.3:
                api.call("models.DeleteModel", mdl.DeleteModelRequest(id=model), token)
                tally.event("models deleted")

    def leave(self, token: str, address: str) -> None:
        """The end of a user: an invitation for the next user of this thread, then deletion or sign-out."""
        api, tally, rng = self.api, self.s.tally, self.rng
        self.check()
        invited = rng.random() < 0.5
        if invited:  # the next user of this thread comes by invitation
            api.call(
                "accounts.InviteFriend",
                acc.InviteFriendRequest(email=self.email_of(self.life + 1), name="A Friend"),
                token,
            )
            body = self.s.outbox.take(self.email_of(self.life + 1), "invited you", self.s.stop)
            self.check()
            if body is None:
                raise RuntimeError("no invitation email arrived")
            self.invitation = re.search(r"invitation code:\s+(\S+)", body).group(1)
        # An inviter mostly stays (a deleted inviter's invitations are revoked: INVITATION_REVOKED, tried now and then).
        if rng.random() < (0.15 if invited else 0.7):
            api.call("accounts.DeleteAccount", acc.DeleteAccountRequest(confirm_email=address), token)
            tally.event("accounts deleted")
            if rng.random() < 0.25:  # changed their mind: sign in again, reactivate, and delete for good
                token = self.sign_in(address)
                api.call("accounts.ReactivateAccount", acc.ReactivateAccountRequest(), token)
                api.call("accounts.DeleteAccount", acc.DeleteAccountRequest(confirm_email=address), token)
                tally.event("accounts reactivated and deleted again")
        else:
            api.call("accounts.SignOut", acc.SignOutRequest(), token)


def staff_token(system: System, outbox: Outbox, stop: threading.Event) -> str:
    system.admin("create-staff", STAFF_EMAIL, "Chaos Admin", "--role", "admin")
    api = Api(system.address, Tally())
    try:
        api.call("accounts.RequestSignInCode", acc.RequestSignInCodeRequest(email=STAFF_EMAIL))
        body = outbox.take(STAFF_EMAIL, "sign-in code", stop)
        code = re.search(r"code is: (\d{6})", body).group(1)
        return api.call("accounts.SignIn", acc.SignInRequest(email=STAFF_EMAIL, code=code)).session_token
    finally:
        api.close()


# --------------------------------------------------------------------------------------------
# Chaos and measurement threads
# --------------------------------------------------------------------------------------------


class Killer(threading.Thread):
    """SIGKILLs each target process at seeded random moments, at least KILL_GAP_SECONDS[0] apart."""

    def __init__(self, system: System, seed: int, stop: threading.Event) -> None:
        super().__init__(name="killer", daemon=True)
        self.system, self.stop_event = system, stop
        self.rngs = {name: random.Random(f"{seed}-kill-{name}") for name in KILL_TARGETS}
        start = time.monotonic()
        self.due = {name: start + rng.uniform(5.0, KILL_GAP_SECONDS[1]) for name, rng in self.rngs.items()}
        self.kills: collections.Counter = collections.Counter()

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            now = time.monotonic()
            for name, when in self.due.items():
                if now < when:
                    continue
                process = self.system.find(KILL_TARGETS[name])
                if process is None:  # being restarted: try again shortly
                    self.due[name] = now + 1.0
                    continue
                try:
                    process.send_signal(signal.SIGKILL)
                    self.kills[name] += 1
                except psutil.NoSuchProcess:
                    pass
                self.due[name] = now + self.rngs[name].uniform(*KILL_GAP_SECONDS)


class MemorySampler(threading.Thread):
    """The API server's peak RSS (and a roll call of the system's processes) every 0.25 s."""

    def __init__(self, system: System, stop: threading.Event) -> None:
        super().__init__(name="memory", daemon=True)
        self.system, self.stop_event = system, stop
        self.peak_rss = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            self.system.descendants()
            pid = self.system.server_pid()
            try:
                if pid:
                    self.peak_rss = max(self.peak_rss, psutil.Process(pid).memory_info().rss)
            except psutil.NoSuchProcess:
                pass


# --------------------------------------------------------------------------------------------
# Checks on the database and the data folder
# --------------------------------------------------------------------------------------------


def wait_drained(url: str, timeout: float) -> tuple[int, int]:
    """Waits until no order and no training job is queued or running; returns (open orders, open jobs)."""
    from faceharmony.core.db import models as m
    from faceharmony.core.db.connection import close_database, open_database

    db = open_database(url, pool_size=1)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with db.connection_context():
                open_orders = m.Order.select().where(m.Order.state.in_(("queued", "running"))).count()
                open_jobs = m.TrainingJob.select().where(m.TrainingJob.state.in_(("queued", "running"))).count()
            if (open_orders == 0 and open_jobs == 0) or time.monotonic() > deadline:
                return open_orders, open_jobs
            time.sleep(1.0)
    finally:
        close_database(db)


def check_images_and_credits(url: str, deleted_generated: dict[str, str]) -> dict[str, int]:
    """Every order's slots against its generated photos, and its debit and refunds against the ledger."""
    from faceharmony.core.db import models as m
    from faceharmony.core.db.connection import close_database, open_database

    db = open_database(url, pool_size=1)
    r = collections.Counter()
    try:
        with db.connection_context():
            slots = collections.defaultdict(list)
            for slot in m.OrderImage.select(m.OrderImage.id, m.OrderImage.order, m.OrderImage.state).tuples():
                slots[slot[1]].append(slot)
            made = collections.Counter(g[0] for g in m.GeneratedPhoto.select(m.GeneratedPhoto.image).tuples())
            generated_ids = {g[0] for g in m.GeneratedPhoto.select(m.GeneratedPhoto.id).tuples()}
            gone_by_order = collections.Counter(o for g, o in deleted_generated.items() if g not in generated_ids)
            debits = collections.defaultdict(list)
            refunds = collections.defaultdict(list)
            for kind, ref, delta in m.CreditEntry.select(
                m.CreditEntry.kind, m.CreditEntry.ref_id, m.CreditEntry.delta
            ).tuples():
                if kind in ("order", "refund"):
                    (debits if kind == "order" else refunds)[ref].append(delta)
            for order in m.Order.select():
                mine = slots[order.id]
                cost = order.credits_charged // order.images_total if order.images_total else 0
                done = [s for s in mine if s[2] == "done"]
                failed = [s for s in mine if s[2] == "failed"]
                pending = [s for s in mine if s[2] == "pending"]
                missing = sum(1 for s in done if made[s[0]] == 0)
                r["orders"] += 1
                r["slots"] += len(mine)
                r["images delivered"] += len(done)
                r["images failed"] += len(failed)
                r["images pending"] += len(pending)
                r["images lost"] += max(0, missing - gone_by_order[order.id])
                r["images deleted by their owner and purged"] += min(missing, gone_by_order[order.id])
                r["images made twice"] += sum(max(0, made[s[0]] - 1) for s in done)
                r["images made for failed or pending slots"] += sum(made[s[0]] for s in failed + pending)
                r["credits charged"] += order.credits_charged
                r["credits of delivered images"] += cost * len(done)
                r["credits refunded"] += order.credits_refunded
                r["credits of pending images"] += cost * len(pending)
                debit_once = (
                    debits.get(order.id) == [-order.credits_charged]
                    if order.credits_charged
                    else order.id not in debits
                )
                exact = (
                    debit_once
                    and len(mine) == order.images_total
                    and order.credits_charged == order.images_total * cost
                    and order.images_done == len(done)
                    and order.images_failed == len(failed)
                    and order.credits_refunded == cost * len(failed)
                    and all(refunds.get(s[0]) == [cost] for s in failed)
                    and not any(s[0] in refunds for s in done + pending)
                )
                r["orders whose credits are not exact"] += 0 if exact else 1
            balances = collections.Counter()
            for account, delta in m.CreditEntry.select(m.CreditEntry.account, m.CreditEntry.delta).tuples():
                balances[account] += delta
            r["accounts with a negative balance"] = sum(1 for v in balances.values() if v < 0)
    finally:
        close_database(db)
    return dict(r)


def blob_census(url: str, data_dir: Path, margin_hours: float) -> dict[str, list[str]]:
    """Files of the data folder no row names, and rows whose blob is gone, by what they are."""
    from faceharmony.core.db.connection import close_database, open_database
    from faceharmony.retention.orphans import REFERENCES

    db = open_database(url, pool_size=1)
    found: dict[str, list[str]] = collections.defaultdict(list)
    cutoff = time.time() - margin_hours * 3600
    try:
        with db.connection_context():
            for kind, columns in REFERENCES.items():
                named = {row[0] for column in columns for row in column.model.select(column).tuples() if row[0]}
                folder = data_dir / "blobs" / kind
                present = set()
                for path in folder.iterdir() if folder.exists() else ():
                    if path.name.startswith("."):
                        found["temporary files in the blob store"].append(f"{kind}/{path.name}")
                    elif path.name not in named:
                        older = path.stat().st_mtime <= cutoff
                        found[
                            "blobs no row names, older than the margin"
                            if older
                            else "blobs no row names, within the margin"
                        ].append(f"{kind}/{path.name}")
                    present.add(path.name)
                found["rows whose blob is gone"] += [f"{kind}/{b}" for b in sorted(named - present)]
    finally:
        close_database(db)
    known = {"blobs", "outbox", "base-model", "triton", "secret.key"}
    for path in sorted(data_dir.iterdir()):
        if path.name not in known and not path.name.startswith("faceharmony.sqlite3"):
            for f in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
                found["temporary or unknown files in the data folder"].append(str(f.relative_to(data_dir)))
    for path in sorted((data_dir / "outbox").glob(".*")):
        found["temporary or unknown files in the data folder"].append(f"outbox/{path.name}")
    return found


def wait_for_exit(system: System, grace: float) -> list[str]:
    """The system's processes still alive `grace` seconds after the launcher exited (polled, returns early)."""
    deadline = time.monotonic() + grace
    while (left := system.left_behind()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


# Files that land in TMPDIR and hold nothing of anybody's: onnxruntime writes a session stamp on import.
TMPDIR_NOISE = {".ses"}


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in TMPDIR_NOISE)


def age_files(folder: Path, seconds: float) -> None:
    """Dates every file under `folder` back by `seconds` (what the orphan sweep sees once its margin has passed)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


# --------------------------------------------------------------------------------------------
# One run, and the report
# --------------------------------------------------------------------------------------------


def run_once(database: str, args: argparse.Namespace, base_model_cache: Path | None) -> tuple[bool, Path | None]:
    root = Path(tempfile.mkdtemp(prefix=f"fh-chaos-{database}-"))
    cluster = None
    url = None
    if database == "postgres":
        from tests.support.postgres import PostgresCluster, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL server binaries not found (make test installs them)")
        cluster = PostgresCluster(bindir).start()
        url = cluster.url(cluster.create_database())
    system = System(root, {}, free_port(), triton_port())
    system.env = system_env(root, url, system.api_port, system.triton_port)
    url = url or f"sqlite:///{system.data_dir / 'faceharmony.sqlite3'}"
    if base_model_cache and (base_model_cache / "model_index.json").exists():
        shutil.copytree(base_model_cache, system.data_dir / "base-model")
    stop, sampling, tally = threading.Event(), threading.Event(), Tally()
    print(f"\n== {database}: {args.clients} clients for {args.seconds:.0f} s, seed {args.seed} ==", flush=True)
    print("settings: " + " ".join(f"{k}={v}" for k, v in SYSTEM_SETTINGS.items()) + " (the rest: embedded defaults)")
    try:
        t0 = time.monotonic()
        system.start()
        system.wait_ready()
        print(f"system ready in {time.monotonic() - t0:.0f} s (run folder {root})", flush=True)
        outbox = Outbox(system.data_dir / "outbox")
        shared = Shared(
            system.address,
            outbox,
            staff_token(system, outbox, stop),
            good_uploads(args.seed),
            bad_uploads(),
            tally,
            stop,
            args.seed,
        )
        sampler, killer = MemorySampler(system, sampling), Killer(system, args.seed, stop)
        clients = [Client(i, shared) for i in range(args.clients)]
        for thread in (sampler, killer, *clients):
            thread.start()
        stop.wait(args.seconds)
        stop.set()
        t_stop = time.monotonic()
        for c in clients:
            c.join(CALL_TIMEOUT + 15)
        killer.join()
        stuck_clients = sum(1 for c in clients if c.is_alive())
        print(f"clients stopped in {time.monotonic() - t_stop:.0f} s; draining the queues", flush=True)
        open_orders, open_jobs = wait_drained(url, args.drain_seconds)
        system.descendants()
        up_alive_at_end = system.launcher.poll() is None
        launcher_code = system.stop()
        sampling.set()
        sampler.join()
        left_at_exit = system.left_behind()
        left = wait_for_exit(system, LEFT_BEHIND_GRACE_SECONDS) if left_at_exit else []
        shm_left = system.shm_left()
        ledger = check_images_and_credits(url, tally.deleted_generated)
        retention_codes = [system.retention_once()]
        census = blob_census(url, system.data_dir, ORPHAN_MARGIN_HOURS)
        tmp_left = temp_files(root / "tmp")
        age_files(system.data_dir, (ORPHAN_MARGIN_HOURS + 1) * 3600)
        retention_codes.append(system.retention_once())
        aged = blob_census(url, system.data_dir, ORPHAN_MARGIN_HOURS)
        if base_model_cache and not (base_model_cache / "model_index.json").exists():
            shutil.copytree(system.data_dir / "base-model", base_model_cache)
        ok = report(
            database,
            tally,
            killer.kills,
            sampler.peak_rss,
            ledger,
            census,
            aged,
            tmp_left,
            left_at_exit,
            left,
            retention_codes,
            (len(system.shm_prefixes), shm_left),
            open_orders,
            open_jobs,
            [c.crashed for c in clients if c.crashed],
            stuck_clients,
            up_alive_at_end,
            launcher_code,
        )
        return ok, root
    finally:
        stop.set()
        sampling.set()
        if system.launcher is not None:
            system.stop()
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def report(
    database,
    tally,
    kills,
    peak_rss,
    ledger,
    census,
    aged,
    tmp_left,
    left_at_exit,
    left,
    retention_codes,
    shm,
    open_orders,
    open_jobs,
    crashed,
    stuck_clients,
    up_alive,
    launcher_code,
) -> bool:
    goals: list[tuple[str, bool]] = []
    by_code = collections.Counter()
    errors = collections.Counter()
    for (method, code, reason), n in tally.answers.items():
        by_code[code] += n
        if code != "OK":
            errors[(code, reason or "-", method)] += n
    print(
        f"requests: {sum(by_code.values())}; by status code: " + ", ".join(f"{c} {n}" for c, n in by_code.most_common())
    )
    for (code, reason, method), n in sorted(errors.items()):
        print(f"    {code:<20} {reason:<28} {method:<26} {n}")
    goals.append(("0 UNKNOWN/INTERNAL answers", by_code["UNKNOWN"] + by_code["INTERNAL"] == 0))
    print("what the users did: " + "; ".join(f"{k} {v}" for k, v in sorted(tally.events.items())))
    for what, n in sorted(tally.anomalies.items()):
        print(f"    BROKEN: {what} {n}")
    goals.append(("every bad upload refused, every retry idempotent, every download the image", not tally.anomalies))
    print("kills: " + ", ".join(f"{name} {kills[name]}" for name in KILL_TARGETS))
    print(f"API server peak RSS: {peak_rss / 2**20:.0f} MiB")
    print(
        "images: "
        + ", ".join(
            f"{k} {ledger.get(k, 0)}"
            for k in (
                "orders",
                "slots",
                "images delivered",
                "images failed",
                "images pending",
                "images deleted by their owner and purged",
                "images lost",
                "images made twice",
                "images made for failed or pending slots",
            )
        )
    )
    goals.append(
        (
            "0 images lost or made twice",
            ledger.get("images lost", 0)
            + ledger.get("images made twice", 0)
            + ledger.get("images made for failed or pending slots", 0)
            == 0,
        )
    )
    print(
        "credits: "
        + ", ".join(
            f"{k} {ledger.get(k, 0)}"
            for k in (
                "credits charged",
                "credits of delivered images",
                "credits refunded",
                "credits of pending images",
                "orders whose credits are not exact",
                "accounts with a negative balance",
            )
        )
    )
    balanced = ledger.get("credits charged", 0) == ledger.get("credits of delivered images", 0) + ledger.get(
        "credits refunded", 0
    ) + ledger.get("credits of pending images", 0)
    goals.append(
        (
            "credits exact (charged = delivered + refunded, every order's ledger rows once)",
            balanced
            and not ledger.get("orders whose credits are not exact")
            and not ledger.get("accounts with a negative balance"),
        )
    )
    print(f"queues after draining: {open_orders} orders and {open_jobs} training jobs still open")
    goals.append(("queues drained", open_orders == 0 and open_jobs == 0 and ledger.get("images pending", 0) == 0))
    for title, found in (
        ("after the final retention run", census),
        ("after a retention run past the orphan margin", aged),
    ):
        print(
            f"data folder {title}: "
            + (", ".join(f"{k} {len(v)}" for k, v in sorted(found.items()) if v) or "nothing left over")
        )
        for k, v in sorted(found.items()):
            for item in v[:5]:
                print(f"    {k}: {item}")
    goals.append(
        ("0 files no row names and 0 rows without their blob, once the margin has passed", not any(aged.values()))
    )
    print(f"final retention runs exited {retention_codes[0]} and {retention_codes[1]}")
    goals.append(("the final retention runs exited 0", retention_codes == [0, 0]))
    print(f"files left in the system's TMPDIR: {len(tmp_left)}" + "".join(f"\n    {p}" for p in tmp_left[:8]))
    goals.append(("0 files left in TMPDIR", not tmp_left))
    launches, shm_left = shm
    if launches:
        print(f"shared-memory regions of the run's {launches} Triton launches left in /dev/shm: {len(shm_left)}")
        goals.append(("0 shared-memory regions left in /dev/shm", not shm_left))
    else:
        print("shared-memory regions in /dev/shm: not checked (no tritonserver named its regions)")
    print(
        f"processes alive when the launcher exited ({launcher_code}): {len(left_at_exit)}"
        + "".join(f"\n    {p}" for p in left_at_exit[:8])
        + f"; {LEFT_BEHIND_GRACE_SECONDS:.0f} s later: {len(left)}"
    )
    goals.append(
        (
            f"the launcher ran to the end, exited 0 and left no process after {LEFT_BEHIND_GRACE_SECONDS:.0f} s",
            up_alive and launcher_code == 0 and not left,
        )
    )
    goals.append(("every client ran to the end", not crashed and not stuck_clients))
    for text in crashed:
        print(f"    client crashed: {text}")
    print("goals:")
    for text, met in goals:
        print(f"    [{'met' if met else 'MISSED'}] {text}")
    return all(met for _, met in goals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the clients run, per database")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--drain-seconds", type=float, default=240.0, help="most time to wait for the queues at the end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folders (logs, data) for a post-mortem")
    args = parser.parse_args(argv)
    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    with tempfile.TemporaryDirectory(prefix="fh-chaos-base-") as cache:
        results = [run_once(db, args, Path(cache) / "base-model")[0] for db in databases]
    print("\nall goals met" if all(results) else "\nsome goals MISSED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
