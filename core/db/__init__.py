"""The database: peewee models, connection (SQLite with WAL by default, pooled PostgreSQL in production), write transactions and migrations."""
