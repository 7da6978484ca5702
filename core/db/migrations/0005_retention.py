"""An index on rate_limit_hit.at, so the retention daemon deletes old rate-limit rows by range, not by scanning the table."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_index("rate_limit_hit", ("at",), False))


def down(migrator, db):
    migrator.migrate(migrator.drop_index("rate_limit_hit", "rate_limit_hit_at"))
