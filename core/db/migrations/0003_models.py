"""Personal models, their training jobs (the trainers' queue) and adapter versions (P10-P13)."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField


def up(migrator, db):
    class Account(Model):
        id = CharField(primary_key=True, max_length=32)

        class Meta:
            database = db
            table_name = "account"

    class UserModel(Model):
        id = CharField(primary_key=True, max_length=32)
        account = ForeignKeyField(Account, on_delete="CASCADE")
        display_name = CharField(max_length=100)
        state = CharField(index=True, max_length=20)
        progress = FloatField(default=0.0)
        failure_reason = CharField(null=True, max_length=64)
        trigger_token = CharField(max_length=32)
        request_id = CharField(null=True, max_length=64)
        current_version = IntegerField(null=True)
        created_at = UtcDateTimeField()
        updated_at = UtcDateTimeField()
        deleted_at = UtcDateTimeField(null=True)
        state_before_delete = CharField(null=True, max_length=20)
        purge_after = UtcDateTimeField(index=True, null=True)

        class Meta:
            database = db
            table_name = "user_model"
            indexes = ((("account", "request_id"), True), (("account", "created_at"), False))

    db.create_tables([UserModel])

    class TrainingJob(Model):
        id = CharField(primary_key=True, max_length=32)
        model = ForeignKeyField(UserModel, on_delete="CASCADE")
        kind = CharField(max_length=16)
        state = CharField(max_length=16)
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
            table_name = "training_job"
            indexes = ((("state", "next_attempt_at"), False), (("state", "lease_expires_at"), False))

    db.create_tables([TrainingJob])

    class ModelVersion(Model):
        id = CharField(primary_key=True, max_length=32)
        model = ForeignKeyField(UserModel, on_delete="CASCADE")
        version = IntegerField()
        job = ForeignKeyField(TrainingJob, unique=True, on_delete="CASCADE")
        adapter_blob_id = CharField(unique=True, max_length=32)
        metadata_blob_id = CharField(unique=True, max_length=32)
        base_fingerprint = CharField(max_length=64)
        created_at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "model_version"
            indexes = ((("model", "version"), True),)

    db.create_tables([ModelVersion])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("model_version"))
    migrator.migrate(migrator.drop_table("training_job"))
    migrator.migrate(migrator.drop_table("user_model"))
