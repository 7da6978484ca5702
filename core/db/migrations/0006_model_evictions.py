"""model_eviction: the model versions every Triton replica must drop from its adapter cache (deleted models, deactivated and purged accounts); no foreign key, so a record outlives the model's purge.

The versions already unservable when it runs (models pending deletion or purging, accounts not active) get a
record at once: before it, only an in-memory sweep evicted models pending deletion, and deactivated accounts not at all.
"""

import datetime

from peewee import *

from faceharmony.core import ids
from faceharmony.core.db.models import JsonField, UtcDateTimeField


def up(migrator, db):
    class ModelEviction(Model):
        id = CharField(primary_key=True, max_length=32)
        model_id = CharField(max_length=32)
        version = IntegerField()
        token = CharField(max_length=32)
        requested_at = UtcDateTimeField(index=True)
        confirmed_by = JsonField(default=list)
        attempts = IntegerField(default=0)
        last_error = CharField(null=True, max_length=40)

        class Meta:
            database = db
            table_name = "model_eviction"
            indexes = ((("model_id", "version"), True),)

    db.create_tables([ModelEviction])
    unservable = db.execute_sql(
        "SELECT v.model_id, v.version FROM model_version v JOIN user_model m ON m.id = v.model_id"
        " JOIN account a ON a.id = m.account_id"
        " WHERE m.state IN ('pending_deletion', 'purging') OR a.state <> 'active' ORDER BY v.model_id, v.version"
    ).fetchall()
    now = datetime.datetime.now(datetime.UTC)
    rows = [
        {
            "id": ids.new_id(),
            "model_id": m,
            "version": v,
            "token": ids.new_id(),
            "requested_at": now,
            "confirmed_by": [],
            "attempts": 0,
        }
        for m, v in unservable
    ]
    for i in range(0, len(rows), 500):
        ModelEviction.insert_many(rows[i : i + 500]).execute()


def down(migrator, db):
    migrator.migrate(migrator.drop_table("model_eviction"))
