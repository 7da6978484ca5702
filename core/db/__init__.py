"""The database: peewee models with their state enums, connection (SQLite with WAL by default, pooled PostgreSQL in production), write transactions, the lock order, migrations and the audit log."""
