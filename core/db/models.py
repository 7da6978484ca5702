"""The schema as peewee models. Migrations under migrations/ create and change it; a test checks they agree.

Times are stored as naive UTC and come back timezone-aware. Ids are random
128-bit hex strings (faceharmony.core.ids). Rows that hold personal data
(names, emails, tickets, purchases) all hang off an account, so the account
purge can find them; KnownEmail (the email's HMAC, P5) is the only row
meant to outlive an account.

Personal data is sealed (issue 12, core/db/sealed.py): every row that holds a person's data or owns one of
their blobs carries `key_id`, the id of that person's data key (core/keys), and each personal column is a
SealedField under its old column name, read and written in plaintext through a `sealed` descriptor named as
the old attribute. Such a column can never be filtered on: emails are looked up by `email_hmac` (unique on
account and waitlist_entry), and an update query must seal its value (seal_value) or go through save().
"""

from __future__ import annotations

import datetime as dt
import enum
import json

import peewee as pw

from faceharmony.core.db.sealed import KeyIdField, SealedField, SealedSaveMixin, sealed

database_proxy = pw.DatabaseProxy()


class UtcDateTimeField(pw.DateTimeField):
    """Aware datetimes in, aware UTC datetimes out; naive UTC in the database."""

    def db_value(self, value):
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value):
        value = super().python_value(value)
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class JsonField(pw.TextField):
    def db_value(self, value):
        return None if value is None else json.dumps(value, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(SealedSaveMixin, pw.Model):
    """save() seals the plaintext set on the row's `sealed` columns first (SealedSaveMixin)."""

    class Meta:
        database = database_proxy
        legacy_table_names = False


def IdField(**kwargs) -> pw.CharField:
    return pw.CharField(max_length=32, **kwargs)


class AccountState(enum.StrEnum):
    ACTIVE = "active"
    DEACTIVATED = "deactivated"  # deleted by its owner (P17); can be reactivated until purge_after
    PURGING = "purging"  # the retention daemon is deleting it; never restored


class Account(BaseModel):
    id = IdField(primary_key=True)
    key_id = KeyIdField()
    email_sealed = SealedField(column_name="email")
    email = sealed("email_sealed")
    email_hmac = pw.CharField(max_length=64, unique=True)
    name_sealed = SealedField(column_name="name")
    name = sealed("name_sealed")
    role = pw.CharField(max_length=16, default="user")  # user | support | admin
    state = pw.CharField(max_length=16, default=AccountState.ACTIVE)  # AccountState
    is_16_or_older = pw.BooleanField()
    free_trial_granted = pw.BooleanField(default=False)
    invited_by = pw.ForeignKeyField("self", null=True, on_delete="SET NULL", backref="invitees")
    created_at = UtcDateTimeField()
    updated_at = UtcDateTimeField()
    deleted_at = UtcDateTimeField(null=True)
    purge_after = UtcDateTimeField(null=True, index=True)


class KnownEmail(BaseModel):
    """The one-way keyed hash of every email that ever had an account (P5); survives the purge."""

    email_hmac = pw.CharField(max_length=64, primary_key=True)
    first_seen = UtcDateTimeField()


class WaitlistState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"


class WaitlistEntry(BaseModel):
    id = IdField(primary_key=True)
    key_id = KeyIdField()  # a key of its own; the account made from the entry takes it
    email_sealed = SealedField(column_name="email")
    email = sealed("email_sealed")
    email_hmac = pw.CharField(max_length=64, unique=True)
    name_sealed = SealedField(column_name="name")
    name = sealed("name_sealed")
    note_sealed = SealedField(column_name="note")
    note = sealed("note_sealed")
    is_16_or_older = pw.BooleanField()
    state = pw.CharField(max_length=16, default=WaitlistState.PENDING)  # WaitlistState
    created_at = UtcDateTimeField(index=True)
    approved_at = UtcDateTimeField(null=True)
    approved_by = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL", backref="approvals")
    # Set when the approved person's account is created; purged with it.
    account = pw.ForeignKeyField(Account, null=True, on_delete="CASCADE", backref="waitlist_entries")


class Invitation(BaseModel):
    id = IdField(primary_key=True)
    token_hash = pw.CharField(max_length=64, unique=True)
    inviter = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="invitations")
    key_id = KeyIdField()  # the invitee's key (not the inviter's); the account the invitation makes takes it
    email_sealed = SealedField(column_name="email")
    email = sealed("email_sealed")
    email_hmac = pw.CharField(max_length=64, index=True)
    name_sealed = SealedField(column_name="name")
    name = sealed("name_sealed")
    created_at = UtcDateTimeField(index=True)
    expires_at = UtcDateTimeField(index=True)
    accepted_at = UtcDateTimeField(null=True)
    # Set when the inviter's account is deleted (P1: invited by an active user); reactivation leaves it (migration 0007).
    revoked_at = UtcDateTimeField(null=True)
    # The account the invitation created; the row (which holds its email) is purged with it.
    account = pw.ForeignKeyField(Account, null=True, on_delete="CASCADE", backref="accepted_invitations")


class SignInCode(BaseModel):
    id = IdField(primary_key=True)
    email_hmac = pw.CharField(max_length=64, index=True)
    code_hash = pw.CharField(max_length=64)
    created_at = UtcDateTimeField()
    expires_at = UtcDateTimeField(index=True)
    attempts = pw.IntegerField(default=0)
    consumed_at = UtcDateTimeField(null=True)
    superseded = pw.BooleanField(default=False)


class RateLimitHit(BaseModel):
    """One counted request under a hashed key (never a raw email or address)."""

    key = pw.CharField(max_length=80)
    # Indexed so the retention daemon deletes old rows by range (migration 0005).
    at = UtcDateTimeField(index=True)

    class Meta:
        indexes = ((("key", "at"), False),)


class Session(BaseModel):
    id = IdField(primary_key=True)
    token_hash = pw.CharField(max_length=64, unique=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="sessions")
    created_at = UtcDateTimeField()
    expires_at = UtcDateTimeField(index=True)
    revoked_at = UtcDateTimeField(null=True)


class Purchase(BaseModel):
    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="purchases")
    store = pw.CharField(max_length=16)
    product_id = pw.CharField(max_length=100)
    transaction_id = pw.CharField(max_length=200)
    credits = pw.IntegerField()
    created_at = UtcDateTimeField()
    purchase_time = UtcDateTimeField(null=True)
    # What the store vouched for (core/stores): the quantity, the environment, the verified fields as JSON, the
    # keyed hash of the store transaction (App Store: the original transaction id; Google Play: the purchase
    # token, which itself is never stored), when Play's token was consumed (NULL: not yet, the next
    # RecordPurchase of it consumes it), a refund or revocation, and the store's time of the last refund,
    # revocation or reversal applied (an older one, redelivered or late, changes nothing).
    quantity = pw.IntegerField(default=1)
    environment = pw.CharField(max_length=16, null=True)
    verified = pw.TextField(null=True)
    key_hmac = pw.CharField(max_length=64, null=True, unique=True)
    consumed_at = UtcDateTimeField(null=True)
    revoked_at = UtcDateTimeField(null=True)
    revoke_reason = pw.CharField(max_length=32, null=True)
    store_event_at = UtcDateTimeField(null=True)

    class Meta:
        indexes = ((("store", "transaction_id"), True),)


class SpentReceipt(BaseModel):
    """A store transaction that grants nothing here, by its keyed hash (Purchase.key_hmac): refunded or revoked
    before it was recorded (reason: the store's; "reversed" once the refund was undone), or recorded by an
    account since purged ("purged"), so that its receipt presented again is refused. Names no account and holds
    no store id; `at` is the store's time of the event (or the purge's)."""

    key_hmac = pw.CharField(max_length=64, primary_key=True)
    store = pw.CharField(max_length=16)
    at = UtcDateTimeField()
    reason = pw.CharField(max_length=32)

    class Meta:
        table_name = "spent_receipt"


class CreditEntry(BaseModel):
    """The credit ledger: the balance is the sum of an account's entries."""

    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="credit_entries")
    delta = pw.IntegerField()
    kind = pw.CharField(max_length=16)  # trial | purchase | order | refund
    ref_id = pw.CharField(max_length=32, null=True)
    created_at = UtcDateTimeField()


class TicketState(enum.StrEnum):
    OPEN = "open"  # waiting for staff
    ANSWERED = "answered"  # staff replied; the user's next message opens it again
    CLOSED = "closed"


class Ticket(BaseModel):
    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="tickets")
    key_id = KeyIdField()  # the account's
    subject_sealed = SealedField(column_name="subject")
    subject = sealed("subject_sealed")
    state = pw.CharField(max_length=16, default=TicketState.OPEN)  # TicketState
    request_id = pw.CharField(max_length=64, null=True)
    created_at = UtcDateTimeField(index=True)
    updated_at = UtcDateTimeField()

    class Meta:
        indexes = ((("account", "request_id"), True),)


class TicketMessage(BaseModel):
    id = IdField(primary_key=True)
    ticket = pw.ForeignKeyField(Ticket, on_delete="CASCADE", backref="messages")
    # Position in the ticket (0, 1, ...): the order of messages, whatever the clocks say.
    seq = pw.IntegerField()
    author = pw.CharField(max_length=8)  # user | staff
    staff = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL", backref="ticket_replies")
    key_id = KeyIdField()  # the ticket's (its account's), staff replies included
    body_sealed = SealedField(column_name="body")
    body = sealed("body_sealed")
    created_at = UtcDateTimeField()

    class Meta:
        indexes = ((("ticket", "seq"), True),)


class AuditEvent(BaseModel):
    """Security-relevant events (P20): ids and counts only, never names, emails or image bytes."""

    id = IdField(primary_key=True)
    at = UtcDateTimeField(index=True)
    kind = pw.CharField(max_length=40, index=True)
    actor_id = pw.CharField(max_length=32, null=True, index=True)
    subject_id = pw.CharField(max_length=32, null=True, index=True)
    details = JsonField(default=dict)


class EmailQueue(BaseModel):
    """Emails written in the same transaction as the change that causes them; deleted once sent."""

    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, null=True, on_delete="CASCADE", backref="queued_emails")
    kind = pw.CharField(max_length=32)
    key_id = KeyIdField()  # the recipient's: their account's, waiting-list entry's or invitation's
    to_address_sealed = SealedField(column_name="to_address")
    to_address = sealed("to_address_sealed")
    subject_sealed = SealedField(column_name="subject")
    subject = sealed("subject_sealed")
    body_sealed = SealedField(column_name="body")
    body = sealed("body_sealed")
    created_at = UtcDateTimeField()
    next_attempt_at = UtcDateTimeField(index=True)
    attempts = pw.IntegerField(default=0)


class Photo(BaseModel):
    """A verified upload (P6-P11). The blob id is private: clients only ever see `id`."""

    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="photos")
    key_id = KeyIdField()  # the account's; seals the blob
    blob_id = pw.CharField(max_length=32, unique=True)
    width = pw.IntegerField()
    height = pw.IntegerField()
    size_bytes = pw.IntegerField()
    request_id = pw.CharField(max_length=64, null=True)
    created_at = UtcDateTimeField()
    # Unattached photos expire (P11); cleared when the photo joins a model.
    expires_at = UtcDateTimeField(null=True, index=True)
    # Set by DeletePhoto: hidden at once; the retention daemon purges blob and row.
    deleted_at = UtcDateTimeField(null=True, index=True)
    # The model the photo belongs to (P10); the models issue adds the foreign key.
    model_id = pw.CharField(max_length=32, null=True, index=True)

    class Meta:
        indexes = ((("account", "request_id"), True), (("account", "created_at"), False))


class ModelState(enum.StrEnum):
    """The state of a UserModel; it follows its newest training job (core/jobs/training.py)."""

    QUEUED = "queued"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"
    PENDING_DELETION = "pending_deletion"  # hidden; support can restore it until purge_after (P13)
    PURGING = "purging"  # the retention daemon is deleting it; never restored


class UserModel(BaseModel):
    """A person's image-generation model (P10-P13): one LoRA adapter per version over the shared base."""

    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="models")
    key_id = KeyIdField()  # the account's
    display_name_sealed = SealedField(column_name="display_name")
    display_name = sealed("display_name_sealed")
    state = pw.CharField(max_length=20, index=True)  # ModelState
    progress = pw.FloatField(default=0.0)
    failure_reason = pw.CharField(max_length=64, null=True)
    trigger_token = pw.CharField(max_length=32)
    request_id = pw.CharField(max_length=64, null=True)
    # The request_id of the last RetrainModel: its retry returns the model (migration 0010).
    retrain_request_id = pw.CharField(max_length=64, null=True)
    current_version = pw.IntegerField(null=True)
    created_at = UtcDateTimeField()
    updated_at = UtcDateTimeField()
    # While pending deletion: when, the state to restore, and when it is purged (P13).
    deleted_at = UtcDateTimeField(null=True)
    state_before_delete = pw.CharField(max_length=20, null=True)  # ModelState
    purge_after = UtcDateTimeField(null=True, index=True)

    class Meta:
        table_name = "user_model"
        indexes = ((("account", "request_id"), True), (("account", "created_at"), False))


class JobState(enum.StrEnum):
    """The states of a job of the generic queue (core/jobs/queue.py): TrainingJob's whole state machine.

    The queue writes QUEUED, RUNNING and FAILED into any job table, Order's too (OrderState has the same
    values); SUCCEEDED is TrainingJob's end, CANCELLED is written by the training queue only.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobColumns(BaseModel):
    """The columns of a job table of the job queue (core/jobs/queue.py), which TrainingJob and Order inherit.

    Not a table itself (it is in no migration and not in ALL_MODELS). peewee copies these fields, the id
    included, into each subclass; the subclass adds its other columns and its indexes (the queue's two
    indexes, on (state, next_attempt_at) and (state, lease_expires_at), are in each table's Meta). The
    tables were made by the migrations, so the order peewee lists the fields in does not change them.
    """

    id = IdField(primary_key=True)
    state = pw.CharField(max_length=16)  # JobState; Order: OrderState
    attempts = pw.IntegerField(default=0)
    max_attempts = pw.IntegerField()
    next_attempt_at = UtcDateTimeField()
    lease_owner = pw.CharField(max_length=80, null=True)  # the claim's worker id and token, while leased
    lease_expires_at = UtcDateTimeField(null=True)
    progress = pw.FloatField(default=0.0)
    error = pw.CharField(max_length=64, null=True)
    created_at = UtcDateTimeField()
    updated_at = UtcDateTimeField()
    finished_at = UtcDateTimeField(null=True)


class TrainingJob(JobColumns):
    """The database job queue of the trainers: claimed with a lease, kept alive by heartbeats."""

    model = pw.ForeignKeyField(UserModel, on_delete="CASCADE", backref="jobs")
    model_id: str  # the id behind `model`, which peewee adds; declared for mypy only
    kind = pw.CharField(max_length=16)  # train | retrain

    class Meta:
        indexes = ((("state", "next_attempt_at"), False), (("state", "lease_expires_at"), False))


class ModelVersion(BaseModel):
    """One trained adapter of a model; exactly one per successful job."""

    id = IdField(primary_key=True)
    model = pw.ForeignKeyField(UserModel, on_delete="CASCADE", backref="versions")
    version = pw.IntegerField()
    job = pw.ForeignKeyField(TrainingJob, on_delete="CASCADE", unique=True, backref="version_row")
    key_id = KeyIdField()  # the model's account's; seals the adapter and metadata blobs
    adapter_blob_id = pw.CharField(max_length=32, unique=True)
    metadata_blob_id = pw.CharField(max_length=32, unique=True)
    base_fingerprint = pw.CharField(max_length=64)
    created_at = UtcDateTimeField()

    class Meta:
        indexes = ((("model", "version"), True),)


class ModelEviction(BaseModel):
    """A model version that every Triton replica must drop from its adapter cache (core/jobs/evictions.py).

    Written in the transaction that makes the model unservable (deleted, account deactivated, purge); deleted
    once every configured replica confirmed. It names the model by its random id and version only, with no
    foreign key: it outlives the model's purge, so an unreachable replica is still told later.
    """

    id = IdField(primary_key=True)
    model_id = pw.CharField(max_length=32)
    version = pw.IntegerField()
    # A new random token each time the eviction is requested again: a confirmation of an older request is refused.
    token = pw.CharField(max_length=32)
    requested_at = UtcDateTimeField(index=True)
    confirmed_by = JsonField(default=list)  # the replicas (Triton addresses) that confirmed this request
    attempts = pw.IntegerField(default=0)
    last_error = pw.CharField(max_length=40, null=True)

    class Meta:
        table_name = "model_eviction"
        indexes = ((("model_id", "version"), True),)


class OrderState(enum.StrEnum):
    """QUEUED, RUNNING and FAILED are the job queue's (the same values as JobState's); an order that made at
    least one image ends COMPLETED (core/jobs/orders.py)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Order(JobColumns):
    """An order of generated portraits (P14); also the order workers' job (its JobColumns).

    state: OrderState (queued and running are the job states). Credits are debited in
    the transaction that creates the order and refunded per failed image (CreditEntry, kind order/refund).
    """

    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="orders")
    account_id: str  # the id behind `account`, which peewee adds; declared for mypy only
    key_id = KeyIdField()  # the account's; the order worker seals the images with it
    style_id = pw.CharField(max_length=32)
    count = pw.IntegerField()
    images_total = pw.IntegerField()
    images_done = pw.IntegerField(default=0)
    images_failed = pw.IntegerField(default=0)
    credits_charged = pw.IntegerField()
    credits_refunded = pw.IntegerField(default=0)
    request_id = pw.CharField(max_length=64, null=True)

    class Meta:
        table_name = "photo_order"
        indexes = (
            (("account", "request_id"), True),
            (("account", "created_at"), False),
            (("state", "next_attempt_at"), False),
            (("state", "lease_expires_at"), False),
        )


class OrderImageState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class OrderImage(BaseModel):
    """One image slot of an order, made with the order: the worker fills each slot exactly once.

    The model is referenced by id, not foreign key: purging a model (P13) must not take the user's
    generated photos with it. The seed is fixed at ordering time, so a retried slot gives the same image.
    """

    id = IdField(primary_key=True)
    order = pw.ForeignKeyField(Order, on_delete="CASCADE", backref="images")
    position = pw.IntegerField()
    model_id = pw.CharField(max_length=32, index=True)
    model_version = pw.IntegerField()
    seed = pw.BigIntegerField()
    state = pw.CharField(max_length=16)  # OrderImageState
    error = pw.CharField(max_length=64, null=True)
    updated_at = UtcDateTimeField()

    class Meta:
        table_name = "order_image"
        indexes = ((("order", "position"), True),)


class GeneratedPhotoState(enum.StrEnum):
    AVAILABLE = "available"
    DOWNLOADED = "downloaded"
    REJECTED = "rejected"


class GeneratedPhoto(BaseModel):
    """A generated portrait (P14-P16), readable by its owner only. The blob ids are private.

    state: GeneratedPhotoState. A rejected photo gets `purge_after` (+60 days, P16); a
    deleted one is hidden at once (`deleted_at`) and purged by the retention daemon.
    """

    id = IdField(primary_key=True)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", backref="generated_photos")
    order = pw.ForeignKeyField(Order, on_delete="CASCADE", backref="generated_photos")
    image = pw.ForeignKeyField(OrderImage, on_delete="CASCADE", unique=True, backref="generated")
    key_id = KeyIdField()  # the account's; seals the image and preview blobs
    model_id = pw.CharField(max_length=32)
    blob_id = pw.CharField(max_length=32, unique=True)
    preview_blob_id = pw.CharField(max_length=32, unique=True)
    content_type = pw.CharField(max_length=32)
    size_bytes = pw.IntegerField()
    width = pw.IntegerField()
    height = pw.IntegerField()
    state = pw.CharField(max_length=16)  # GeneratedPhotoState
    created_at = UtcDateTimeField()
    download_time = UtcDateTimeField(null=True)
    reject_time = UtcDateTimeField(null=True)
    purge_after = UtcDateTimeField(null=True, index=True)
    deleted_at = UtcDateTimeField(null=True, index=True)

    class Meta:
        table_name = "generated_photo"
        indexes = ((("account", "created_at"), False), (("order", "created_at"), False))


class MaintenanceStep(BaseModel):
    """A one-off data step that has finished (migration 0009): the reseal of an older install's plaintext blobs
    (core/blobstore/reseal.py) records itself here once a whole pass found nothing left plain."""

    step = pw.CharField(max_length=64, primary_key=True)
    done_at = UtcDateTimeField()

    class Meta:
        table_name = "maintenance_step"


ALL_MODELS: list[type[BaseModel]] = [
    Account,
    KnownEmail,
    WaitlistEntry,
    Invitation,
    SignInCode,
    RateLimitHit,
    Session,
    Purchase,
    SpentReceipt,
    CreditEntry,
    Ticket,
    TicketMessage,
    AuditEvent,
    EmailQueue,
    Photo,
    UserModel,
    TrainingJob,
    ModelVersion,
    ModelEviction,
    Order,
    OrderImage,
    GeneratedPhoto,
    MaintenanceStep,
]
