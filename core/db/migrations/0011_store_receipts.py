"""Store receipts (core/stores): what the App Store or Google Play vouched for with each purchase, its refund or
revocation, and revoked_transaction (the keyed hash of a revoked purchase never recorded, so that it grants
nothing later). Purchases recorded before this were not verified: they keep quantity 1 and no environment."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("purchase", "quantity", IntegerField(default=1)),
        migrator.add_column("purchase", "environment", CharField(max_length=16, null=True)),
        migrator.add_column("purchase", "verified", TextField(null=True)),
        migrator.add_column("purchase", "token_hmac", CharField(max_length=64, null=True)),
        migrator.add_column("purchase", "consumed_at", UtcDateTimeField(null=True)),
        migrator.add_column("purchase", "revoked_at", UtcDateTimeField(null=True)),
        migrator.add_column("purchase", "revoke_reason", CharField(max_length=32, null=True)),
        migrator.add_index("purchase", ("token_hmac",), True),
    )

    class RevokedTransaction(Model):
        key_hmac = CharField(primary_key=True, max_length=64)
        store = CharField(max_length=16)
        revoked_at = UtcDateTimeField()
        reason = CharField(max_length=32)

        class Meta:
            database = db
            table_name = "revoked_transaction"

    db.create_tables([RevokedTransaction])


def down(migrator, db):
    migrator.migrate(
        migrator.drop_table("revoked_transaction"),
        migrator.drop_index("purchase", "purchase_token_hmac"),
        *(
            migrator.drop_column("purchase", name)
            for name in (
                "quantity",
                "environment",
                "verified",
                "token_hmac",
                "consumed_at",
                "revoked_at",
                "revoke_reason",
            )
        ),
    )
