"""The production KEK: a Cloud KMS symmetric CryptoKey (ENCRYPT_DECRYPT), whose versions are the KEK versions.

* wrap: Encrypt on the CryptoKey (KMS uses its primary version) with the wrap's associated data; the answer
  names the version used, which the key store keeps beside the wrapped key.
* unwrap: Decrypt on the CryptoKey (the ciphertext names its version). A version that is no longer enabled
  (destroyed: DESTROY_SCHEDULED, then DESTROYED) fails with FAILED_PRECONDITION: KekMissing. A ciphertext
  that does not open (corrupt, other associated data, another key): INVALID_ARGUMENT: CiphertextInvalid.
* versions: the ENABLED versions, oldest first; the primary is the CryptoKey's.
* rotate: CreateCryptoKeyVersion, then UpdateCryptoKeyPrimaryVersion to it.
* destroy: DestroyCryptoKeyVersion (never the primary). KMS then keeps the version DESTROY_SCHEDULED for the
  key's `destroy_scheduled_duration` (30 days by default, at least 1 day: set it when the key is made) before
  its material is gone; it cannot be used (nor restored by this code) meanwhile.

Every call has a bounded deadline (`timeout_seconds`, 10 s by default, retries on UNAVAILABLE and
DEADLINE_EXCEEDED included, by the client's own retry); a KMS that cannot be reached, refuses us or does not
answer in time raises KeysUnavailable. Requests and answers carry CRC32C checksums (KMS's integrity fields):
a mismatch is reported as KeysUnavailable (corrupted in transit; try again), never as a wrong key.
Messages name only status codes and resource names, never key material.

Permissions on the key: every process wraps and unwraps (roles/cloudkms.cryptoKeyEncrypterDecrypter; the
start-up check needs nothing more). The process that rotates (the retention daemon) also needs
cloudkms.cryptoKeys.get and .update, cloudkms.cryptoKeyVersions.list, .get, .create and .destroy (a custom
role, or roles/cloudkms.admin on this key only).
"""

from __future__ import annotations

import datetime as dt
import os
import time

import google_crc32c
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.auth import exceptions as auth_exceptions
from google.cloud import kms_v1

from faceharmony.core.keys.errors import CiphertextInvalid, KekMissing, KeysUnavailable
from faceharmony.core.keys.kek import KekVersion

State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
SETTING = "FACEHARMONY_KMS_KEY_NAME"
_PROBE_AAD = b"fh1\x00kek-probe"


def _crc(data: bytes) -> int:
    return google_crc32c.value(data)


def _to_datetime(value) -> dt.datetime:
    if value is None:
        return dt.datetime.fromtimestamp(0, dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class CloudKmsKek:
    """KekProvider over a Cloud KMS CryptoKey (`projects/P/locations/L/keyRings/R/cryptoKeys/K`). Thread-safe."""

    def __init__(
        self,
        client: kms_v1.KeyManagementServiceClient,
        key_name: str,
        *,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not key_name:
            raise KekMissing(f"no Cloud KMS key configured ({SETTING})")
        self.client = client
        self.key_name = key_name
        self.timeout_seconds = float(timeout_seconds)
        self._retry = gretry.Retry(
            predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded),
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=self.timeout_seconds,
        )

    @classmethod
    def from_settings(cls, settings) -> CloudKmsKek:
        """Google's client: to `kms_endpoint` over plaintext gRPC when set (a local server speaking KMS's
        protocol, as the Vision verifier does for its endpoint: no credentials are looked up), else the public
        endpoint with Application Default Credentials."""
        try:
            if settings.kms_endpoint:
                import grpc
                from google.cloud.kms_v1.services.key_management_service.transports import (
                    KeyManagementServiceGrpcTransport,
                )

                channel = grpc.insecure_channel(settings.kms_endpoint)
                client = kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))
            else:
                client = kms_v1.KeyManagementServiceClient()
        except Exception as exc:  # noqa: BLE001 - e.g. google.auth DefaultCredentialsError: no client at all
            raise KeysUnavailable(f"Cloud KMS client could not be created ({type(exc).__name__})") from None
        return cls(client, settings.kms_key_name)

    def close(self) -> None:
        self.client.transport.close()

    # -- calls

    def _call(self, method: str, *, retry: bool = True, **request):
        try:
            return getattr(self.client, method)(
                request=request, retry=self._retry if retry else None, timeout=self.timeout_seconds
            )
        except (gexc.FailedPrecondition, gexc.InvalidArgument):
            raise  # the caller knows what they mean
        except gexc.NotFound:
            raise KekMissing(
                f"Cloud KMS: {self.key_name} (or one of its versions) does not exist; check {SETTING}"
            ) from None
        except (gexc.PermissionDenied, gexc.Unauthenticated) as exc:
            raise KeysUnavailable(
                f"Cloud KMS refused {method} on {self.key_name} ({type(exc).__name__}: no permission, or the key"
                f" does not exist; check {SETTING} and the service account's roles)"
            ) from None
        except gexc.RetryError:
            raise KeysUnavailable(
                f"Cloud KMS: {method} did not succeed within {self.timeout_seconds:g} s (unreachable)"
            ) from None
        except gexc.GoogleAPIError as exc:  # UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, ...
            raise KeysUnavailable(f"Cloud KMS: {method} failed ({type(exc).__name__})") from None
        except auth_exceptions.GoogleAuthError as exc:
            raise KeysUnavailable(f"Cloud KMS credentials unusable ({type(exc).__name__})") from None

    def _crypto_key(self) -> kms_v1.CryptoKey:
        return self._call("get_crypto_key", name=self.key_name)

    def _version_id(self, version: str) -> str:
        prefix = f"{self.key_name}/cryptoKeyVersions/"
        if not version.startswith(prefix) or not version[len(prefix) :].isdigit():
            raise KekMissing(f"{version!r} is not a version of the Cloud KMS key {self.key_name} ({SETTING})")
        return version[len(prefix) :]

    # -- KekProvider

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[bytes, str]:
        try:
            response = self._call(
                "encrypt",
                name=self.key_name,
                plaintext=plaintext,
                additional_authenticated_data=aad,
                plaintext_crc32c=_crc(plaintext),
                additional_authenticated_data_crc32c=_crc(aad),
            )
        except gexc.FailedPrecondition:
            raise KekMissing(f"Cloud KMS key {self.key_name} has no enabled primary version") from None
        except gexc.InvalidArgument as exc:
            raise KeysUnavailable(f"Cloud KMS refused the encrypt request ({type(exc).__name__})") from None
        if (
            not response.verified_plaintext_crc32c
            or not response.verified_additional_authenticated_data_crc32c
            or response.ciphertext_crc32c != _crc(response.ciphertext)
        ):
            raise KeysUnavailable("Cloud KMS encrypt: integrity check failed (corrupted in transit)")
        self._version_id(response.name)
        return bytes(response.ciphertext), response.name

    def unwrap(self, ciphertext: bytes, aad: bytes, version: str) -> bytes:
        self._version_id(version)  # a version of another key can never open here
        try:
            response = self._call(
                "decrypt",
                name=self.key_name,
                ciphertext=ciphertext,
                additional_authenticated_data=aad,
                ciphertext_crc32c=_crc(ciphertext),
                additional_authenticated_data_crc32c=_crc(aad),
            )
        except gexc.FailedPrecondition:
            raise KekMissing(f"Cloud KMS version {version} is not enabled (destroyed)") from None
        except gexc.InvalidArgument:
            raise CiphertextInvalid("a wrapped data key does not open with its Cloud KMS key") from None
        if response.plaintext_crc32c != _crc(response.plaintext):
            raise KeysUnavailable("Cloud KMS decrypt: integrity check failed (corrupted in transit)")
        return bytes(response.plaintext)

    def versions(self) -> list[KekVersion]:
        primary = self._crypto_key().primary.name
        pager = self._call("list_crypto_key_versions", parent=self.key_name, filter="state=ENABLED")
        try:
            found = [v for v in pager if v.state == State.ENABLED]
        except gexc.GoogleAPIError as exc:  # a later page
            raise KeysUnavailable(f"Cloud KMS: listing versions failed ({type(exc).__name__})") from None
        found.sort(key=lambda v: (_to_datetime(v.create_time), int(v.name.rsplit("/", 1)[1])))
        return [KekVersion(v.name, _to_datetime(v.create_time), primary=v.name == primary) for v in found]

    def rotate(self) -> KekVersion:
        # Not retried: a retried create could make two versions (harmless, but pointless).
        version = self._call("create_crypto_key_version", retry=False, parent=self.key_name, crypto_key_version={})
        deadline = time.monotonic() + self.timeout_seconds
        while version.state == State.PENDING_GENERATION and time.monotonic() < deadline:  # HSM keys
            time.sleep(0.2)
            version = self._call("get_crypto_key_version", name=version.name)
        if version.state != State.ENABLED:
            raise KeysUnavailable(f"Cloud KMS: new version {version.name} is {State(version.state).name}, not enabled")
        try:
            self._call(
                "update_crypto_key_primary_version",
                name=self.key_name,
                crypto_key_version_id=self._version_id(version.name),
            )
        except gexc.FailedPrecondition as exc:
            raise KeysUnavailable(f"Cloud KMS: could not make {version.name} primary ({type(exc).__name__})") from None
        return KekVersion(version.name, _to_datetime(version.create_time), primary=True)

    def destroy(self, version: str) -> None:
        self._version_id(version)
        if version == self._crypto_key().primary.name:
            raise ValueError("the primary KEK version cannot be destroyed")
        try:
            self._call("destroy_crypto_key_version", name=version)
        except gexc.FailedPrecondition:
            # Already destroyed (or scheduled): idempotent; anything else is a real refusal.
            state = self._call("get_crypto_key_version", name=version).state
            if state not in (State.DESTROY_SCHEDULED, State.DESTROYED):
                raise KeysUnavailable(f"Cloud KMS refused to destroy {version} (state {State(state).name})") from None
        except KekMissing:
            pass  # a version that does not exist is as destroyed as can be

    def ensure(self, create: bool) -> None:
        """The key exists, has an enabled primary version, and this process may use it: one wrap and unwrap of
        a random probe (what every process needs: roles/cloudkms.cryptoKeyEncrypterDecrypter; no viewer
        permission). Nothing is ever created in KMS (`create` is for a local KEK): the key and its first
        version are made by the operator."""
        probe = os.urandom(32)
        ciphertext, version = self.wrap(probe, _PROBE_AAD)
        if self.unwrap(ciphertext, _PROBE_AAD, version) != probe:
            raise KekMissing(f"Cloud KMS key {self.key_name} does not decrypt what it encrypted ({SETTING})")
