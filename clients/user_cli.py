"""`faceharmony`: the app's features from a terminal, over the public gRPC API (accounts, purchases, support, photos, models, orders).

The server address comes from --server or FACEHARMONY_CLIENT_SERVER (default
127.0.0.1:50051); the session token is kept in FACEHARMONY_CLIENT_SESSION_FILE
(default ~/.config/faceharmony/session, readable by its owner only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from faceharmony.clients.errors import reason_of
from faceharmony.v1 import (
    account_pb2,
    account_pb2_grpc,
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


def _session_file() -> Path:
    default = Path.home() / ".config" / "faceharmony" / "session"
    return Path(os.environ.get("FACEHARMONY_CLIENT_SESSION_FILE", default))


def _save_token(token: str) -> None:
    path = _session_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)


def _metadata() -> tuple[tuple[str, str], ...]:
    path = _session_file()
    if not path.exists():
        return ()
    return (("authorization", f"Bearer {path.read_text().strip()}"),)


def _show(message) -> None:
    print(
        json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2) if message.ListFields() else "ok"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceharmony", description="FaceHarmony account client")
    p.add_argument("--server", default=os.environ.get("FACEHARMONY_CLIENT_SERVER", "127.0.0.1:50051"))
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("join-waitlist", help="join the waiting list")
    c.add_argument("--name", required=True)
    c.add_argument("--email", required=True)
    c.add_argument("--16-or-older", dest="adult", action="store_true", help="I am 16 or older")
    c.add_argument("--note", default="")
    sub.add_parser("request-code", help="email me a sign-in code").add_argument("email")
    c = sub.add_parser("sign-in", help="sign in with the emailed code")
    c.add_argument("email")
    c.add_argument("code")
    c = sub.add_parser("accept-invitation", help="accept an emailed invitation")
    c.add_argument("token")
    c.add_argument("--16-or-older", dest="adult", action="store_true")
    sub.add_parser("sign-out")
    sub.add_parser("account", help="show my account")
    sub.add_parser("update-name").add_argument("name")
    c = sub.add_parser("invite", help="invite a friend")
    c.add_argument("email")
    c.add_argument("name")
    sub.add_parser("delete-account").add_argument("--confirm-email", required=True)
    sub.add_parser("reactivate", help="undo the deletion of my account")
    sub.add_parser("balance")
    sub.add_parser("products")
    c = sub.add_parser("record-purchase")
    c.add_argument("--store", choices=["app_store", "google_play"], required=True)
    c.add_argument("--product", required=True)
    c.add_argument("--transaction", required=True)
    sub.add_parser("purchases")
    c = sub.add_parser("ticket", help="open a support ticket")
    c.add_argument("subject")
    c.add_argument("body")
    sub.add_parser("tickets")
    sub.add_parser("show-ticket").add_argument("id")
    # Photos, models, orders.
    c = sub.add_parser("upload-photo", help="upload a cropped face photo (JPEG/PNG/WebP)")
    c.add_argument("path", type=Path)
    sub.add_parser("photos")
    sub.add_parser("delete-photo").add_argument("id")
    c = sub.add_parser("create-model", help="train a personal model from 4-20 of my photos")
    c.add_argument("--name", required=True)
    c.add_argument("photo_ids", nargs="+")
    sub.add_parser("models")
    sub.add_parser("watch-model").add_argument("id")
    sub.add_parser("delete-model").add_argument("id")
    sub.add_parser("styles")
    c = sub.add_parser("order", help="order generated portraits from my ready models")
    c.add_argument("--style", required=True)
    c.add_argument("--count", type=int, default=1, help="images per model")
    c.add_argument("--request-id", default="")
    c.add_argument("model_ids", nargs="+")
    sub.add_parser("orders")
    sub.add_parser("watch-order").add_argument("id")
    c = sub.add_parser("generated", help="list my generated photos")
    c.add_argument("--order", default="")
    c = sub.add_parser("download", help="download a generated photo (marks it downloaded)")
    c.add_argument("id")
    c.add_argument("out", type=Path)
    c = sub.add_parser("preview", help="save a generated photo's small JPEG preview")
    c.add_argument("id")
    c.add_argument("out", type=Path)
    sub.add_parser("reject", help="reject a generated photo (purged after the retention period)").add_argument("id")
    sub.add_parser("delete-generated").add_argument("id")
    return p


def run_media(args: argparse.Namespace, channel: grpc.Channel, md) -> bool:
    """Photos, models and orders; False when the command is not one of them."""
    photos = photo_pb2_grpc.PhotoServiceStub(channel)
    models = model_pb2_grpc.ModelServiceStub(channel)
    orders = order_pb2_grpc.OrderServiceStub(channel)
    cmd = args.command
    if cmd == "upload-photo":
        _show(
            photos.UploadPhoto(
                photo_pb2.UploadPhotoRequest(content=args.path.read_bytes(), filename=args.path.name[:255]), metadata=md
            ).photo
        )
    elif cmd == "photos":
        _show(photos.ListPhotos(photo_pb2.ListPhotosRequest(page_size=100), metadata=md))
    elif cmd == "delete-photo":
        _show(photos.DeletePhoto(photo_pb2.DeletePhotoRequest(id=args.id), metadata=md))
    elif cmd == "create-model":
        _show(
            models.CreateModel(
                model_pb2.CreateModelRequest(display_name=args.name, photo_ids=args.photo_ids), metadata=md
            ).model
        )
    elif cmd == "models":
        _show(models.ListModels(model_pb2.ListModelsRequest(page_size=100), metadata=md))
    elif cmd == "watch-model":
        for event in models.WatchModel(model_pb2.WatchModelRequest(id=args.id), metadata=md):
            print(f"{model_pb2.ModelState.Name(event.state)} {event.progress:.0%} {event.message}", flush=True)
    elif cmd == "delete-model":
        _show(models.DeleteModel(model_pb2.DeleteModelRequest(id=args.id), metadata=md).model)
    elif cmd == "styles":
        _show(orders.ListStyles(order_pb2.ListStylesRequest(), metadata=md))
    elif cmd == "order":
        request = order_pb2.CreateOrderRequest(
            model_ids=args.model_ids, style_id=args.style, count=args.count, request_id=args.request_id
        )
        _show(orders.CreateOrder(request, metadata=md).order)
    elif cmd == "orders":
        _show(orders.ListOrders(order_pb2.ListOrdersRequest(page_size=100), metadata=md))
    elif cmd == "watch-order":
        for event in orders.WatchOrder(order_pb2.WatchOrderRequest(id=args.id), metadata=md):
            o = event.order
            print(
                f"{order_pb2.OrderState.Name(o.state)} {o.images_done}/{o.images_total} made, {o.images_failed} failed",
                flush=True,
            )
    elif cmd == "generated":
        _show(
            orders.ListGeneratedPhotos(
                order_pb2.ListGeneratedPhotosRequest(order_id=args.order, page_size=100), metadata=md
            )
        )
    elif cmd == "download":
        with args.out.open("wb") as fh:
            for chunk in orders.DownloadGeneratedPhoto(
                order_pb2.DownloadGeneratedPhotoRequest(id=args.id), metadata=md
            ):
                fh.write(chunk.data)
        print(f"saved {args.out}")
    elif cmd == "preview":
        reply = orders.GetGeneratedPhotoPreview(order_pb2.GetGeneratedPhotoPreviewRequest(id=args.id), metadata=md)
        args.out.write_bytes(reply.jpeg)
        print(f"saved {args.out} ({reply.width}x{reply.height})")
    elif cmd == "reject":
        _show(
            orders.RejectGeneratedPhoto(order_pb2.RejectGeneratedPhotoRequest(id=args.id), metadata=md).generated_photo
        )
    elif cmd == "delete-generated":
        _show(orders.DeleteGeneratedPhoto(order_pb2.DeleteGeneratedPhotoRequest(id=args.id), metadata=md))
    else:
        return False
    return True


def run(args: argparse.Namespace, channel: grpc.Channel) -> None:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    purchases = purchase_pb2_grpc.PurchaseServiceStub(channel)
    support = support_pb2_grpc.SupportServiceStub(channel)
    md = _metadata()
    cmd = args.command
    if run_media(args, channel, md):
        return
    if cmd == "join-waitlist":
        _show(
            accounts.JoinWaitlist(
                account_pb2.JoinWaitlistRequest(
                    name=args.name, email=args.email, is_16_or_older=args.adult, note=args.note
                )
            )
        )
    elif cmd == "request-code":
        accounts.RequestSignInCode(account_pb2.RequestSignInCodeRequest(email=args.email))
        print("If this email may sign in, a code is on its way.")
    elif cmd in ("sign-in", "accept-invitation"):
        if cmd == "sign-in":
            reply = accounts.SignIn(account_pb2.SignInRequest(email=args.email, code=args.code))
        else:
            reply = accounts.AcceptInvitation(
                account_pb2.AcceptInvitationRequest(invitation_token=args.token, is_16_or_older=args.adult)
            )
        _save_token(reply.session_token)
        _show(reply.account)
    elif cmd == "sign-out":
        accounts.SignOut(account_pb2.SignOutRequest(), metadata=md)
        _session_file().unlink(missing_ok=True)
        print("signed out")
    elif cmd == "account":
        _show(accounts.GetAccount(account_pb2.GetAccountRequest(), metadata=md).account)
    elif cmd == "update-name":
        _show(accounts.UpdateName(account_pb2.UpdateNameRequest(name=args.name), metadata=md).account)
    elif cmd == "invite":
        accounts.InviteFriend(account_pb2.InviteFriendRequest(email=args.email, name=args.name), metadata=md)
        print("invitation sent")
    elif cmd == "delete-account":
        _show(
            accounts.DeleteAccount(
                account_pb2.DeleteAccountRequest(confirm_email=args.confirm_email), metadata=md
            ).account
        )
    elif cmd == "reactivate":
        _show(accounts.ReactivateAccount(account_pb2.ReactivateAccountRequest(), metadata=md).account)
    elif cmd == "balance":
        _show(purchases.GetBalance(purchase_pb2.GetBalanceRequest(), metadata=md))
    elif cmd == "products":
        _show(purchases.ListProducts(purchase_pb2.ListProductsRequest(), metadata=md))
    elif cmd == "record-purchase":
        store = {"app_store": purchase_pb2.STORE_APP_STORE, "google_play": purchase_pb2.STORE_GOOGLE_PLAY}[args.store]
        _show(
            purchases.RecordPurchase(
                purchase_pb2.RecordPurchaseRequest(
                    store=store, product_id=args.product, transaction_id=args.transaction
                ),
                metadata=md,
            )
        )
    elif cmd == "purchases":
        _show(purchases.ListPurchases(purchase_pb2.ListPurchasesRequest(), metadata=md))
    elif cmd == "ticket":
        _show(
            support.CreateTicket(
                support_pb2.CreateTicketRequest(subject=args.subject, body=args.body), metadata=md
            ).ticket
        )
    elif cmd == "tickets":
        _show(support.ListTickets(support_pb2.ListTicketsRequest(), metadata=md))
    elif cmd == "show-ticket":
        _show(support.GetTicket(support_pb2.GetTicketRequest(id=args.id), metadata=md).ticket)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with grpc.insecure_channel(args.server) as channel:
        try:
            run(args, channel)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name} {reason_of(exc)}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
