"""maintenance_step: one row per one-off data step that has finished (the reseal of an older install's plaintext
blobs, core/blobstore/reseal.py), so that no later start runs it again."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField


def _table(db):
    class MaintenanceStep(Model):
        step = CharField(max_length=64, primary_key=True)
        done_at = UtcDateTimeField()

        class Meta:
            database = db
            table_name = "maintenance_step"

    return MaintenanceStep


def up(migrator, db):
    db.create_tables([_table(db)])


def down(migrator, db):
    db.drop_tables([_table(db)])
