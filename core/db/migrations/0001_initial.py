"""Initial schema: accounts, waiting list, invitations, sign-in codes, sessions, purchases, credits, tickets, audit log, email queue.

A frozen copy of the models as they were; generated with playhouse.migrations.template."""

from peewee import *

from faceharmony.core.db.models import JsonField, UtcDateTimeField


def up(migrator, db):
    class Account(Model):
        id = CharField(primary_key=True, max_length=32)
        email = CharField(unique=True, max_length=254)
        email_hmac = CharField(index=True, max_length=64)
        name = CharField(max_length=100)
        role = CharField(max_length=16, default="user")
        state = CharField(max_length=16, default="active")
        is_16_or_older = BooleanField()
        free_trial_granted = BooleanField(default=False)
        invited_by = ForeignKeyField("self", null=True, on_delete="SET NULL")
        created_at = UtcDateTimeField()
        updated_at = UtcDateTimeField()
        deleted_at = UtcDateTimeField(null=True)
        purge_after = UtcDateTimeField(index=True, null=True)

        class Meta:
            database = db
            table_name = "account"

    db.create_tables([Account])

    class AuditEvent(Model):
        id = CharField(primary_key=True, max_length=32)
        at = UtcDateTimeField(index=True)
        kind = CharField(index=True, max_length=40)
        actor_id = CharField(index=True, null=True, max_length=32)
        subject_id = CharField(index=True, null=True, max_length=32)
        details = JsonField(default=dict)

        class Meta:
            database = db
            table_name = "audit_event"

    db.create_tables([AuditEvent])

    class CreditEntry(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        delta = IntegerField()
        kind = CharField(max_length=16)
        ref_id = CharField(null=True, max_length=32)
        created_at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "credit_entry"

    db.create_tables([CreditEntry])

    class EmailQueue(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, null=True, on_delete="CASCADE")
        kind = CharField(max_length=32)
        to_address = CharField(max_length=254)
        subject = CharField(max_length=200)
        body = TextField()
        created_at = UtcDateTimeField()
        next_attempt_at = UtcDateTimeField(index=True)
        attempts = IntegerField(default=0)

        class Meta:
            database = db
            table_name = "email_queue"

    db.create_tables([EmailQueue])

    class Invitation(Model):
        id = CharField(primary_key=True, max_length=32)
        token_hash = CharField(unique=True, max_length=64)
        inviter = ForeignKeyField(Account, on_delete="CASCADE")
        email = CharField(max_length=254)
        email_hmac = CharField(index=True, max_length=64)
        name = CharField(max_length=100)
        created_at = UtcDateTimeField(index=True)
        expires_at = UtcDateTimeField(index=True)
        accepted_at = UtcDateTimeField(null=True)
        account = ForeignKeyField(Account, null=True, on_delete="CASCADE")

        class Meta:
            database = db
            table_name = "invitation"

    db.create_tables([Invitation])

    class KnownEmail(Model):
        email_hmac = CharField(primary_key=True, max_length=64)
        first_seen = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "known_email"

    db.create_tables([KnownEmail])

    class Purchase(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        store = CharField(max_length=16)
        product_id = CharField(max_length=100)
        transaction_id = CharField(max_length=200)
        credits = IntegerField()
        created_at = UtcDateTimeField()
        purchase_time = UtcDateTimeField(null=True)

        class Meta:
            database = db
            table_name = "purchase"
            indexes = ((("store", "transaction_id"), True),)

    db.create_tables([Purchase])

    class RateLimitHit(Model):
        key = CharField(max_length=80)
        at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "rate_limit_hit"
            indexes = ((("key", "at"), False),)

    db.create_tables([RateLimitHit])

    class Session(Model):
        id = CharField(primary_key=True, max_length=32)
        token_hash = CharField(unique=True, max_length=64)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        created_at = UtcDateTimeField()
        expires_at = UtcDateTimeField(index=True)
        revoked_at = UtcDateTimeField(null=True)

        class Meta:
            database = db
            table_name = "session"

    db.create_tables([Session])

    class SignInCode(Model):
        id = CharField(primary_key=True, max_length=32)
        email_hmac = CharField(index=True, max_length=64)
        code_hash = CharField(max_length=64)
        created_at = UtcDateTimeField()
        expires_at = UtcDateTimeField(index=True)
        attempts = IntegerField(default=0)
        consumed_at = UtcDateTimeField(null=True)
        superseded = BooleanField(default=False)

        class Meta:
            database = db
            table_name = "sign_in_code"

    db.create_tables([SignInCode])

    class Ticket(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        subject = CharField(max_length=200)
        state = CharField(max_length=16, default="open")
        request_id = CharField(null=True, max_length=64)
        created_at = UtcDateTimeField(index=True)
        updated_at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "ticket"
            indexes = ((("account", "request_id"), True),)

    db.create_tables([Ticket])

    class TicketMessage(Model):
        id = CharField(primary_key=True, max_length=32)
        ticket = ForeignKeyField(Ticket, on_delete="CASCADE")
        seq = IntegerField()
        author = CharField(max_length=8)
        staff = ForeignKeyField(Account, null=True, on_delete="SET NULL")
        body = TextField()
        created_at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "ticket_message"
            indexes = ((("ticket", "seq"), True),)

    db.create_tables([TicketMessage])

    class WaitlistEntry(Model):
        id = CharField(primary_key=True, max_length=32)
        email = CharField(unique=True, max_length=254)
        email_hmac = CharField(index=True, max_length=64)
        name = CharField(max_length=100)
        note = TextField(default="")
        is_16_or_older = BooleanField()
        state = CharField(max_length=16, default="pending")
        created_at = UtcDateTimeField(index=True)
        approved_at = UtcDateTimeField(null=True)
        approved_by = ForeignKeyField(Account, null=True, on_delete="SET NULL")
        account = ForeignKeyField(Account, null=True, on_delete="CASCADE")

        class Meta:
            database = db
            table_name = "waitlist_entry"

    db.create_tables([WaitlistEntry])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("waitlist_entry"))
    migrator.migrate(migrator.drop_table("ticket_message"))
    migrator.migrate(migrator.drop_table("ticket"))
    migrator.migrate(migrator.drop_table("sign_in_code"))
    migrator.migrate(migrator.drop_table("session"))
    migrator.migrate(migrator.drop_table("rate_limit_hit"))
    migrator.migrate(migrator.drop_table("purchase"))
    migrator.migrate(migrator.drop_table("known_email"))
    migrator.migrate(migrator.drop_table("invitation"))
    migrator.migrate(migrator.drop_table("email_queue"))
    migrator.migrate(migrator.drop_table("credit_entry"))
    migrator.migrate(migrator.drop_table("audit_event"))
    migrator.migrate(migrator.drop_table("account"))
