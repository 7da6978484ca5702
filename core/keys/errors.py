"""The failures of the key layer, each with the stable reason the API reports (server/errors.py maps them)."""

from __future__ import annotations


class KeysError(Exception):
    """Base: `reason` is the stable machine-readable reason of the gRPC status."""

    reason = "KEYS_ERROR"


class KeysUnavailable(KeysError):
    """The key-encryption key (local folder or Cloud KMS) or the key store cannot be reached now: UNAVAILABLE."""

    reason = "KEYS_UNAVAILABLE"


class KekMissing(KeysUnavailable):
    """No usable key-encryption key although data keys exist (a lost or wrong KEK folder, a KMS key without
    an enabled version): the process refuses to start rather than make a new KEK and lose every key."""

    reason = "KEK_MISSING"


class CiphertextInvalid(KeysError):
    """A ciphertext that does not open: corrupt, truncated, moved to another row or sealed with another
    person's key. Never returned as garbage: DATA_LOSS."""

    reason = "CIPHERTEXT_INVALID"


class KeyShredded(KeysError):
    """The person's data key was deleted (the purge): what it sealed can never be read again."""

    reason = "KEY_SHREDDED"
