"""Photos: verified uploads, their private blob ids, expiry of unattached photos (P6-P11)."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField


def up(migrator, db):
    class Account(Model):
        id = CharField(primary_key=True, max_length=32)

        class Meta:
            database = db
            table_name = "account"

    class Photo(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        blob_id = CharField(unique=True, max_length=32)
        width = IntegerField()
        height = IntegerField()
        size_bytes = IntegerField()
        request_id = CharField(null=True, max_length=64)
        created_at = UtcDateTimeField()
        expires_at = UtcDateTimeField(index=True, null=True)
        deleted_at = UtcDateTimeField(index=True, null=True)
        model_id = CharField(index=True, null=True, max_length=32)

        class Meta:
            database = db
            table_name = "photo"
            indexes = ((("account", "request_id"), True), (("account", "created_at"), False))

    db.create_tables([Photo])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("photo"))
