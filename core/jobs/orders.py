"""Orders of generated portraits, shared by the API server (which creates them) and the order workers (which fill them).

An order is its own job row (`photo_order`, the `JobColumns` of core/db/models.py): QUEUED until a worker claims it,
RUNNING while a worker holds its lease, then COMPLETED (at least one image made) or FAILED (none). Its
images are slots (`order_image`) made with the order, each with its model version and seed fixed, so a
slot filled twice would give the same image; a slot is filled exactly once:

* `record_image` inserts the generated photo and marks the slot done in one transaction fenced by the
  worker's lease and the slot's state: a worker that lost the order, or a slot already done, records
  nothing (its blobs are orphans, removed by the orphan sweep). The same transaction checks the model may
  still be served: an image finished after its model was deleted or its account deactivated is not
  delivered; its slot fails and is refunded;
* `fail_image` marks a slot failed and refunds its credits in the same fenced transaction, so a refund
  is paid once per failed image, never for a made one;
* an order that fails for good (its attempts are used up) refunds every slot still pending.

Credits are debited in the transaction that creates the order (`create`), so an order either exists and
is paid for, or neither.

Lock order (`faceharmony.core.db.locks`): an account's row before its orders'. The worker's fenced writes
insert rows that reference the account (generated photos, refunds), which takes `FOR KEY SHARE` on it, so
they take that lock first (`lock_first`), before the order's row.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable
from typing import cast

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.clock import Clock
from faceharmony.core.db.connection import is_sqlite, write_transaction
from faceharmony.core.db.models import (
    Account,
    AccountState,
    CreditEntry,
    GeneratedPhoto,
    GeneratedPhotoState,
    ModelState,
    Order,
    OrderImage,
    OrderImageState,
    OrderState,
    UserModel,
)
from faceharmony.core.jobs.queue import Claim, JobQueue

FINAL_STATES = (OrderState.COMPLETED, OrderState.FAILED, OrderState.CANCELLED)
# A model in these states is never served (P13): pending deletion, or being purged by the retention daemon.
UNSERVABLE_MODEL_STATES = (ModelState.PENDING_DELETION, ModelState.PURGING)


def per_image_cost(order: Order) -> int:
    return order.credits_charged // order.images_total if order.images_total else 0


def create(
    account_id: str,
    models: list[tuple[str, int]],
    style_id: str,
    count: int,
    cost_per_image: int,
    request_id: str | None,
    now: dt.datetime,
    max_attempts: int,
    *,
    key_id: str,
) -> Order:
    """Inside the caller's write transaction: the order, its slots (count per (model id, version)) and the debit.
    `key_id`: the account's data key, which the order worker seals the images with."""
    total = len(models) * count
    order = Order.create(
        id=ids.new_id(),
        account=account_id,
        key_id=key_id,
        style_id=style_id,
        count=count,
        state=OrderState.QUEUED,
        images_total=total,
        credits_charged=total * cost_per_image,
        request_id=request_id,
        max_attempts=max_attempts,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    slots = []
    for m, (model_id, version) in enumerate(models):
        for k in range(count):
            slots.append(
                {
                    "id": ids.new_id(),
                    "order": order.id,
                    "position": m * count + k,
                    "model_id": model_id,
                    "model_version": version,
                    "seed": secrets.randbits(48),
                    "state": OrderImageState.PENDING,
                    "updated_at": now,
                }
            )
    OrderImage.insert_many(slots).execute()
    if order.credits_charged:
        CreditEntry.create(
            id=ids.new_id(),
            account=account_id,
            delta=-order.credits_charged,
            kind="order",
            ref_id=order.id,
            created_at=now,
        )
    return order


def unservable_reason(account_id: str, model_id: str) -> str | None:
    """None when the model may be served now; else why its images fail (P13: deleted; P17: account deactivated)."""
    if Account.select(Account.state).where(Account.id == account_id).scalar() != AccountState.ACTIVE:
        return "ACCOUNT_DEACTIVATED"
    state = UserModel.select(UserModel.state).where(UserModel.id == model_id).scalar()
    if state is None or state in UNSERVABLE_MODEL_STATES:
        return "MODEL_DELETED"
    return None


def _progress(done_delta: int = 0, failed_delta: int = 0):
    """The order's progress after adding these images, computed in the same UPDATE."""
    return (Order.images_done + Order.images_failed + (done_delta + failed_delta)) * 1.0 / Order.images_total


def _fail_pending(order: Order, slot_ids: list[str], error: str, now: dt.datetime) -> int:
    """Inside a transaction: fails those of the slots still pending and refunds each once; returns how many."""
    still = _ids(
        OrderImage.select(OrderImage.id).where(
            OrderImage.id.in_(slot_ids), OrderImage.order == order.id, OrderImage.state == OrderImageState.PENDING
        )
    )
    if not still:
        return 0
    OrderImage.update(state=OrderImageState.FAILED, error=error, updated_at=now).where(
        OrderImage.id.in_(still)
    ).execute()
    cost = per_image_cost(order)
    if cost:
        CreditEntry.insert_many(
            [
                {
                    "id": ids.new_id(),
                    "account": order.account_id,
                    "delta": cost,
                    "kind": "refund",
                    "ref_id": sid,
                    "created_at": now,
                }
                for sid in still
            ]
        ).execute()
    Order.update(
        images_failed=Order.images_failed + len(still),
        credits_refunded=Order.credits_refunded + cost * len(still),
        progress=_progress(failed_delta=len(still)),
        updated_at=now,
    ).where(Order.id == order.id).execute()
    return len(still)


def _ids(query) -> list[str]:
    return [row[0] for row in query.tuples()]


class OrderQueue(JobQueue):
    def __init__(self, db: pw.Database, clock: Clock, lease_seconds: float) -> None:
        super().__init__(Order, db, clock, lease_seconds)

    # --- hooks of the generic queue --------------------------------------------------------
    def lock_first(self, job_id: str) -> None:
        """The order's account before the order (creating an order or purging an account locks the account first)."""
        if not is_sqlite(self.db):
            Account.select(Account.id).where(
                Account.id.in_(Order.select(Order.account).where(Order.id == job_id))
            ).for_update("FOR KEY SHARE").first()  # type: ignore[arg-type]  # peewee takes a lock clause; its stubs say bool

    def on_failed(self, job_id: str, error: str) -> None:
        """The order failed for good: every slot still pending fails and is refunded."""
        order = Order.get_by_id(job_id)
        pending = _ids(
            OrderImage.select(OrderImage.id).where(
                OrderImage.order == job_id, OrderImage.state == OrderImageState.PENDING
            )
        )
        _fail_pending(order, pending, error, self.clock.now())
        if order.images_done:  # some images were made before it gave up: the order is what it delivered
            Order.update(state=OrderState.COMPLETED).where(Order.id == job_id).execute()

    # --- the worker's fenced writes -------------------------------------------------------
    def pending_slots(self, claim: Claim) -> list[OrderImage]:
        return list(
            OrderImage.select()
            .where(OrderImage.order == claim.job_id, OrderImage.state == OrderImageState.PENDING)
            .order_by(OrderImage.position)
        )

    def record_image(
        self,
        claim: Claim,
        slot: OrderImage,
        blob_id: str,
        preview_blob_id: str,
        content_type: str,
        size: int,
        width: int,
        height: int,
        key_id: str,
    ) -> bool:
        """Records the slot's generated photo (`key_id`: the data key of its own that both blobs are sealed with,
        shredded with it); False (nothing recorded) when the order or the slot is no longer ours,
        or when the model may no longer be served (deleted, account deactivated, while the image was being made):
        then the slot fails and is refunded instead, in the same transaction."""
        with write_transaction(self.db):
            self.lock_first(claim.job_id)
            if not self.owns(claim):
                return False
            now = self.clock.now()
            order = Order.get_by_id(claim.job_id)
            reason = unservable_reason(order.account_id, slot.model_id)
            if reason is not None:
                _fail_pending(order, [slot.id], reason, now)
                return False
            if (
                OrderImage.update(state=OrderImageState.DONE, error=None, updated_at=now)
                .where(OrderImage.id == slot.id, OrderImage.state == OrderImageState.PENDING)
                .execute()
                != 1
            ):
                return False
            GeneratedPhoto.create(
                id=ids.new_id(),
                account=order.account_id,
                order=order.id,
                image=slot.id,
                model_id=slot.model_id,
                blob_id=blob_id,
                preview_blob_id=preview_blob_id,
                content_type=content_type,
                size_bytes=size,
                width=width,
                height=height,
                state=GeneratedPhotoState.AVAILABLE,
                created_at=now,
                key_id=key_id,  # the generated photo's own key: its purge shreds it (retention/keys.py)
            )
            Order.update(images_done=Order.images_done + 1, progress=_progress(done_delta=1), updated_at=now).where(
                Order.id == order.id
            ).execute()
            return True

    def fail_image(self, claim: Claim, slot_ids: list[str], error: str) -> int:
        """Fails pending slots and refunds them; returns how many it failed (0 when the order is no longer ours)."""
        with write_transaction(self.db):
            self.lock_first(claim.job_id)
            if not self.owns(claim):
                return 0
            return _fail_pending(Order.get_by_id(claim.job_id), slot_ids, error, self.clock.now())

    def finish(self, claim: Claim) -> str | None:
        """Once no slot is pending: COMPLETED when any image was made, else FAILED. None when not ours or not finished."""
        with write_transaction(self.db):
            self.lock_first(claim.job_id)
            if not self.owns(claim):
                return None
            if (
                OrderImage.select()
                .where(OrderImage.order == claim.job_id, OrderImage.state == OrderImageState.PENDING)
                .exists()
            ):
                return None
            order = Order.get_by_id(claim.job_id)
            if order.images_done:
                state, error = OrderState.COMPLETED, None
            else:
                # peewee's stubs type .tuples() as the select itself; it yields (error,) tuples.
                rows = OrderImage.select(OrderImage.error).where(OrderImage.order == order.id).tuples()
                errors = [e for (e,) in cast("Iterable[tuple[str]]", rows)]
                state, error = OrderState.FAILED, max(set(errors), key=errors.count) if errors else "NO_IMAGES"
            self._finish(order.id, state, self.clock.now(), error=error)
            return state
