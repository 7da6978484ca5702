"""The Python SDK of the FaceHarmony API: a typed client over the generated gRPC stubs, for apps, scripts and other Python backends.

    from faceharmony.clients.sdk import Client, FaceHarmonyError

    with Client("127.0.0.1:50051") as fh:
        fh.accounts.request_sign_in_code("ada@example.com")
        fh.accounts.sign_in("ada@example.com", "123456")    # keeps the session token
        verdicts = fh.photos.upload_files(paths)             # one Verdict per file: a Photo or a reason
        model = fh.models.create_model("Me", [v.photo.id for v in verdicts if v.ok])
        for event in fh.models.watch_model(model.id): ...

What it owns:

* **One channel, one exception type.** Every failed call raises `FaceHarmonyError`, carrying the gRPC
  status code and the server's stable `google.rpc.ErrorInfo` reason (`NO_FACE`, `SESSION_EXPIRED`, ...;
  "" when the failure came from the transport, such as an unreachable server or a deadline).
* **Deadlines on every call.** Unary calls get `timeout` (default 30 s), uploads and downloads
  `transfer_timeout`, watch streams `watch_timeout`; each method also takes its own `timeout=`.
* **Retries by gRPC's own retry policy** (the channel's service config, `RETRY_POLICY`), never a loop here:
  only calls that are idempotent (reads, watches, downloads, `UpdateName`, `RecordPurchase` by its
  transaction id) and creates that carry a `request_id` (uploads, models, retrains, orders, tickets), on
  `UNAVAILABLE`, with backoff and retry throttling. gRPC retries a stream (a watch, a download) only until
  its first message has arrived; a watch that fails later is the caller's to reopen (each starts from the
  current state, so reopening is safe). The retry buffer holds a whole upload, so a photo of any size the
  channel may send is retried, not only the small ones (gRPC's default buffer is 256 KiB). The SDK gives every such create a fresh `request_id`
  unless the caller passes one, so a retry can never make a second photo, model, order or ticket. Calls
  that send mail, consume a code or change state once (`RequestSignInCode`, `SignIn`, `DeleteAccount`, ...)
  are never retried.
* **The session.** `Client.token` is sent as `authorization: Bearer <token>`; `sign_in` and
  `accept_invitation` set it, `sign_out` clears it. Keeping it between runs is the caller's business (the
  CLI keeps it in a file only its owner can read).

Results are the generated protobuf messages (typed by their `.pyi` stubs); list methods follow
`next_page_token` and return every item, bounded by `limit`.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from faceharmony.v1 import (
    account_pb2,
    account_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    photo_pb2,
    photo_pb2_grpc,
    purchase_pb2,
    purchase_pb2_grpc,
    support_pb2,
    support_pb2_grpc,
)

__all__ = ["RETRY_POLICY", "Client", "FaceHarmonyError", "Verdict", "service_config"]

DEFAULT_TARGET = "127.0.0.1:50051"
# The server refuses larger requests (FACEHARMONY_UPLOAD_MAX_BYTES defaults well below this); the client
# accepts what the server may send back (download chunks, previews). upload_files does not read a file larger
# than this: it could only be refused.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

# gRPC's retry policy (https://github.com/grpc/proposal/blob/master/A6-client-retries.md), applied by the
# channel itself. Only UNAVAILABLE is retried: the call never reached the service, or the server is going
# away. RESOURCE_EXHAUSTED is not: it is also the answer to rate limits and quotas, which a retry cannot help.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.2s",
    "maxBackoff": "3s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

# The RPCs a retry cannot repeat with another outcome: reads, watches, downloads, and the writes that are
# idempotent by the contract (by request_id, which the SDK always sets, or by the store's transaction id).
RETRYABLE_METHODS: dict[str, tuple[str, ...]] = {
    "faceharmony.v1.AccountService": ("GetAccount", "UpdateName"),
    "faceharmony.v1.PhotoService": ("UploadPhoto", "ListPhotos"),
    "faceharmony.v1.ModelService": ("CreateModel", "GetModel", "ListModels", "WatchModel", "RetrainModel"),
    "faceharmony.v1.OrderService": (
        "ListStyles",
        "CreateOrder",
        "GetOrder",
        "ListOrders",
        "WatchOrder",
        "ListGeneratedPhotos",
        "GetGeneratedPhotoPreview",
        "DownloadGeneratedPhoto",
    ),
    "faceharmony.v1.PurchaseService": ("RecordPurchase", "ListPurchases", "GetBalance", "ListProducts"),
    "faceharmony.v1.SupportService": ("CreateTicket", "ListTickets", "GetTicket"),
    "faceharmony.v1.AdminService": ("ListWaitlist", "ListPendingDeletionModels", "GetAuditLog"),
    "grpc.health.v1.Health": ("Check",),
}


def service_config() -> str:
    """The channel's service config (JSON): the retry policy for exactly the RETRYABLE_METHODS."""
    names = [
        {"service": service, "method": method} for service, methods in RETRYABLE_METHODS.items() for method in methods
    ]
    return json.dumps(
        {
            "methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}],
            # A server in trouble does not get a storm of retries: past this, calls fail instead.
            "retryThrottling": {"maxTokens": 20, "tokenRatio": 0.2},
        }
    )


class FaceHarmonyError(Exception):
    """A failed call: the gRPC status code, the stable reason (ErrorInfo), and the server's message."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None):
        super().__init__(f"{code.name}{' ' + reason if reason else ''}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> FaceHarmonyError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        message = (error.details() if isinstance(error, grpc.Call) else "") or ""
        reason, metadata = "", {}
        status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
        for detail in status.details if status else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
                break
        return cls(code, reason, message, metadata)

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (the server was away, busy or slow)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or self.reason in (
            "SERVER_BUSY",
            "TOO_MANY_CONCURRENT_CALLS",
            "VERIFY_QUEUE_FULL",
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one upload: the stored photo, or the reason it was refused."""

    name: str
    photo: photo_pb2.Photo | None = None
    error: FaceHarmonyError | None = None

    @property
    def ok(self) -> bool:
        return self.photo is not None

    @property
    def reason(self) -> str:
        return "" if self.error is None else (self.error.reason or self.error.code.name)


T = TypeVar("T")


def _new_request_id() -> str:
    return uuid.uuid4().hex


def _display_name(name: str) -> str:
    """A file name as valid UTF-8 (a name that is not becomes U+FFFD where its bytes are not)."""
    try:
        return os.fsencode(name).decode("utf-8", "replace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "replace").decode("utf-8")


def _transport_size_refusal(error: FaceHarmonyError) -> bool:
    """gRPC's own refusal of a message over the receiver's size limit (RESOURCE_EXHAUSTED with no ErrorInfo)."""
    return (
        error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and not error.reason
        and "message larger than max" in error.message.lower()
    )


class _Service:
    """Calls of one service: deadlines, the session metadata and the one exception type."""

    def __init__(self, client: Client, stub: Any) -> None:
        self._client = client
        self._stub = stub

    def _unary(self, method: str, request: Any, timeout: float | None = None, *, auth: bool = True) -> Any:
        c = self._client
        try:
            return getattr(self._stub, method)(
                request, timeout=c.timeout if timeout is None else timeout, metadata=c._metadata(auth)
            )
        except grpc.RpcError as exc:
            raise FaceHarmonyError.from_rpc_error(exc) from exc

    def _stream(self, method: str, request: Any, timeout: float) -> Iterator[Any]:
        c = self._client
        call = getattr(self._stub, method)(request, timeout=timeout, metadata=c._metadata(True))
        try:
            yield from call
        except grpc.RpcError as exc:
            raise FaceHarmonyError.from_rpc_error(exc) from exc
        finally:
            call.cancel()  # a consumer that stops early ends the stream on the server too

    def _pages(self, fetch: Callable[[str], Any], items: str, limit: int) -> list[Any]:
        out: list[Any] = []
        token = ""
        while len(out) < limit:
            page = fetch(token)
            out.extend(getattr(page, items))
            token = page.next_page_token
            if not token:
                break
        return out[:limit]


class Accounts(_Service):
    """AccountService: waiting list, sign-in, the account itself, invitations, deletion."""

    def join_waitlist(self, name: str, email: str, *, is_16_or_older: bool, note: str = "") -> None:
        self._unary(
            "JoinWaitlist",
            account_pb2.JoinWaitlistRequest(name=name, email=email, is_16_or_older=is_16_or_older, note=note),
            auth=False,
        )

    def request_sign_in_code(self, email: str) -> None:
        """Asks for a code by email; the same answer whether or not the address may sign in."""
        self._unary("RequestSignInCode", account_pb2.RequestSignInCodeRequest(email=email), auth=False)

    def sign_in(self, email: str, code: str) -> account_pb2.Account:
        reply = self._unary("SignIn", account_pb2.SignInRequest(email=email, code=code), auth=False)
        self._client.token = reply.session_token
        return reply.account

    def accept_invitation(self, invitation_token: str, *, is_16_or_older: bool) -> account_pb2.Account:
        reply = self._unary(
            "AcceptInvitation",
            account_pb2.AcceptInvitationRequest(invitation_token=invitation_token, is_16_or_older=is_16_or_older),
            auth=False,
        )
        self._client.token = reply.session_token
        return reply.account

    def sign_out(self) -> None:
        self._unary("SignOut", account_pb2.SignOutRequest())
        self._client.token = None

    def get_account(self) -> account_pb2.Account:
        return self._unary("GetAccount", account_pb2.GetAccountRequest()).account

    def update_name(self, name: str) -> account_pb2.Account:
        return self._unary("UpdateName", account_pb2.UpdateNameRequest(name=name)).account

    def invite_friend(self, email: str, name: str) -> None:
        self._unary("InviteFriend", account_pb2.InviteFriendRequest(email=email, name=name))

    def delete_account(self, confirm_email: str) -> account_pb2.Account:
        """Deactivates the account at once; it is purged after the grace period unless reactivated."""
        return self._unary("DeleteAccount", account_pb2.DeleteAccountRequest(confirm_email=confirm_email)).account

    def reactivate_account(self) -> account_pb2.Account:
        return self._unary("ReactivateAccount", account_pb2.ReactivateAccountRequest()).account


def _read_upload(path: Path, limit: int) -> bytes:
    """The file's bytes, or a FaceHarmonyError verdict when it is not a regular file, unreadable or too large."""

    def refused(reason: str, message: str) -> FaceHarmonyError:
        return FaceHarmonyError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)

    try:
        # Checked before opening too: opening a FIFO would wait for a writer.
        if not stat.S_ISREG(path.stat().st_mode):
            raise refused("UNREADABLE_FILE", "not a regular file")
        with path.open("rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise refused("UNREADABLE_FILE", "not a regular file")
            if info.st_size > limit:
                raise refused("IMAGE_TOO_LARGE", f"{info.st_size} bytes, over the {limit}-byte limit: not sent")
            content = fh.read(limit + 1)
    except OSError as exc:
        raise refused("UNREADABLE_FILE", exc.strerror or "cannot be read") from exc
    if len(content) > limit:  # grew while being read
        raise refused("IMAGE_TOO_LARGE", f"over the {limit}-byte limit: not sent")
    return content


class Photos(_Service):
    """PhotoService: verified uploads of cropped face photos."""

    def upload_photo(
        self,
        content: bytes,
        *,
        filename: str = "",
        content_type: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> photo_pb2.Photo:
        """Uploads one photo; raises FaceHarmonyError with the verdict's reason (NO_FACE, NSFW, ...) if refused."""
        request = photo_pb2.UploadPhotoRequest(
            content=content,
            filename=_display_name(filename)[:255],
            content_type=content_type,
            request_id=request_id or _new_request_id(),
        )
        return self._unary("UploadPhoto", request, self._client.transfer_timeout if timeout is None else timeout).photo

    def upload_files(
        self,
        paths: Iterable[str | Path],
        *,
        on_verdict: Callable[[Verdict], None] | None = None,
        max_bytes: int | None = None,
    ) -> list[Verdict]:
        """Uploads each file in turn: one Verdict per file, refused ones with their reason.

        Only a refusal of the photo itself becomes a verdict: INVALID_ARGUMENT (the verifier's reasons: NO_FACE,
        NSFW, UNDECODABLE_IMAGE, IMAGE_TOO_LARGE, ...) or gRPC's own RESOURCE_EXHAUSTED for a message over the
        server's size limit. Any other failure (signed out, server away, busy, rate limit, too many photos) is
        raised, and the files after it are not sent. Files are checked before they are read: one that is not a
        regular readable file is a verdict UNREADABLE_FILE, one over `max_bytes` (default: the most the channel
        may send) a verdict IMAGE_TOO_LARGE, and neither is sent. Verdict names are valid UTF-8."""
        limit = MAX_MESSAGE_BYTES if max_bytes is None else max_bytes
        verdicts = []
        for item in paths:
            path = Path(item)
            name = _display_name(path.name)
            try:
                content = _read_upload(path, limit)
            except FaceHarmonyError as exc:
                verdict = Verdict(name, error=exc)
            else:
                try:
                    verdict = Verdict(name, photo=self.upload_photo(content, filename=name))
                except FaceHarmonyError as exc:
                    if exc.code != grpc.StatusCode.INVALID_ARGUMENT and not _transport_size_refusal(exc):
                        raise
                    verdict = Verdict(name, error=exc)
            verdicts.append(verdict)
            if on_verdict is not None:
                on_verdict(verdict)
        return verdicts

    def list_photos(self, *, limit: int = 1000) -> list[photo_pb2.Photo]:
        def fetch(token: str) -> Any:
            return self._unary("ListPhotos", photo_pb2.ListPhotosRequest(page_size=100, page_token=token))

        return self._pages(fetch, "photos", limit)

    def delete_photo(self, photo_id: str) -> None:
        self._unary("DeletePhoto", photo_pb2.DeletePhotoRequest(id=photo_id))


class Models(_Service):
    """ModelService: personal models, their training and their deletion."""

    def create_model(
        self, display_name: str, photo_ids: Sequence[str], *, request_id: str | None = None
    ) -> model_pb2.Model:
        request = model_pb2.CreateModelRequest(
            display_name=display_name, photo_ids=list(photo_ids), request_id=request_id or _new_request_id()
        )
        return self._unary("CreateModel", request).model

    def get_model(self, model_id: str) -> model_pb2.Model:
        return self._unary("GetModel", model_pb2.GetModelRequest(id=model_id)).model

    def list_models(self, *, limit: int = 1000) -> list[model_pb2.Model]:
        def fetch(token: str) -> Any:
            return self._unary("ListModels", model_pb2.ListModelsRequest(page_size=100, page_token=token))

        return self._pages(fetch, "models", limit)

    def watch_model(self, model_id: str, *, timeout: float | None = None) -> Iterator[model_pb2.WatchModelResponse]:
        """The model's state and progress as they change; ends when it is READY or FAILED."""
        return self._stream(
            "WatchModel",
            model_pb2.WatchModelRequest(id=model_id),
            self._client.watch_timeout if timeout is None else timeout,
        )

    def retrain_model(self, model_id: str, *, request_id: str | None = None) -> model_pb2.Model:
        """Trains the model again from its own photos; refused (MODEL_BUSY) while it is training, except for a
        retry of the same request_id, which returns the model."""
        request = model_pb2.RetrainModelRequest(id=model_id, request_id=request_id or _new_request_id())
        return self._unary("RetrainModel", request).model

    def delete_model(self, model_id: str) -> model_pb2.Model:
        """Hides the model at once; purged after the grace period unless support restores it."""
        return self._unary("DeleteModel", model_pb2.DeleteModelRequest(id=model_id)).model


class Orders(_Service):
    """OrderService: styles, orders of generated portraits, and the generated photos."""

    def list_styles(self) -> list[order_pb2.Style]:
        return list(self._unary("ListStyles", order_pb2.ListStylesRequest()).styles)

    def create_order(
        self, model_ids: Sequence[str], style_id: str, count: int = 1, *, request_id: str | None = None
    ) -> order_pb2.Order:
        request = order_pb2.CreateOrderRequest(
            model_ids=list(model_ids), style_id=style_id, count=count, request_id=request_id or _new_request_id()
        )
        return self._unary("CreateOrder", request).order

    def get_order(self, order_id: str) -> order_pb2.Order:
        return self._unary("GetOrder", order_pb2.GetOrderRequest(id=order_id)).order

    def list_orders(self, *, limit: int = 1000) -> list[order_pb2.Order]:
        def fetch(token: str) -> Any:
            return self._unary("ListOrders", order_pb2.ListOrdersRequest(page_size=100, page_token=token))

        return self._pages(fetch, "orders", limit)

    def watch_order(self, order_id: str, *, timeout: float | None = None) -> Iterator[order_pb2.WatchOrderResponse]:
        """The order as its images are made; ends when it is COMPLETED, FAILED or CANCELLED."""
        return self._stream(
            "WatchOrder",
            order_pb2.WatchOrderRequest(id=order_id),
            self._client.watch_timeout if timeout is None else timeout,
        )

    def list_generated_photos(
        self,
        *,
        order_id: str = "",
        state: order_pb2.GeneratedPhotoState = order_pb2.GENERATED_PHOTO_STATE_UNSPECIFIED,
        limit: int = 1000,
    ) -> list[order_pb2.GeneratedPhoto]:
        def fetch(token: str) -> Any:
            request = order_pb2.ListGeneratedPhotosRequest(
                order_id=order_id, state=state, page_size=100, page_token=token
            )
            return self._unary("ListGeneratedPhotos", request)

        return self._pages(fetch, "generated_photos", limit)

    def get_preview(self, photo_id: str) -> order_pb2.GetGeneratedPhotoPreviewResponse:
        """The generated photo's small JPEG preview (does not mark it downloaded)."""
        return self._unary("GetGeneratedPhotoPreview", order_pb2.GetGeneratedPhotoPreviewRequest(id=photo_id))

    def download(self, photo_id: str, *, timeout: float | None = None) -> bytes:
        """The full image (PNG), which marks the photo downloaded."""
        chunks = self._stream(
            "DownloadGeneratedPhoto",
            order_pb2.DownloadGeneratedPhotoRequest(id=photo_id),
            self._client.transfer_timeout if timeout is None else timeout,
        )
        return b"".join(chunk.data for chunk in chunks)

    def reject(self, photo_id: str) -> order_pb2.GeneratedPhoto:
        """Rejects the photo; it is purged after the retention period."""
        return self._unary("RejectGeneratedPhoto", order_pb2.RejectGeneratedPhotoRequest(id=photo_id)).generated_photo

    def delete(self, photo_id: str) -> None:
        self._unary("DeleteGeneratedPhoto", order_pb2.DeleteGeneratedPhotoRequest(id=photo_id))


class Purchases(_Service):
    """PurchaseService: store purchases, credits and products."""

    def record_purchase(self, store: purchase_pb2.Store, product_id: str, receipt: str) -> purchase_pb2.Purchase:
        """Records a store purchase once the store vouched for it; idempotent on the store's transaction.
        `receipt`: the App Store's signed transaction (StoreKit 2 jwsRepresentation) or Google Play's purchase
        token; `product_id` may be empty for the App Store (the signed transaction names it)."""
        request = purchase_pb2.RecordPurchaseRequest(store=store, product_id=product_id)
        if store == purchase_pb2.STORE_GOOGLE_PLAY:
            request.purchase_token = receipt
        else:
            request.signed_transaction = receipt
        return self._unary("RecordPurchase", request).purchase

    def list_purchases(self, *, limit: int = 1000) -> list[purchase_pb2.Purchase]:
        def fetch(token: str) -> Any:
            return self._unary("ListPurchases", purchase_pb2.ListPurchasesRequest(page_size=100, page_token=token))

        return self._pages(fetch, "purchases", limit)

    def get_balance(self) -> purchase_pb2.GetBalanceResponse:
        return self._unary("GetBalance", purchase_pb2.GetBalanceRequest())

    def list_products(self) -> list[purchase_pb2.Product]:
        return list(self._unary("ListProducts", purchase_pb2.ListProductsRequest()).products)


class Support(_Service):
    """SupportService: the caller's support tickets."""

    def create_ticket(self, subject: str, body: str, *, request_id: str | None = None) -> support_pb2.Ticket:
        request = support_pb2.CreateTicketRequest(
            subject=subject, body=body, request_id=request_id or _new_request_id()
        )
        return self._unary("CreateTicket", request).ticket

    def list_tickets(self, *, limit: int = 1000) -> list[support_pb2.Ticket]:
        def fetch(token: str) -> Any:
            return self._unary("ListTickets", support_pb2.ListTicketsRequest(page_size=100, page_token=token))

        return self._pages(fetch, "tickets", limit)

    def get_ticket(self, ticket_id: str) -> support_pb2.Ticket:
        return self._unary("GetTicket", support_pb2.GetTicketRequest(id=ticket_id)).ticket

    def add_message(self, ticket_id: str, body: str) -> support_pb2.Ticket:
        return self._unary("AddTicketMessage", support_pb2.AddTicketMessageRequest(id=ticket_id, body=body)).ticket


class Admin(_Service):
    """AdminService, for staff sessions: the waiting list and its approval."""

    def list_waitlist(
        self, *, state: admin_pb2.WaitlistEntryState = admin_pb2.WAITLIST_ENTRY_STATE_UNSPECIFIED, limit: int = 1000
    ) -> list[admin_pb2.WaitlistEntry]:
        def fetch(token: str) -> Any:
            request = admin_pb2.ListWaitlistRequest(page_size=100, page_token=token, state=state)
            return self._unary("ListWaitlist", request)

        return self._pages(fetch, "entries", limit)

    def approve_waitlist_entry(self, entry_id: str) -> None:
        """Approves the entry, which emails its person an invitation."""
        self._unary("ApproveWaitlistEntry", admin_pb2.ApproveWaitlistEntryRequest(id=entry_id))


@dataclass
class Client:
    """A connection to the API server. Use it as a context manager, or call close().

    target: host:port (default 127.0.0.1:50051). tls: use TLS with the system's roots (or
    `credentials`). token: a session token from an earlier sign-in. timeout: the deadline of unary calls;
    transfer_timeout: uploads and downloads; watch_timeout: watch streams (seconds)."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    timeout: float = 30.0
    transfer_timeout: float = 120.0
    watch_timeout: float = 3600.0
    tls: bool = False
    credentials: grpc.ChannelCredentials | None = None
    channel: grpc.Channel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        options = [
            ("grpc.service_config", service_config()),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Room to resend a whole request: past the buffer (256 KiB by default) gRPC stops retrying a call.
            ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES + 64 * 1024),
            ("grpc.primary_user_agent", "faceharmony-python-sdk/0.1"),
        ]
        if self.tls or self.credentials is not None:
            creds = self.credentials or grpc.ssl_channel_credentials()
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.accounts = Accounts(self, account_pb2_grpc.AccountServiceStub(self.channel))
        self.photos = Photos(self, photo_pb2_grpc.PhotoServiceStub(self.channel))
        self.models = Models(self, model_pb2_grpc.ModelServiceStub(self.channel))
        self.orders = Orders(self, order_pb2_grpc.OrderServiceStub(self.channel))
        self.purchases = Purchases(self, purchase_pb2_grpc.PurchaseServiceStub(self.channel))
        self.support = Support(self, support_pb2_grpc.SupportServiceStub(self.channel))
        self.admin = Admin(self, admin_pb2_grpc.AdminServiceStub(self.channel))
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _metadata(self, auth: bool) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if auth and self.token else ()

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's health (grpc.health.v1): "SERVING", "NOT_SERVING", ..."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout if timeout is None else timeout
            )
        except grpc.RpcError as exc:
            raise FaceHarmonyError.from_rpc_error(exc) from exc
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
