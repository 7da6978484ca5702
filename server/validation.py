"""Input rules shared by the services: emails, names, free text, ids, page sizes and page tokens. Each failure is an ApiError with a stable reason."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import unicodedata

from faceharmony.core import ids
from faceharmony.server.errors import ApiError, invalid

MAX_EMAIL = 254
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def normalize_email(raw: str) -> str:
    """Trimmed and lower-cased; ASCII addresses only."""
    value = raw.strip().lower()
    if not value or len(value) > MAX_EMAIL or not _EMAIL.match(value) or ".." in value.split("@")[0]:
        raise invalid("INVALID_EMAIL", "not a valid email address")
    return value


def _has_control(text: str, allow_newlines: bool) -> bool:
    for ch in text:
        if allow_newlines and ch in "\n\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") or ch in "\u2028\u2029":
            return True
    return False


def clean_text(raw: str, *, reason: str, what: str, max_len: int, required: bool, multiline: bool) -> str:
    value = unicodedata.normalize("NFC", raw).strip()
    if not multiline:
        value = " ".join(value.split())
    if required and not value:
        raise invalid(reason, f"{what} is required")
    if len(value) > max_len:
        raise invalid(reason, f"{what} is longer than {max_len} characters")
    if _has_control(value, allow_newlines=multiline):
        raise invalid(reason, f"{what} contains control characters")
    return value


def clean_name(raw: str) -> str:
    return clean_text(raw, reason="INVALID_NAME", what="name", max_len=100, required=True, multiline=False)


def require_id(raw: str, what: str = "id") -> str:
    if not ids.is_valid_id(raw):
        raise invalid("INVALID_ID", f"{what} is not a valid id")
    return raw


def optional_request_id(raw: str) -> str | None:
    if not raw:
        return None
    if len(raw) > 64 or not re.fullmatch(r"[A-Za-z0-9._:-]+", raw):
        raise invalid("INVALID_REQUEST", "request_id must be 1-64 characters of [A-Za-z0-9._:-]")
    return raw


def state_filter(raw: int, states: dict[int, str], what: str = "state") -> str | None:
    """An optional enum filter: UNSPECIFIED (0) means none; an unknown value is refused, not ignored."""
    if raw == 0:
        return None
    if raw not in states:
        raise invalid("INVALID_REQUEST", f"{what} is not a known value")
    return states[raw]


def page_size(raw: int) -> int:
    if raw < 0:
        raise invalid("INVALID_PAGE_SIZE", "page_size must not be negative")
    return min(raw or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(created_at: dt.datetime, row_id: str) -> str:
    payload = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[dt.datetime, str] | None:
    if not token:
        return None
    try:
        if len(token) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, row_id = json.loads(raw)
        parsed = dt.datetime.fromisoformat(when)
        if parsed.tzinfo is None or not ids.is_valid_id(row_id):
            raise ValueError
        # In UTC, as stored: an offset that pushes the time past year 1 or 9999 is not a token we issued.
        return parsed.astimezone(dt.UTC), row_id
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise invalid("INVALID_PAGE_TOKEN", "page_token is not one this server issued") from None


def paginate(query, created_field, id_field, size_raw: int, token: str):
    """Newest first, keyset pagination on (created, id). Returns (rows, next_page_token)."""
    size = page_size(size_raw)
    after = decode_page_token(token)
    if after is not None:
        when, row_id = after
        query = query.where((created_field < when) | ((created_field == when) & (id_field < row_id)))
    rows = list(query.order_by(created_field.desc(), id_field.desc()).limit(size + 1))
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_token = encode_page_token(getattr(last, created_field.name), getattr(last, id_field.name))
    return rows, next_token


__all__ = ["ApiError"]
