"""Concurrent calls against the real gRPC server, on both backends: real threads released together by a barrier.

The races matter on PostgreSQL (SQLite's IMMEDIATE transactions serialise every writer): each concurrent
burst gives the answers the same calls made one after another would (one row, idempotent answers or a
defined reason), never UNKNOWN or INTERNAL, and a burst of sign-in code requests sends exactly the allowed
number of emails. The lock-order tests (PostgreSQL only) hold what one side locks first and prove the other
side waits for it before it locks anything later in the order of `faceharmony.core.db.locks`.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter

import grpc
import pytest
from google.protobuf import message_factory

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import close_database, is_sqlite, make_database, write_transaction
from faceharmony.core.jobs import orders as core_orders
from faceharmony.core.jobs.training import TrainingQueue
from faceharmony.v1 import account_pb2, admin_pb2, model_pb2, order_pb2, photo_pb2, purchase_pb2, support_pb2
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import admin_pb2 as ad
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import status_of
from tests.support.wait import wait_for

NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def together(n: int, fn):
    """fn(0..n-1) on n threads released at once by a barrier; the results in order."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def approve(h, email: str, name: str = "Rae") -> None:
    h.accounts.JoinWaitlist(a.JoinWaitlistRequest(name=name, email=email, is_16_or_older=True))
    staff = h.staff("support")
    entry = next(
        e
        for e in h.admin.ListWaitlist(ad.ListWaitlistRequest(page_size=200), metadata=staff.md).entries
        if e.email == email
    )
    h.admin.ApproveWaitlistEntry(ad.ApproveWaitlistEntryRequest(id=entry.id), metadata=staff.md)


# --- one email, many calls --------------------------------------------------------------------------


def test_concurrent_join_waitlist_with_one_email_stores_one_entry(harness):
    h = harness
    for k in range(3):
        email = f"burst{k}@example.com"
        got = together(
            8,
            lambda i, email=email: status_of(
                h.accounts.JoinWaitlist, a.JoinWaitlistRequest(name="Bo", email=email, is_16_or_older=True)
            ),
        )
        assert got == [(grpc.StatusCode.OK, "")] * 8
        assert h.db_call(m.WaitlistEntry.select().where(m.WaitlistEntry.email_hmac == h.email_hmac(email)).count) == 1


def test_concurrent_accept_invitation_and_sign_in_for_one_email_make_one_account(harness):
    """The email is both approved on the waiting list and invited: whichever call comes first creates the account."""
    h = harness
    inviter = h.sign_up("host@example.com", "Host")
    for k in range(4):
        email = f"both{k}@example.com"
        approve(h, email)
        h.accounts.InviteFriend(a.InviteFriendRequest(email=email, name="Both"), metadata=inviter.md)
        token = h.last_email_to(email, "invited").get_content().split("invitation code:")[1].split()[0]
        code = h.code_for(email)
        calls = [
            lambda token=token: status_of(
                h.accounts.AcceptInvitation, a.AcceptInvitationRequest(invitation_token=token, is_16_or_older=True)
            ),
            lambda email=email, code=code: status_of(h.accounts.SignIn, a.SignInRequest(email=email, code=code)),
        ]
        accepted, signed_in = together(2, lambda i, calls=calls: calls[i]())
        assert signed_in == (grpc.StatusCode.OK, "")
        assert accepted in ((grpc.StatusCode.OK, ""), (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_ALREADY_USED"))
        assert h.db_call(m.Account.select().where(m.Account.email_hmac == h.email_hmac(email)).count) == 1


def test_concurrent_sign_ins_with_one_code_open_one_session(harness):
    h = harness
    email = "twice@example.com"
    approve(h, email)
    code = h.code_for(email)
    got = together(6, lambda i: status_of(h.accounts.SignIn, a.SignInRequest(email=email, code=code)))
    assert Counter(got) == Counter(
        [(grpc.StatusCode.OK, "")] + [(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CODE")] * 5
    )
    assert h.db_call(m.Account.select().where(m.Account.email_hmac == h.email_hmac(email)).count) == 1
    assert h.db_call(m.Session.select().count) == 2  # the staff member who approved, and this one


def test_a_burst_of_code_requests_sends_exactly_the_allowed_number(harness):
    h = harness
    email = "many@example.com"
    approve(h, email)
    h.new_emails()
    allowed = h.settings.code_requests_per_window
    got = together(16, lambda i: status_of(h.accounts.RequestSignInCode, a.RequestSignInCodeRequest(email=email)))
    assert Counter(got) == Counter(
        [(grpc.StatusCode.OK, "")] * allowed + [(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")] * (16 - allowed)
    )
    assert len([mail for mail in h.new_emails() if mail["To"] == email]) == allowed
    live = h.db_call(
        m.SignInCode.select().where(m.SignInCode.consumed_at.is_null(), m.SignInCode.superseded == False).count  # noqa: E712
    )
    assert live == 1  # each new code supersedes the one before


def test_a_burst_of_invitations_is_counted_exactly(harness):
    h = harness
    inviter = h.sign_up("popular@example.com")
    allowed = h.settings.invitations_per_day
    n = allowed + 6
    got = together(
        n,
        lambda i: status_of(
            h.accounts.InviteFriend, a.InviteFriendRequest(email=f"f{i}@example.com", name="F"), metadata=inviter.md
        ),
    )
    assert Counter(got) == Counter(
        [(grpc.StatusCode.OK, "")] * allowed + [(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")] * 6
    )
    assert h.db_call(m.Invitation.select().count) == allowed


def test_concurrent_create_model_with_one_request_id_answers_one_model(harness):
    """Sequentially, a replay answers the first model; concurrently too (not PHOTO_NOT_USABLE for the photos the
    first call just took)."""
    h = harness
    user = h.sign_up("samereq@example.com")
    payload = images.one_face()
    photo_ids = [
        h.photos.UploadPhoto(p.UploadPhotoRequest(content=payload), metadata=user.md).photo.id for _ in range(4)
    ]
    request = mp.CreateModelRequest(display_name="Me", photo_ids=photo_ids, request_id="same")

    def create(i):
        try:
            return h.models.CreateModel(request, metadata=user.md).model.id
        except grpc.RpcError as exc:
            return exc.code(), exc.details()

    got = together(6, create)
    assert len(set(got)) == 1 and isinstance(got[0], str), got
    assert h.db_call(m.UserModel.select().count) == 1 and h.db_call(m.TrainingJob.select().count) == 1


def test_concurrent_replays_of_a_purchase_a_ticket_and_an_upload_answer_the_first(harness):
    h = harness
    user = h.sign_up("replays@example.com")
    purchase = purchase_pb2.RecordPurchaseRequest(
        store=purchase_pb2.STORE_APP_STORE, signed_transaction=h.app_store_transaction()
    )
    got = together(6, lambda i: h.purchases.RecordPurchase(purchase, metadata=user.md).purchase.id)
    assert len(set(got)) == 1 and h.db_call(m.Purchase.select().count) == 1
    assert h.db_call(m.CreditEntry.select().where(m.CreditEntry.kind == "purchase").count) == 1
    ticket = support_pb2.CreateTicketRequest(subject="Help", body="Hi", request_id="t-1")
    got = together(6, lambda i: h.support.CreateTicket(ticket, metadata=user.md).ticket.id)
    assert (
        len(set(got)) == 1
        and h.db_call(m.Ticket.select().count) == 1
        and h.db_call(m.TicketMessage.select().count) == 1
    )
    upload = p.UploadPhotoRequest(content=images.one_face(), request_id="u-1")
    got = together(4, lambda i: h.photos.UploadPhoto(upload, metadata=user.md).photo.id)
    assert len(set(got)) == 1 and h.db_call(m.Photo.select().count) == 1


# --- NUL and other text PostgreSQL refuses ------------------------------------------------------------

SERVICES = [account_pb2, admin_pb2, model_pb2, order_pb2, photo_pb2, purchase_pb2, support_pb2]


def _string_requests(method, value: str):
    """One request per string field of the method's input (repeated ones too), that field set to value."""
    cls = message_factory.GetMessageClass(method.input_type)
    for field in method.input_type.fields:
        if field.type != field.TYPE_STRING:
            continue
        request = cls()
        if field.is_repeated:
            getattr(request, field.name).extend([value])
        else:
            setattr(request, field.name, value)
        yield field.name, request


def test_nul_in_any_string_field_of_any_rpc_is_refused_not_internal(harness):
    """PostgreSQL refuses NUL in text: every string a client sends is checked before it reaches a query."""
    h = harness
    admin = h.staff("admin")
    checked = 0
    for module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming:
                    continue
                out = message_factory.GetMessageClass(method.output_type)
                path = f"/{service.full_name}/{method.name}"
                kind = h.channel.unary_stream if method.server_streaming else h.channel.unary_unary
                call = kind(
                    path, request_serializer=lambda r: r.SerializeToString(), response_deserializer=out.FromString
                )
                for name, request in _string_requests(method, "a\x00b"):

                    def invoke(req=request, call=call, method=method):
                        result = call(req, metadata=admin.md, timeout=30)
                        if method.server_streaming:
                            list(result)

                    code, reason = status_of(invoke)
                    assert code not in NEVER, (path, name)
                    checked += 1
    assert checked > 30


def test_audit_log_kind_with_a_nul_is_invalid(harness):
    h = harness
    admin = h.staff("admin")
    code, reason = status_of(h.admin.GetAuditLog, ad.GetAuditLogRequest(kind="SIGN_IN\x00"), metadata=admin.md)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [e.kind for e in h.admin.GetAuditLog(ad.GetAuditLogRequest(kind=" sign_in "), metadata=admin.md).events] == [
        "SIGN_IN"
    ]


# --- lock order (PostgreSQL) -------------------------------------------------------------------------


@pytest.fixture
def pg_probe(harness):
    """(locker, watcher): two connections of the test's own, beside the server's pool; PostgreSQL only."""
    if is_sqlite(harness.db):
        pytest.skip("SQLite serialises every write transaction: there is no lock order to get wrong")
    locker, watcher = make_database(harness.settings.database_url), make_database(harness.settings.database_url)
    yield locker, watcher
    close_database(locker)
    close_database(watcher)


def _lock_waiters(watcher) -> int:
    rows = watcher.execute_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return rows[0]


def _in_thread(h, fn):
    """fn() on its own thread with a connection of the server's pool; a future of its result."""

    def run():
        with h.db.connection_context():
            return fn()

    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


def _probe_unlocked(locker, table: str, row_id: str) -> None:
    """Inside locker's transaction: the row is not locked by anyone else (NOWAIT raises when it is)."""
    locker.execute_sql(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE NOWAIT", (row_id,)).fetchone()


def _model_with_job(h, email: str):
    user = h.sign_up(email)
    payload = images.one_face()
    photo_ids = [
        h.photos.UploadPhoto(p.UploadPhotoRequest(content=payload), metadata=user.md).photo.id for _ in range(4)
    ]
    model = h.models.CreateModel(mp.CreateModelRequest(display_name="Me", photo_ids=photo_ids), metadata=user.md).model
    return user, model.id, h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id).id)


@pytest.mark.parametrize("write", ["start", "fail", "record_version"])
def test_the_trainer_locks_the_model_before_the_job_as_delete_model_does(harness, pg_probe, write):
    """DeleteModel locks the model, then cancels its jobs. A trainer write that locked the job first and then
    waited for the model would deadlock with it (PostgreSQL then fails one side)."""
    h = harness
    locker, watcher = pg_probe
    user, model_id, job_id = _model_with_job(h, f"order-{write}@example.com")
    queue = TrainingQueue(h.db, h.clock, lease_seconds=600)
    claim = h.db_call(queue.claim, "w")
    if write != "start":  # the model is TRAINING, so failing or recording writes its row
        assert h.db_call(queue.start, claim) is not None
    calls = {
        "start": lambda: queue.start(claim),
        "fail": lambda: queue.fail(claim, "TRAINING_ERROR", retryable=True),
        "record_version": lambda: queue.record_version(
            claim, ids.new_id(), ids.new_id(), "f" * 64, key_id=ids.new_id()
        ),
    }
    with locker.atomic():
        # What DeleteModel does first: the model's row.
        locker.execute_sql("SELECT id FROM user_model WHERE id = %s FOR UPDATE", (model_id,)).fetchone()
        trainer = _in_thread(h, calls[write])
        wait_for(lambda: _lock_waiters(watcher) >= 1, timeout=30, what="the trainer to wait for the model's lock")
        _probe_unlocked(locker, "training_job", job_id)  # the trainer holds nothing DeleteModel needs next
        # The rest of DeleteModel, which now cannot deadlock with the waiting trainer.
        locker.execute_sql(
            "UPDATE user_model SET state = 'pending_deletion', state_before_delete = state WHERE id = %s", (model_id,)
        )
        locker.execute_sql(
            "UPDATE training_job SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL"
            " WHERE model_id = %s AND state IN ('queued', 'running')",
            (model_id,),
        )
    result = trainer.result(timeout=60)
    assert result in (None, "lost")  # the job was cancelled under it: nothing recorded
    assert h.db_call(lambda: m.TrainingJob.get_by_id(job_id).state) == "cancelled"
    assert h.db_call(m.ModelVersion.select().count) == 0


def test_the_order_worker_locks_the_account_before_the_order(harness, pg_probe):
    """Creating an order or purging an account locks the account first; the worker's refund (a row that names
    the account) must not hold the order's row while it waits for the account's."""
    h = harness
    locker, watcher = pg_probe
    user = h.sign_up("orderlock@example.com")

    def make_order():
        with write_transaction(h.db):
            key_id = m.Account.get_by_id(user.account_id).key_id
            return core_orders.create(
                user.account_id, [(ids.new_id(), 1)], "studio", 1, 1, None, h.clock.now(), 3, key_id=key_id
            ).id

    order_id = h.db_call(make_order)
    queue = core_orders.OrderQueue(h.db, h.clock, lease_seconds=600)
    claim = h.db_call(queue.claim, "w")
    slot_ids = h.db_call(lambda: [s.id for s in queue.pending_slots(claim)])
    with locker.atomic():
        locker.execute_sql("SELECT id FROM account WHERE id = %s FOR UPDATE", (user.account_id,)).fetchone()
        worker = _in_thread(h, lambda: queue.fail_image(claim, slot_ids, "TRITON_REFUSED"))
        wait_for(lambda: _lock_waiters(watcher) >= 1, timeout=30, what="the worker to wait for the account's lock")
        _probe_unlocked(locker, "photo_order", order_id)
    assert worker.result(timeout=60) == 1
    assert h.db_call(lambda: m.OrderImage.get_by_id(slot_ids[0]).state) == "failed"


def test_the_account_purge_locks_the_models_before_their_jobs(harness, pg_probe):
    """A trainer's write holds the model's row (then wants the job's); the purge must not take the job's first."""
    import datetime as dt

    from faceharmony.core.blobstore.base import Role
    from faceharmony.core.blobstore.local import LocalBlobStore
    from faceharmony.retention.daemon import Retention

    h = harness
    locker, watcher = pg_probe
    user, model_id, job_id = _model_with_job(h, "purged-trainee@example.com")
    deleted = h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md).account
    h.clock.set(deleted.purge_after.ToDatetime(tzinfo=dt.UTC) + dt.timedelta(seconds=1))
    retention = Retention(h.settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=h.clock)
    with locker.atomic():
        locker.execute_sql("SELECT id FROM user_model WHERE id = %s FOR UPDATE", (model_id,)).fetchone()
        purge = _in_thread(h, retention.run_once)
        wait_for(lambda: _lock_waiters(watcher) >= 1, timeout=30, what="the purge to wait for the model's lock")
        _probe_unlocked(locker, "training_job", job_id)
    assert purge.result(timeout=120)["accounts"] == 1
    assert h.db_call(m.TrainingJob.select().count) == 0


@pytest.mark.parametrize("writer", ["confirm", "cancel"])
def test_eviction_records_are_locked_in_model_order_by_every_writer(harness, pg_probe, writer):
    """A request (the upsert locks in (model_id, version) order) holds the first record; the order worker's
    confirm, or a reactivation's cancel, must wait for it holding nothing, not lock the second record first
    (their ids sort the other way round)."""
    from faceharmony.core.jobs import evictions

    h = harness
    locker, watcher = pg_probe
    first, second = ("0" * 32, "f" * 32), ("f" * 32, "0" * 32)  # (id, model_id): ids sort against model ids
    now = h.clock.now()
    h.db_call(
        lambda: m.ModelEviction.insert_many(
            [
                {
                    "id": i,
                    "model_id": mid,
                    "version": 1,
                    "token": ids.new_id(),
                    "requested_at": now,
                    "confirmed_by": [],
                    "attempts": 0,
                }
                for i, mid in (first, second)
            ]
        ).execute()
    )
    records = h.db_call(evictions.pending)
    calls = {
        "confirm": lambda: evictions.confirm(h.db, records, "replica-a", ["replica-a"]),
        "cancel": lambda: _cancel_both(h),
    }
    with locker.atomic():
        # What request_versions' upsert takes first: the record of the smaller model id.
        locker.execute_sql("SELECT id FROM model_eviction WHERE model_id = %s FOR UPDATE", (second[1],)).fetchone()
        other = _in_thread(h, calls[writer])
        wait_for(lambda: _lock_waiters(watcher) >= 1, timeout=30, what=f"{writer} to wait for the first record")
        _probe_unlocked(locker, "model_eviction", first[0])  # the record of the larger model id is free
    assert other.result(timeout=60) == 2
    assert h.db_call(m.ModelEviction.select().count) == 0


def _cancel_both(h) -> int:
    from faceharmony.core.jobs import evictions

    with write_transaction(h.db):
        return evictions.cancel(h.db, ["0" * 32, "f" * 32])
