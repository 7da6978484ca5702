"""The Python SDK (clients/sdk.py): the user flow against the real server, one exception type with the reason,
deadlines, and gRPC's own retries for exactly the calls a retry cannot repeat with another outcome."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from faceharmony.clients.sdk import RETRYABLE_METHODS, Client, FaceHarmonyError
from faceharmony.core.db.models import Photo
from faceharmony.core.ids import new_id
from faceharmony.v1 import account_pb2, model_pb2, order_pb2
from tests.support import images
from tests.support.fake_grpc import serve_on_loopback


@pytest.fixture
def signed_in(sqlite_harness):
    user = sqlite_harness.sign_up("sdk@example.com", "Ada Lovelace")
    with Client(f"127.0.0.1:{sqlite_harness.port}", token=user.token) as client:
        yield sqlite_harness, user, client


def test_the_user_flow_through_the_sdk(signed_in, tmp_path):
    h, user, fh = signed_in
    assert fh.health() == "SERVING"
    assert fh.accounts.get_account().email == "sdk@example.com"
    assert fh.accounts.update_name("Ada King").name == "Ada King"

    face, cat, text = tmp_path / "me.jpg", tmp_path / "cat.jpg", tmp_path / "notes.jpg"
    face.write_bytes(images.one_face())
    cat.write_bytes(images.cat())
    text.write_bytes(b"not an image at all")
    seen = []
    verdicts = fh.photos.upload_files([face, cat, text, tmp_path / "missing.jpg"], on_verdict=seen.append)
    assert seen == verdicts
    assert [(v.name, v.ok) for v in verdicts] == [
        ("me.jpg", True),
        ("cat.jpg", False),
        ("notes.jpg", False),
        ("missing.jpg", False),
    ]
    assert [v.reason for v in verdicts[1:]] == ["NO_FACE", "UNDECODABLE_IMAGE", "UNREADABLE_FILE"]
    assert verdicts[1].error.code == grpc.StatusCode.INVALID_ARGUMENT
    # Only the accepted photo was stored.
    assert [p.id for p in fh.photos.list_photos()] == [verdicts[0].photo.id]
    assert h.db_call(Photo.select().count) == 1

    assert fh.models.list_models() == []
    assert [s.id for s in fh.orders.list_styles()]
    assert fh.purchases.get_balance().credits >= 0
    ticket = fh.support.create_ticket("Hello", "A question")
    assert [t.id for t in fh.support.list_tickets()] == [ticket.id]

    fh.accounts.sign_out()
    assert fh.token is None
    with pytest.raises(FaceHarmonyError) as err:
        Client(f"127.0.0.1:{h.port}", token=user.token).accounts.get_account()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.reason


def test_files_are_checked_before_they_are_read_or_sent(signed_in, tmp_path):
    import os

    h, _user, fh = signed_in
    big, fifo, odd = tmp_path / "big.jpg", tmp_path / "pipe.jpg", tmp_path / os.fsdecode(b"caf\xe9.jpg")
    big.write_bytes(images.one_face() + b"\0" * 2_000_000)
    os.mkfifo(fifo)
    odd.write_bytes(images.one_face())
    verdicts = fh.photos.upload_files([big, fifo, tmp_path, odd], max_bytes=1_000_000)
    assert [v.reason for v in verdicts[:3]] == ["IMAGE_TOO_LARGE", "UNREADABLE_FILE", "UNREADABLE_FILE"]
    assert "not sent" in verdicts[0].error.message
    # A name that is not UTF-8 is shown and sent with U+FFFD, and the photo is stored.
    assert verdicts[3].ok and verdicts[3].name == "caf\ufffd.jpg"
    assert h.db_call(Photo.select().count) == 1


def test_errors_carry_the_code_and_the_reason(signed_in):
    h, _user, fh = signed_in
    with pytest.raises(FaceHarmonyError) as err:
        fh.models.create_model("Me", [])
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TOO_FEW_PHOTOS")
    assert "TOO_FEW_PHOTOS" in str(err.value)
    # A stream's failure is the same exception.
    with pytest.raises(FaceHarmonyError) as err:
        list(fh.models.watch_model(new_id()))
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    with pytest.raises(FaceHarmonyError) as err:
        fh.accounts.join_waitlist("Bob", "bob@example.com", is_16_or_older=False)
    assert err.value.reason == "AGE_ATTESTATION_REQUIRED"
    # A public call needs no session; a user call without one is refused by the server.
    with Client(f"127.0.0.1:{h.port}") as anonymous:
        with pytest.raises(FaceHarmonyError) as err:
            anonymous.orders.list_orders()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_an_unreachable_server_is_unavailable_without_a_reason():
    with Client("127.0.0.1:1", timeout=2) as fh:
        with pytest.raises(FaceHarmonyError) as err:
            fh.accounts.request_sign_in_code("a@example.com")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.reason == ""
    assert err.value.retryable


# --- retries and deadlines, against a server that fails on purpose -----------------------------------------


class FlakyServer(grpc.GenericRpcHandler):
    """Answers every unary method of the API: UNAVAILABLE for the first `failures` calls of each method, then an
    empty reply (or an error with a reason, for `refuse`). Counts attempts and the request_ids they carried."""

    def __init__(self, failures: int, delay: float = 0.0, refuse: str = "", fail_after_first: bool = False) -> None:
        self.failures, self.delay, self.refuse, self.fail_after_first = failures, delay, refuse, fail_after_first
        self.attempts: Counter[str] = Counter()
        self.request_ids: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def service(self, details):
        method = details.method.rsplit("/", 1)[-1]

        def handle(request_bytes, context):
            with self.lock:
                self.attempts[method] += 1
                attempt = self.attempts[method]
            if method == "CreateModel":
                self.request_ids.setdefault(method, []).append(
                    model_pb2.CreateModelRequest.FromString(request_bytes).request_id
                )
            if self.delay:
                time.sleep(self.delay)
            if attempt <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            if self.refuse:
                detail = any_pb2.Any()
                detail.Pack(error_details_pb2.ErrorInfo(reason=self.refuse, domain="faceharmony.app"))
                status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="refused", details=[detail])
                context.abort_with_status(rpc_status.to_status(status))
            return b""

        def watch(request_bytes, context):
            with self.lock:
                self.attempts[method] += 1
                attempt = self.attempts[method]
            if self.delay:
                time.sleep(self.delay)
            if attempt <= self.failures and not self.fail_after_first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            yield model_pb2.WatchModelResponse(state=model_pb2.MODEL_STATE_TRAINING, progress=0.5).SerializeToString()
            if attempt <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            yield model_pb2.WatchModelResponse(state=model_pb2.MODEL_STATE_READY, progress=1.0).SerializeToString()

        if method.startswith("Watch"):
            return grpc.unary_stream_rpc_method_handler(watch)
        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def flaky():
    servers = []

    def start(**kwargs):
        handler = FlakyServer(**kwargs)
        server, port = serve_on_loopback(handler)
        servers.append(server)
        return handler, Client(f"127.0.0.1:{port}", token="t", timeout=5)

    yield start
    for server in servers:
        server.stop(0)


def test_idempotent_calls_are_retried_by_the_channel(flaky):
    handler, fh = flaky(failures=2)
    fh.models.get_model("m1")
    fh.orders.list_orders()
    assert handler.attempts["GetModel"] == 3
    assert handler.attempts["ListOrders"] == 3


def test_an_upload_of_any_size_the_channel_sends_is_retried(flaky):
    # gRPC stops retrying a call whose request outgrew its retry buffer (256 KiB by default).
    for size in (1_000, 300_000, 3_000_000):
        handler, fh = flaky(failures=1)
        fh.photos.upload_photo(b"\xff" * size)
        assert handler.attempts["UploadPhoto"] == 2, size


def test_a_watch_is_retried_only_before_its_first_message(flaky):
    handler, fh = flaky(failures=1)
    states = [e.state for e in fh.models.watch_model("m1")]
    assert states == [model_pb2.MODEL_STATE_TRAINING, model_pb2.MODEL_STATE_READY]
    assert handler.attempts["WatchModel"] == 2

    handler, fh = flaky(failures=1, fail_after_first=True)
    seen = []
    with pytest.raises(FaceHarmonyError) as err:
        for event in fh.models.watch_model("m1"):
            seen.append(event.state)
    assert seen == [model_pb2.MODEL_STATE_TRAINING]
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retryable
    assert handler.attempts["WatchModel"] == 1


def test_creates_are_retried_with_the_same_request_id(flaky):
    handler, fh = flaky(failures=1)
    fh.models.create_model("Me", ["a", "b", "c", "d"])
    ids = handler.request_ids["CreateModel"]
    assert len(ids) == 2 and ids[0] == ids[1] and len(ids[0]) == 32
    # The caller's own request_id is the one sent.
    fh.models.create_model("Me", ["a", "b", "c", "d"], request_id="mine")
    assert handler.request_ids["CreateModel"][-1] == "mine"
    # A retrain too (the server returns the model for a request_id it has seen).
    fh.models.retrain_model("m1")
    assert handler.attempts["RetrainModel"] == 2


def test_calls_that_change_state_once_are_never_retried(flaky):
    handler, fh = flaky(failures=1)
    for call in (
        lambda: fh.accounts.sign_in("a@example.com", "123456"),
        lambda: fh.accounts.request_sign_in_code("a@example.com"),
        lambda: fh.accounts.delete_account("a@example.com"),
        lambda: fh.photos.delete_photo("p1"),
    ):
        with pytest.raises(FaceHarmonyError) as err:
            call()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert handler.attempts == Counter(SignIn=1, RequestSignInCode=1, DeleteAccount=1, DeletePhoto=1)


def test_a_refusal_is_not_retried_and_keeps_its_reason(flaky):
    handler, fh = flaky(failures=0, refuse="NO_FACE")
    with pytest.raises(FaceHarmonyError) as err:
        fh.photos.upload_photo(b"jpeg")
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NO_FACE")
    assert not err.value.retryable
    assert handler.attempts["UploadPhoto"] == 1


def test_every_call_has_a_deadline(flaky):
    handler, fh = flaky(failures=0, delay=1.0)
    fh.timeout = 0.2
    calls = {
        "GetAccount": fh.accounts.get_account,
        "SignIn": lambda: fh.accounts.sign_in("a@example.com", "123456"),
        "JoinWaitlist": lambda: fh.accounts.join_waitlist("A", "a@example.com", is_16_or_older=True),
        "ListPhotos": fh.photos.list_photos,
        "GetModel": lambda: fh.models.get_model("m1"),
        "CreateModel": lambda: fh.models.create_model("Me", ["a"]),
        "DeleteModel": lambda: fh.models.delete_model("m1"),
        "CreateOrder": lambda: fh.orders.create_order(["m1"], "studio"),
        "ListGeneratedPhotos": fh.orders.list_generated_photos,
        "RecordPurchase": lambda: fh.purchases.record_purchase(1, "p", "jws"),
        "GetBalance": fh.purchases.get_balance,
        "CreateTicket": lambda: fh.support.create_ticket("s", "b"),
        "ListWaitlist": fh.admin.list_waitlist,
    }
    for name, call in calls.items():
        with pytest.raises(FaceHarmonyError) as err:
            call()
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, name
    fh.watch_timeout = 0.2
    with pytest.raises(FaceHarmonyError) as err:
        list(fh.models.watch_model("m1"))
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # A method's own timeout wins over the client's.
    fh.timeout = 30
    with pytest.raises(FaceHarmonyError) as err:
        fh.photos.upload_photo(b"jpeg", timeout=0.2)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_retry_list_names_real_rpcs_only():
    from faceharmony.v1 import (
        admin_pb2,
        photo_pb2,
        purchase_pb2,
        support_pb2,
    )

    files = [account_pb2, admin_pb2, model_pb2, order_pb2, photo_pb2, purchase_pb2, support_pb2]
    rpcs = {
        f"faceharmony.v1.{service.name}": {m.name for m in service.methods}
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    rpcs["grpc.health.v1.Health"] = {"Check", "Watch"}
    for service, methods in RETRYABLE_METHODS.items():
        assert set(methods) <= rpcs[service], service
    # Nothing that sends mail, consumes a code or deletes is retried.
    never = {
        "RequestSignInCode",
        "SignIn",
        "AcceptInvitation",
        "DeleteAccount",
        "DeletePhoto",
        "DeleteModel",
    }
    assert not never & {m for methods in RETRYABLE_METHODS.values() for m in methods}
    assert account_pb2.DESCRIPTOR.services_by_name["AccountService"]
