"""Personal columns, sealed with their person's data key (issue 12): plaintext in Python, AEAD in the database.

A personal column is a `SealedField` (bytes in the database: the column keeps its name) and a `sealed`
descriptor on the model that reads and writes the plaintext:

    class Account(SealedModel):
        key_id = KeyIdField()
        email_sealed = SealedField(column_name="email")
        email = sealed("email_sealed")

`row.email` opens `email_sealed` with the row's data key (`key_id`), the associated data binding it to
the table, the column and the row's id, so a value copied into another row, column or person's row fails
with CiphertextInvalid. `row.email = "..."` (or `Model.create(email=...)`) keeps the plaintext until
`save()` seals it. A query can therefore never filter on a personal column (look rows up by the keyed HMAC
of the email instead: `Model.email == x` matches nothing), and `Model.update(email="...")` raises TypeError
(SealedField takes sealed bytes only); write through `row.save()` or `seal_value()`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import peewee as pw

from faceharmony.core.keys import aead
from faceharmony.core.keys.keyring import keyring


def KeyIdField(**kwargs: Any) -> pw.CharField:
    """The id of the data key that seals the row's personal columns and blobs (core/keys)."""
    return pw.CharField(max_length=32, index=True, **kwargs)


class SealedField(pw.BlobField):
    """The sealed bytes of a personal column (core/keys/aead.py's format). Refuses anything else, so that
    `Model.update(name="...")` or `Model.insert(email=...)`, which reach the column by its name, raise
    instead of writing the plaintext."""

    def db_value(self, value: Any) -> Any:
        if value is not None and not (
            isinstance(value, (bytes, bytearray, memoryview)) and aead.is_sealed(bytes(value))
        ):
            raise TypeError(
                f"{self.model._meta.table_name}.{self.column_name} takes sealed bytes only: write through"
                " row.save() or seal_value()"
            )
        return super().db_value(value)


def seal_value(model: type[pw.Model], field: SealedField, row_id: str, key_id: str, plaintext: str) -> bytes:
    """The sealed bytes of `plaintext` for `field` of row `row_id` (for update queries and migrations)."""
    table = model._meta.table_name
    return keyring.seal_text(key_id, plaintext, aead.field_aad(table, field.column_name, row_id, key_id))


def open_value(model: type[pw.Model], field: SealedField, row_id: str, key_id: str, sealed_bytes: bytes) -> str:
    table = model._meta.table_name
    return keyring.open_text(key_id, bytes(sealed_bytes), aead.field_aad(table, field.column_name, row_id, key_id))


class sealed:
    """The plaintext view of a SealedField (see the module docstring)."""

    def __init__(self, field_name: str, key_attr: str = "key_id") -> None:
        self.field_name = field_name
        self.key_attr = key_attr
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _field(self, owner: type[pw.Model]) -> SealedField:
        field = owner._meta.fields[self.field_name]
        assert isinstance(field, SealedField)
        return field

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        pending = obj.__dict__.get("_sealed_pending")
        if pending and self.name in pending:
            return pending[self.name]
        raw = obj.__data__.get(self.field_name)
        if raw is None:
            return None
        opened = obj.__dict__.setdefault("_sealed_opened", {})
        hit = opened.get(self.name)
        if hit is not None and hit[0] is raw:
            return hit[1]
        value = open_value(type(obj), self._field(type(obj)), obj.id, getattr(obj, self.key_attr), raw)
        opened[self.name] = (raw, value)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__.setdefault("_sealed_pending", {})[self.name] = value

    def seal_pending(self, obj: Any) -> None:
        pending = obj.__dict__.get("_sealed_pending")
        if not pending or self.name not in pending:
            return
        value = pending.pop(self.name)
        if value is None:
            setattr(obj, self.field_name, None)
            return
        if not obj.id or not getattr(obj, self.key_attr):
            raise ValueError(f"{type(obj).__name__}.{self.name}: set the row's id and {self.key_attr} before saving")
        setattr(
            obj,
            self.field_name,
            seal_value(type(obj), self._field(type(obj)), obj.id, getattr(obj, self.key_attr), value),
        )


def sealed_columns(model: type) -> list[sealed]:
    return [v for c in model.__mro__ for v in vars(c).values() if isinstance(v, sealed)]


class SealedSaveMixin:
    """Seals the pending plaintext of every `sealed` column before the row is written."""

    def save(self, *args: Any, **kwargs: Any) -> Any:
        for column in sealed_columns(type(self)):
            column.seal_pending(self)
        return super().save(*args, **kwargs)  # type: ignore[misc]


def open_all(value: Any, depth: int = 3) -> None:
    """Opens every sealed column of the rows in `value` (a row, or rows in lists, tuples, dicts and dataclasses,
    `depth` levels down), so that what the caller then reads costs no key lookup: the server runs this in its
    database threads, before a result reaches the event loop, where an unwrap (a key-store or KMS call) would
    block every other call."""
    if depth < 0 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return
    if isinstance(value, pw.Model):
        for column in sealed_columns(type(value)):
            getattr(value, column.name)
        return
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name) for f in dataclasses.fields(value)]
    else:
        return
    for item in items:
        open_all(item, depth - 1)
