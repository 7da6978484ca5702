"""user_model.retrain_request_id: the request_id of the model's last RetrainModel, so that a retry of that call
returns the model instead of being refused as MODEL_BUSY (the client cannot tell a lost reply from a refusal)."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("user_model", "retrain_request_id", CharField(max_length=64, null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("user_model", "retrain_request_id"))
