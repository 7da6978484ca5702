"""invitation.revoked_at: set when the inviter's account is deleted (P1: invited by an active user); a revoked invitation stays revoked."""

from peewee import *

from faceharmony.core.db.models import UtcDateTimeField


def up(migrator, db):
    migrator.migrate(migrator.add_column("invitation", "revoked_at", UtcDateTimeField(null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("invitation", "revoked_at"))
