"""OrderService through the API (P14-P16) and the order queue's fenced writes, on both database backends.

Models are made READY directly in the database here and images are recorded through `core/jobs/orders.py` as the
worker records them; the worker itself, against a real Triton server, is in test_order_worker.py.
"""

from __future__ import annotations

import datetime as dt
import io
import threading

import grpc
import numpy as np
from PIL import Image

from faceharmony.core import ids
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.jobs.orders import OrderQueue
from faceharmony.order_worker.worker import encode
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import order_pb2 as o
from tests.support.harness import status_of
from tests.support.orders import balance, order, ready_model

NF = (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def queue(h) -> OrderQueue:
    return OrderQueue(h.db, h.clock, h.settings.order_lease_seconds)


def make_images(h, order_id: str, fail: int = 0) -> list[bytes]:
    """Claims the order as a worker would and records every slot (the first `fail` fail); returns the PNGs."""
    q = queue(h)
    claim = h.db_call(q.claim, "test-worker")
    assert claim is not None and claim.job_id == order_id
    store = LocalBlobStore(h.settings.blob_dir, Role.ORDER)
    key_id = h.db_call(lambda: m.Order.get_by_id(order_id).key_id)  # the worker seals with the order's key
    pngs = []
    for i, slot in enumerate(h.db_call(q.pending_slots, claim)):
        if i < fail:
            assert h.db_call(q.fail_image, claim, [slot.id], "GENERATION_REFUSED") == 1
            continue
        pixels = np.random.default_rng(i).integers(0, 255, (48, 80, 3), dtype=np.uint8)
        png, jpeg = encode(pixels, h.settings.preview_max_side)
        blob = store.create("generated", png, "image/png", key_id=key_id)
        preview = store.create("generated", jpeg, "image/jpeg", key_id=key_id)
        assert h.db_call(q.record_image, claim, slot, blob, preview, "image/png", len(png), 80, 48, key_id)
        pngs.append(png)
    assert h.db_call(q.finish, claim) in ("completed", "failed")
    return pngs


def test_styles_and_an_order_debited_once(harness):
    h = harness
    user = h.sign_up("orders@example.com")
    styles = h.orders.ListStyles(o.ListStylesRequest(), metadata=user.md).styles
    assert {"studio", "business", "oil_painting"} <= {s.id for s in styles} and all(s.display_name for s in styles)
    a, b = ready_model(h, user), ready_model(h, user)
    assert balance(h, user) == 10
    first = order(h, user, [b, a], count=2, request_id="o-1")
    assert first.state == o.ORDER_STATE_QUEUED and list(first.model_ids) == [b, a]
    assert (first.images_total, first.credits_charged, first.images_done) == (4, 4, 0)
    assert balance(h, user) == 6
    again = order(h, user, [b, a], count=2, request_id="o-1")
    assert again.id == first.id and balance(h, user) == 6
    assert status_of(order, h, user, [b, a], count=1, request_id="o-1") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    assert h.orders.GetOrder(o.GetOrderRequest(id=first.id), metadata=user.md).order == first
    h.clock.advance(dt.timedelta(seconds=1))
    second = order(h, user, [a])
    listed = h.orders.ListOrders(o.ListOrdersRequest(page_size=1), metadata=user.md)
    assert [x.id for x in listed.orders] == [second.id] and listed.next_page_token
    rest = h.orders.ListOrders(o.ListOrdersRequest(page_size=1, page_token=listed.next_page_token), metadata=user.md)
    assert [x.id for x in rest.orders] == [first.id]
    slots = h.db_call(
        lambda: list(m.OrderImage.select().where(m.OrderImage.order == first.id).order_by(m.OrderImage.position))
    )
    assert [s.model_id for s in slots] == [b, b, a, a] and len({s.seed for s in slots}) == 4
    assert h.db_call(lambda: m.CreditEntry.select().where(m.CreditEntry.kind == "order").count()) == 2


def test_bad_orders_get_reasons_and_cost_nothing(harness):
    h = harness
    user, other = h.sign_up("bad-order@example.com"), h.sign_up("other-order@example.com")
    mine, theirs = ready_model(h, user), ready_model(h, other)
    busy = h.db_call(
        lambda: (
            m.UserModel.create(
                id=ids.new_id(),
                account=user.account_id,
                key_id=m.Account.get_by_id(user.account_id).key_id,
                display_name="x",
                state="training",
                trigger_token="sks",
                created_at=h.clock.now(),
                updated_at=h.clock.now(),
            ).id
        )
    )
    deleted = ready_model(h, user)
    h.models.DeleteModel(mp.DeleteModelRequest(id=deleted), metadata=user.md)
    many = [ready_model(h, user) for _ in range(4)]
    before = h.db_call(
        lambda: (m.Order.select().count(), m.OrderImage.select().count(), m.CreditEntry.select().count())
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    cases = [
        (dict(model_ids=[theirs]), NF),
        (dict(model_ids=[ids.new_id()]), NF),
        (dict(model_ids=[mine, theirs]), NF),
        (dict(model_ids=["nope"]), (invalid, "INVALID_ID")),
        (dict(model_ids=[busy]), (precondition, "MODEL_NOT_READY")),
        (dict(model_ids=[deleted]), (precondition, "MODEL_PENDING_DELETION")),
        (dict(model_ids=[mine], count=0), (invalid, "INVALID_COUNT")),
        (dict(model_ids=[mine], count=9), (invalid, "INVALID_COUNT")),
        (dict(model_ids=[mine], count=-1), (invalid, "INVALID_COUNT")),
        (dict(model_ids=[mine], style_id="nope"), (invalid, "UNKNOWN_STYLE")),
        (dict(model_ids=[mine], style_id=""), (invalid, "UNKNOWN_STYLE")),
        (dict(model_ids=[mine, *many]), (invalid, "TOO_MANY_MODELS")),
        (dict(model_ids=[mine, mine]), (invalid, "INVALID_REQUEST")),
        (dict(model_ids=[]), (invalid, "INVALID_REQUEST")),
        (dict(model_ids=many[:2], count=6), (precondition, "INSUFFICIENT_CREDITS")),  # 12 > 10
        (dict(model_ids=[mine], request_id="bad id!"), (invalid, "INVALID_REQUEST")),
    ]
    for kw, expected in cases:
        kw = {"count": 1, "style_id": "studio", **kw}
        got = status_of(h.orders.CreateOrder, o.CreateOrderRequest(**kw), metadata=user.md)
        assert got == expected, kw
    after = h.db_call(lambda: (m.Order.select().count(), m.OrderImage.select().count(), m.CreditEntry.select().count()))
    assert after == before and balance(h, user) == 10
    assert order(h, user, many[:2], count=5).credits_charged == 10 and balance(h, user) == 0  # exactly the balance
    assert status_of(order, h, user, [mine]) == (precondition, "INSUFFICIENT_CREDITS")


def test_concurrent_orders_never_overdraw(harness):
    h = harness
    user = h.sign_up("race-order@example.com")
    model = ready_model(h, user)
    results = []

    def place():
        results.append(status_of(order, h, user, [model], count=4))

    threads = [threading.Thread(target=place) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count((grpc.StatusCode.OK, "")) == 2, results
    assert results.count((grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")) == 4
    assert balance(h, user) == 2


def test_each_slot_is_recorded_once_failures_are_refunded_and_a_lost_lease_writes_nothing(harness):
    h = harness
    user = h.sign_up("slots@example.com")
    model = ready_model(h, user)
    placed = order(h, user, [model], count=3)
    q = queue(h)
    claim = h.db_call(q.claim, "w1")
    slots = h.db_call(q.pending_slots, claim)
    blob = ids.new_id
    assert h.db_call(q.record_image, claim, slots[0], blob(), blob(), "image/png", 1, 8, 8, ids.new_id())
    assert not h.db_call(
        q.record_image, claim, slots[0], blob(), blob(), "image/png", 1, 8, 8, ids.new_id()
    )  # already done
    assert h.db_call(q.fail_image, claim, [slots[1].id], "GENERATION_REFUSED") == 1
    assert h.db_call(q.fail_image, claim, [slots[1].id], "GENERATION_REFUSED") == 0  # refunded once
    assert h.db_call(q.finish, claim) is None  # a slot is still pending
    h.clock.advance(dt.timedelta(seconds=h.settings.order_lease_seconds + 1))  # w1 stalls; w2 takes over
    taken = h.db_call(q.claim, "w2")
    assert taken.job_id == placed.id and taken.attempt == 2
    assert not h.db_call(q.record_image, claim, slots[2], blob(), blob(), "image/png", 1, 8, 8, ids.new_id())
    assert h.db_call(q.fail_image, claim, [slots[2].id], "X") == 0
    assert [s.id for s in h.db_call(q.pending_slots, taken)] == [slots[2].id]
    assert h.db_call(q.record_image, taken, slots[2], blob(), blob(), "image/png", 1, 8, 8, ids.new_id())
    assert h.db_call(q.finish, taken) == "completed"
    got = h.orders.GetOrder(o.GetOrderRequest(id=placed.id), metadata=user.md).order
    assert (got.state, got.images_done, got.images_failed, got.credits_charged, got.credits_refunded) == (
        o.ORDER_STATE_COMPLETED,
        2,
        1,
        3,
        1,
    )
    assert balance(h, user) == 10 - 3 + 1
    assert h.db_call(m.GeneratedPhoto.select().count) == 2


def test_an_order_whose_attempts_run_out_refunds_every_pending_image(harness):
    h = harness
    user = h.sign_up("exhaust@example.com")
    placed = order(h, user, [ready_model(h, user)], count=2)
    q = queue(h)
    for _ in range(h.settings.order_max_attempts):  # each worker dies holding it
        assert h.db_call(q.claim, "dying") is not None
        h.clock.advance(dt.timedelta(seconds=h.settings.order_lease_seconds + 1))
    assert h.db_call(q.claim, "next") is None
    got = h.orders.GetOrder(o.GetOrderRequest(id=placed.id), metadata=user.md).order
    assert (got.state, got.images_failed, got.credits_refunded) == (o.ORDER_STATE_FAILED, 2, 2)
    assert balance(h, user) == 10


def test_generated_photos_preview_download_reject_delete_owner_only(harness):
    h = harness
    user, other = h.sign_up("gallery@example.com"), h.sign_up("snoop@example.com")
    placed = order(h, user, [ready_model(h, user)], count=3)
    pngs = make_images(h, placed.id, fail=1)
    listed = h.orders.ListGeneratedPhotos(
        o.ListGeneratedPhotosRequest(order_id=placed.id), metadata=user.md
    ).generated_photos
    assert len(listed) == 2 and all(
        p.state == o.GENERATED_PHOTO_STATE_AVAILABLE and (p.width, p.height) == (80, 48) for p in listed
    )
    first, second = listed
    preview = h.orders.GetGeneratedPhotoPreview(o.GetGeneratedPhotoPreviewRequest(id=first.id), metadata=user.md)
    img = Image.open(io.BytesIO(preview.jpeg))
    assert img.format == "JPEG" and img.size == (preview.width, preview.height) == (80, 48)

    chunks = list(h.orders.DownloadGeneratedPhoto(o.DownloadGeneratedPhotoRequest(id=first.id), metadata=user.md))
    data = b"".join(c.data for c in chunks)
    assert chunks[0].content_type == "image/png" and chunks[0].total_size == len(data) and data in pngs
    assert Image.open(io.BytesIO(data)).size == (80, 48)
    now = h.clock.now()
    downloaded = h.orders.ListGeneratedPhotos(
        o.ListGeneratedPhotosRequest(state=o.GENERATED_PHOTO_STATE_DOWNLOADED), metadata=user.md
    ).generated_photos
    assert [p.id for p in downloaded] == [first.id] and downloaded[0].download_time.ToDatetime(dt.UTC) == now
    assert not downloaded[0].HasField("purge_after")  # P15: kept until the user deletes it

    rejected = h.orders.RejectGeneratedPhoto(
        o.RejectGeneratedPhotoRequest(id=second.id), metadata=user.md
    ).generated_photo
    assert rejected.state == o.GENERATED_PHOTO_STATE_REJECTED
    assert rejected.purge_after.ToDatetime(dt.UTC) == now + dt.timedelta(days=60)  # P16
    assert status_of(h.orders.RejectGeneratedPhoto, o.RejectGeneratedPhotoRequest(id=second.id), metadata=user.md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ALREADY_REJECTED",
    )
    assert status_of(h.orders.ListGeneratedPhotos, o.ListGeneratedPhotosRequest(state=7), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )

    # Someone else sees nothing of it: every call answers as if it did not exist.
    for call, req in [
        (h.orders.GetOrder, o.GetOrderRequest(id=placed.id)),
        (h.orders.GetGeneratedPhotoPreview, o.GetGeneratedPhotoPreviewRequest(id=first.id)),
        (lambda r, **kw: list(h.orders.DownloadGeneratedPhoto(r, **kw)), o.DownloadGeneratedPhotoRequest(id=first.id)),
        (h.orders.RejectGeneratedPhoto, o.RejectGeneratedPhotoRequest(id=first.id)),
        (h.orders.DeleteGeneratedPhoto, o.DeleteGeneratedPhotoRequest(id=first.id)),
        (h.orders.ListGeneratedPhotos, o.ListGeneratedPhotosRequest(order_id=placed.id)),
    ]:
        assert status_of(call, req, metadata=other.md) == NF, req
    assert h.orders.ListGeneratedPhotos(o.ListGeneratedPhotosRequest(), metadata=other.md).generated_photos == []
    assert h.orders.ListOrders(o.ListOrdersRequest(), metadata=other.md).orders == []

    h.orders.DeleteGeneratedPhoto(o.DeleteGeneratedPhotoRequest(id=first.id), metadata=user.md)
    assert (
        status_of(h.orders.GetGeneratedPhotoPreview, o.GetGeneratedPhotoPreviewRequest(id=first.id), metadata=user.md)
        == NF
    )
    assert status_of(h.orders.DeleteGeneratedPhoto, o.DeleteGeneratedPhotoRequest(id=first.id), metadata=user.md) == NF
    left = h.orders.ListGeneratedPhotos(o.ListGeneratedPhotosRequest(), metadata=user.md).generated_photos
    assert [p.id for p in left] == [second.id]
    row = h.db_call(m.GeneratedPhoto.get_by_id, first.id)
    assert row.deleted_at == now and row.purge_after == now  # the retention daemon's next run removes it


def test_watch_order_streams_progress_until_completed(harness):
    h = harness
    user = h.sign_up("watch-order@example.com")
    placed = order(h, user, [ready_model(h, user)], count=2)
    stream = h.orders.WatchOrder(o.WatchOrderRequest(id=placed.id), metadata=user.md, timeout=30)
    first = next(stream)
    assert first.order.state == o.ORDER_STATE_QUEUED
    worker = threading.Thread(target=make_images, args=(h, placed.id))
    worker.start()
    events = [first, *stream]
    worker.join()
    assert events[-1].order.state == o.ORDER_STATE_COMPLETED and events[-1].order.images_done == 2
    other = h.sign_up("watch-snoop@example.com")
    assert (
        status_of(
            lambda r, **kw: list(h.orders.WatchOrder(r, **kw)), o.WatchOrderRequest(id=placed.id), metadata=other.md
        )
        == NF
    )


def test_an_image_finished_after_its_model_was_deleted_or_account_deactivated_is_refunded_not_delivered(harness):
    from faceharmony.v1 import account_pb2 as a

    h = harness
    user = h.sign_up("late-image@example.com")
    model, other_model = ready_model(h, user), ready_model(h, user)
    first, second = order(h, user, [model], count=1), order(h, user, [other_model], count=1)
    q = queue(h)
    claims = sorted([h.db_call(q.claim, "w1"), h.db_call(q.claim, "w2")], key=lambda c: c.job_id != first.id)
    assert [c.job_id for c in claims] == [first.id, second.id]  # both images are "at Triton" now
    slots = [h.db_call(q.pending_slots, c)[0] for c in claims]
    h.models.DeleteModel(mp.DeleteModelRequest(id=model), metadata=user.md)  # P13: mid-generation
    assert not h.db_call(
        q.record_image, claims[0], slots[0], ids.new_id(), ids.new_id(), "image/png", 1, 8, 8, ids.new_id()
    )
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)  # P17
    assert not h.db_call(
        q.record_image, claims[1], slots[1], ids.new_id(), ids.new_id(), "image/png", 1, 8, 8, ids.new_id()
    )
    assert h.db_call(m.GeneratedPhoto.select().count) == 0
    for claim, reason in zip(claims, ("MODEL_DELETED", "ACCOUNT_DEACTIVATED")):
        assert h.db_call(q.finish, claim) == "failed"
        row = h.db_call(m.Order.get_by_id, claim.job_id)
        assert (row.images_failed, row.credits_refunded, row.error) == (1, 1, reason)
    assert (
        h.db_call(lambda: sum(e.delta for e in m.CreditEntry.select().where(m.CreditEntry.account == user.account_id)))
        == 10
    )
