"""Resource ids and secrets: 128-bit random ids (unguessable, P9) and opaque tokens, all from the CSPRNG."""

from __future__ import annotations

import re
import secrets

ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A random 128-bit id as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def is_valid_id(value: str) -> bool:
    # fullmatch: `$` in a pattern also matches before a trailing newline.
    return bool(ID_PATTERN.fullmatch(value))


def new_token() -> str:
    """An opaque 256-bit bearer token."""
    return secrets.token_urlsafe(32)


def new_code(digits: int = 6) -> str:
    """A one-time numeric code, uniformly drawn from the CSPRNG."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"
