"""Keyed hashing: the email HMAC kept after purge (P5), and the hashes under which codes and tokens are stored."""

from __future__ import annotations

import hashlib
import hmac
import uuid


class Hasher:
    """HMAC-SHA256 under the server secret, one domain-separated purpose per method."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the server secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def email(self, normalized_email: str) -> str:
        return self._mac("email", normalized_email)

    def code(self, code_id: str, code: str) -> str:
        return self._mac("sign-in-code", f"{code_id}:{code}")

    def token(self, token: str) -> str:
        return self._mac("token", token)

    def store_key(self, store: str, value: str) -> str:
        """A store transaction's or purchase token's key (core/stores): what is kept instead of a token."""
        return self._mac("store-transaction", f"{store}:{value}")

    def store_account(self, account_id: str) -> str:
        """The account's token for the stores (appAccountToken, Play's obfuscated account id): a UUID, as
        StoreKit requires, that no one without the server secret can link to the account id."""
        return str(uuid.UUID(hex=self._mac("store-account", account_id)[:32], version=4))


def equal(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
