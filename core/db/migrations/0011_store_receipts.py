"""Store receipts (core/stores): what the App Store or Google Play vouched for with each purchase, its refund or
revocation, and spent_receipt (the keyed hash of a store transaction that grants nothing here: refunded before it
was recorded, or recorded by an account since purged). Purchases recorded before this were not verified: they
keep quantity 1 and no environment or key."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField

COLUMNS = (
    "quantity",
    "environment",
    "verified",
    "key_hmac",
    "consumed_at",
    "revoked_at",
    "revoke_reason",
    "store_event_at",
)


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("purchase", "quantity", IntegerField(default=1)),
        migrator.add_column("purchase", "environment", CharField(max_length=16, null=True)),
        migrator.add_column("purchase", "verified", TextField(null=True)),
        migrator.add_column("purchase", "key_hmac", CharField(max_length=64, null=True)),
        migrator.add_column("purchase", "consumed_at", UtcDateTimeField(null=True)),
        migrator.add_column("purchase", "revoked_at", UtcDateTimeField(null=True)),
        migrator.add_column("purchase", "revoke_reason", CharField(max_length=32, null=True)),
        migrator.add_column("purchase", "store_event_at", UtcDateTimeField(null=True)),
        migrator.add_index("purchase", ("key_hmac",), True),
    )

    class SpentReceipt(Model):
        key_hmac = CharField(primary_key=True, max_length=64)
        store = CharField(max_length=16)
        at = UtcDateTimeField()
        reason = CharField(max_length=32)

        class Meta:
            database = db
            table_name = "spent_receipt"

    db.create_tables([SpentReceipt])


def down(migrator, db):
    migrator.migrate(
        migrator.drop_table("spent_receipt"),
        migrator.drop_index("purchase", "purchase_key_hmac"),
        *(migrator.drop_column("purchase", name) for name in COLUMNS),
    )
