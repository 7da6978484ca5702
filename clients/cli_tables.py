"""The tables `faceharmony` shows people: one function per kind of API message (accounts, photos, models, orders,
generated photos, styles, purchases, tickets, upload verdicts), with enum values in words, times in UTC and file
names that are not UTF-8 shown with U+FFFD."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.message import Message
from rich import box
from rich.table import Table
from rich.text import Text

from faceharmony.clients.cli_output import shown
from faceharmony.clients.sdk import Verdict
from faceharmony.v1 import (
    account_pb2,
    model_pb2,
    order_pb2,
    photo_pb2,
    purchase_pb2,
    support_pb2,
)

STATE_STYLES = {
    "ready": "green",
    "completed": "green",
    "active": "green",
    "available": "green",
    "downloaded": "green",
    "answered": "green",
    "failed": "red",
    "rejected": "red",
    "cancelled": "red",
    "deactivated": "red",
    "pending deletion": "red",
    "training": "yellow",
    "running": "yellow",
    "queued": "yellow",
}


def word(enum: Any, value: int) -> str:
    """An enum value in words: ModelState MODEL_STATE_PENDING_DELETION -> "pending deletion"."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    return enum.Name(value).removeprefix(prefix).replace("_", " ").lower()


def state_text(enum: Any, value: int) -> Text:
    said = word(enum, value)
    return Text(said, style=STATE_STYLES.get(said, ""))


def when(message: Message, name: str) -> str:
    """A Timestamp field as "2026-01-15 12:00 UTC", or "" when it is not set."""
    if not message.HasField(name):
        return ""
    return getattr(message, name).ToDatetime().strftime("%Y-%m-%d %H:%M UTC")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str | Text]], *, empty: str) -> Table | str:
    """A table, or the `empty` sentence when there are no rows. The id column never wraps (ids are copied)."""
    rows = list(rows)
    if not rows:
        return empty
    out = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")
    for i, name in enumerate(columns):
        out.add_column(name, no_wrap=i == 0 or name.endswith("id"), overflow="fold")
    for row in rows:
        out.add_row(*row)
    return out


def details(title: str, pairs: Iterable[tuple[str, str | Text]]) -> Table:
    """One thing as a two-column table of field and value."""
    out = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left", title_style="bold")
    out.add_column(style="dim", no_wrap=True)
    out.add_column(overflow="fold")
    for name, value in pairs:
        if value:
            out.add_row(name, value)
    return out


def account(a: account_pb2.Account) -> Table:
    return details(
        "Account",
        [
            ("id", a.id),
            ("email", a.email),
            ("name", a.name),
            ("role", word(account_pb2.Role, a.role)),
            ("state", state_text(account_pb2.AccountState, a.state)),
            ("created", when(a, "create_time")),
            ("deleted", when(a, "delete_time")),
            ("purged after", when(a, "purge_after")),
        ],
    )


def photos(items: Sequence[photo_pb2.Photo]) -> Table | str:
    rows = [
        (p.id, when(p, "create_time"), f"{p.width}x{p.height}", p.model_id or "", when(p, "expire_time")) for p in items
    ]
    return table(
        "Photos",
        ("id", "uploaded", "size", "model id", "expires"),
        rows,
        empty="No photos yet: `faceharmony upload PATH...`",
    )


def verdicts(names: Sequence[str], items: Sequence[Verdict]) -> Table | str:
    rows = []
    for name, v in zip(names, items, strict=True):
        if v.photo is not None:
            rows.append((shown(name), Text("accepted", style="green"), "", v.photo.id))
        else:
            error = v.error
            said = f"{error.message} ({v.reason})" if error is not None and error.message else v.reason
            rows.append((shown(name), Text("refused", style="red"), said, ""))
    return table("Uploads", ("file", "verdict", "reason", "photo id"), rows, empty="Nothing was sent.")


def models(items: Sequence[model_pb2.Model]) -> Table | str:
    rows = [
        (
            m.id,
            m.display_name,
            state_text(model_pb2.ModelState, m.state),
            f"{m.progress:.0%}",
            str(m.version or ""),
            str(len(m.photo_ids)),
            m.failure_reason,
        )
        for m in items
    ]
    return table(
        "Models",
        ("id", "name", "state", "progress", "version", "photos", "failure"),
        rows,
        empty="No models yet: `faceharmony create-model NAME --all-photos`",
    )


def model(m: model_pb2.Model) -> Table:
    return details(
        f"Model {m.display_name}",
        [
            ("id", m.id),
            ("state", state_text(model_pb2.ModelState, m.state)),
            ("progress", f"{m.progress:.0%}"),
            ("version", str(m.version or "")),
            ("photos", str(len(m.photo_ids))),
            ("failure", m.failure_reason),
            ("updated", when(m, "update_time")),
            ("purged after", when(m, "purge_after")),
        ],
    )


def styles(items: Sequence[order_pb2.Style]) -> Table | str:
    rows = [(s.id, s.display_name, s.description) for s in items]
    return table("Styles", ("id", "name", "description"), rows, empty="No styles.")


def orders(items: Sequence[order_pb2.Order]) -> Table | str:
    rows = [
        (
            o.id,
            o.style_id,
            state_text(order_pb2.OrderState, o.state),
            f"{o.images_done}/{o.images_total}",
            str(o.images_failed),
            str(o.credits_charged - o.credits_refunded),
            when(o, "create_time"),
        )
        for o in items
    ]
    return table(
        "Orders",
        ("id", "style", "state", "made", "failed", "credits", "placed"),
        rows,
        empty="No orders yet: `faceharmony order --style STYLE MODEL_ID`",
    )


def order(o: order_pb2.Order) -> Table:
    return details(
        "Order",
        [
            ("id", o.id),
            ("style", o.style_id),
            ("models", ", ".join(o.model_ids)),
            ("state", state_text(order_pb2.OrderState, o.state)),
            ("made", f"{o.images_done}/{o.images_total}"),
            ("failed", str(o.images_failed or "")),
            ("credits", f"{o.credits_charged} charged, {o.credits_refunded} refunded"),
            ("placed", when(o, "create_time")),
        ],
    )


def generated(items: Sequence[order_pb2.GeneratedPhoto]) -> Table | str:
    rows = [
        (
            g.id,
            g.order_id,
            g.model_id,
            state_text(order_pb2.GeneratedPhotoState, g.state),
            f"{g.width}x{g.height}",
            when(g, "create_time"),
        )
        for g in items
    ]
    return table(
        "Generated photos",
        ("id", "order id", "model id", "state", "size", "made"),
        rows,
        empty="No generated photos yet.",
    )


def balance(b: purchase_pb2.GetBalanceResponse) -> Table:
    trial = f"granted ({b.free_trial_credits} credits)" if b.free_trial_granted else "not granted"
    return details("Balance", [("credits", str(b.credits)), ("free trial", trial)])


def products(items: Sequence[purchase_pb2.Product]) -> Table | str:
    return table("Products", ("id", "credits"), [(p.id, str(p.credits)) for p in items], empty="No products.")


def purchases(items: Sequence[purchase_pb2.Purchase]) -> Table | str:
    rows = [
        (
            p.id,
            word(purchase_pb2.Store, p.store),
            p.product_id,
            p.transaction_id,
            str(p.credits),
            when(p, "create_time"),
        )
        for p in items
    ]
    return table(
        "Purchases", ("id", "store", "product", "transaction", "credits", "recorded"), rows, empty="No purchases."
    )


def tickets(items: Sequence[support_pb2.Ticket]) -> Table | str:
    rows = [
        (t.id, t.subject, state_text(support_pb2.TicketState, t.state), str(len(t.messages)), when(t, "update_time"))
        for t in items
    ]
    return table("Tickets", ("id", "subject", "state", "messages", "updated"), rows, empty="No tickets.")


def ticket(t: support_pb2.Ticket) -> Table:
    out = Table(
        title=f"{t.subject} ({word(support_pb2.TicketState, t.state)}, {t.id})",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        title_style="bold",
    )
    out.add_column("from", no_wrap=True)
    out.add_column("when", no_wrap=True)
    out.add_column("message", overflow="fold")
    for m in t.messages:
        out.add_row(word(support_pb2.TicketAuthor, m.author), when(m, "create_time"), m.body)
    return out
