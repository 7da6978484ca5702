"""Orders (the order workers' queue), their image slots and the generated photos (P14-P16)."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField


def up(migrator, db):
    class Account(Model):
        id = CharField(primary_key=True, max_length=32)

        class Meta:
            database = db
            table_name = "account"

    class Order(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        style_id = CharField(max_length=32)
        count = IntegerField()
        state = CharField(max_length=16)
        images_total = IntegerField()
        images_done = IntegerField(default=0)
        images_failed = IntegerField(default=0)
        credits_charged = IntegerField()
        credits_refunded = IntegerField(default=0)
        request_id = CharField(null=True, max_length=64)
        attempts = IntegerField(default=0)
        max_attempts = IntegerField()
        next_attempt_at = UtcDateTimeField()
        lease_owner = CharField(null=True, max_length=80)
        lease_expires_at = UtcDateTimeField(null=True)
        progress = FloatField(default=0.0)
        error = CharField(null=True, max_length=64)
        created_at = UtcDateTimeField()
        updated_at = UtcDateTimeField()
        finished_at = UtcDateTimeField(null=True)

        class Meta:
            database = db
            table_name = "photo_order"
            indexes = (
                (("account", "request_id"), True),
                (("account", "created_at"), False),
                (("state", "next_attempt_at"), False),
                (("state", "lease_expires_at"), False),
            )

    db.create_tables([Order])

    class OrderImage(Model):
        id = CharField(primary_key=True, max_length=32)
        order = ForeignKeyField(Order, on_delete="CASCADE")
        position = IntegerField()
        model_id = CharField(index=True, max_length=32)
        model_version = IntegerField()
        seed = BigIntegerField()
        state = CharField(max_length=16)
        error = CharField(null=True, max_length=64)
        updated_at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "order_image"
            indexes = ((("order", "position"), True),)

    db.create_tables([OrderImage])

    class GeneratedPhoto(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        order = ForeignKeyField(Order, on_delete="CASCADE")
        image = ForeignKeyField(OrderImage, unique=True, on_delete="CASCADE")
        model_id = CharField(max_length=32)
        blob_id = CharField(unique=True, max_length=32)
        preview_blob_id = CharField(unique=True, max_length=32)
        content_type = CharField(max_length=32)
        size_bytes = IntegerField()
        width = IntegerField()
        height = IntegerField()
        state = CharField(max_length=16)
        created_at = UtcDateTimeField()
        download_time = UtcDateTimeField(null=True)
        reject_time = UtcDateTimeField(null=True)
        purge_after = UtcDateTimeField(index=True, null=True)
        deleted_at = UtcDateTimeField(index=True, null=True)

        class Meta:
            database = db
            table_name = "generated_photo"
            indexes = ((("account", "created_at"), False), (("order", "created_at"), False))

    db.create_tables([GeneratedPhoto])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("generated_photo"))
    migrator.migrate(migrator.drop_table("order_image"))
    migrator.migrate(migrator.drop_table("photo_order"))
