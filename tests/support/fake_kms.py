"""A stand-in for Google Cloud KMS: a real gRPC server on 127.0.0.1 speaking ``google.cloud.kms.v1.KeyManagementService``.

Messages are (de)serialised with the proto-plus types of ``google-cloud-kms`` itself, so Google's real client
talks to it unchanged over ``KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(fake.address))``
(see ``kms_client``). The methods the KEK provider uses are served, with KMS's behaviour where it matters:

- Encrypt (name: a CryptoKey, its primary is used, or a CryptoKeyVersion): real AES-256-GCM, one secret per
  version; the ciphertext embeds the version that made it; the answer names that version; CRC32C fields are
  checked (a mismatch: INVALID_ARGUMENT) and answered (``verified_*``, ``ciphertext_crc32c``).
- Decrypt (name: the CryptoKey): the version is read from the ciphertext; wrong associated data, a corrupt
  ciphertext or one of another key: INVALID_ARGUMENT; a version that is not ENABLED (destroyed):
  FAILED_PRECONDITION.
- GetCryptoKey (with its ``primary``), GetCryptoKeyVersion, ListCryptoKeyVersions (pages; ``filter`` of the
  form ``state=ENABLED``), CreateCryptoKeyVersion (ENABLED, not primary), UpdateCryptoKeyPrimaryVersion
  (the version must be ENABLED), DestroyCryptoKeyVersion (ENABLED or DISABLED -> DESTROY_SCHEDULED, the secret
  is dropped at once; again: FAILED_PRECONDITION). An unknown key or version: NOT_FOUND.

Key rings and keys are made from the test with ``create_key(...)`` (returns the CryptoKey's name).

Scripting: ``fail_always`` (a ``grpc.StatusCode``) aborts every call; ``call_errors`` is consumed one per
call; ``delay_seconds`` delays every answer (cut short by stop()). ``calls`` counts the calls per method.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

import google_crc32c
import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

from tests.support.fake_grpc import serve_on_loopback

SERVICE = "google.cloud.kms.v1.KeyManagementService"
State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
_MAGIC = b"FKMS"
_HEADER = struct.Struct(">4sI")  # magic, version number
_NONCE = 12


def kms_client(address: str) -> kms_v1.KeyManagementServiceClient:
    """Google's real client, over plaintext gRPC to ``address`` (no credentials are looked up)."""
    transport = KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(address))
    return kms_v1.KeyManagementServiceClient(transport=transport)


@dataclass
class _Version:
    number: int
    secret: bytes | None
    state: State
    create_time: dt.datetime
    destroy_time: dt.datetime | None = None


@dataclass
class _Key:
    name: str
    create_time: dt.datetime
    versions: list[_Version] = field(default_factory=list)
    primary: int | None = None
    destroy_scheduled_duration: dt.timedelta = dt.timedelta(days=1)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _crc(data: bytes) -> int:
    return google_crc32c.value(data)


class FakeKms:
    def __init__(self) -> None:
        self.keys: dict[str, _Key] = {}
        self.fail_always: grpc.StatusCode | None = None
        self.call_errors: list[grpc.StatusCode] = []
        self.delay_seconds: float = 0.0
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self.port: int | None = None

    # -- set-up from the test -------------------------------------------------------

    def create_key(
        self,
        project: str = "fh-test",
        location: str = "global",
        key_ring: str = "faceharmony",
        key: str = "kek",
        *,
        first_version: bool = True,
    ) -> str:
        """A symmetric ENCRYPT_DECRYPT CryptoKey (with a first, primary version unless told otherwise)."""
        name = f"projects/{project}/locations/{location}/keyRings/{key_ring}/cryptoKeys/{key}"
        with self._lock:
            if name in self.keys:
                raise ValueError(f"key {name} exists")
            k = self.keys[name] = _Key(name, dt.datetime.now(dt.UTC))
            if first_version:
                k.primary = self._new_version(k).number
        return name

    def version_name(self, key_name: str, number: int) -> str:
        return f"{key_name}/cryptoKeyVersions/{number}"

    # -- lifecycle ----------------------------------------------------------------

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeKms is not started")
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeKms:
        methods = {
            "Encrypt": (self._encrypt, kms_v1.EncryptRequest, kms_v1.EncryptResponse),
            "Decrypt": (self._decrypt, kms_v1.DecryptRequest, kms_v1.DecryptResponse),
            "GetCryptoKey": (self._get_crypto_key, kms_v1.GetCryptoKeyRequest, kms_v1.CryptoKey),
            "GetCryptoKeyVersion": (
                self._get_crypto_key_version,
                kms_v1.GetCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion,
            ),
            "ListCryptoKeyVersions": (
                self._list_crypto_key_versions,
                kms_v1.ListCryptoKeyVersionsRequest,
                kms_v1.ListCryptoKeyVersionsResponse,
            ),
            "CreateCryptoKeyVersion": (
                self._create_crypto_key_version,
                kms_v1.CreateCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion,
            ),
            "UpdateCryptoKeyPrimaryVersion": (
                self._update_crypto_key_primary_version,
                kms_v1.UpdateCryptoKeyPrimaryVersionRequest,
                kms_v1.CryptoKey,
            ),
            "DestroyCryptoKeyVersion": (
                self._destroy_crypto_key_version,
                kms_v1.DestroyCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion,
            ),
        }
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                method: grpc.unary_unary_rpc_method_handler(
                    self._serving(method, fn),
                    request_deserializer=request_type.deserialize,
                    response_serializer=response_type.serialize,
                )
                for method, (fn, request_type, response_type) in methods.items()
            },
        )
        self._stopping.clear()
        self._server, self.port = serve_on_loopback(handler)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> FakeKms:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serving(self, method: str, fn):
        def handle(request, context: grpc.ServicerContext):
            with self._lock:
                self.calls[method] += 1
                forced = self.call_errors.pop(0) if self.call_errors else self.fail_always
            if self.delay_seconds and self._stopping.wait(self.delay_seconds):
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake KMS shutting down")
            if forced is not None:
                context.abort(forced, f"fake KMS: scripted {forced.name}")
            try:
                with self._lock:
                    return fn(request)
            except _Abort as exc:
                context.abort(exc.code, exc.message)

        return handle

    # -- model --------------------------------------------------------------------

    def _new_version(self, key: _Key) -> _Version:
        version = _Version(
            len(key.versions) + 1, AESGCM.generate_key(bit_length=256), State.ENABLED, dt.datetime.now(dt.UTC)
        )
        key.versions.append(version)
        return version

    def _key(self, name: str) -> _Key:
        key = self.keys.get(name)
        if key is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        return key

    def _split_version(self, name: str) -> tuple[_Key, _Version]:
        m = re.fullmatch(r"(.+)/cryptoKeyVersions/(\d+)", name)
        if m is None:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a CryptoKeyVersion name: {name}")
        key = self._key(m.group(1))
        number = int(m.group(2))
        if not 1 <= number <= len(key.versions):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        return key, key.versions[number - 1]

    def _version_pb(self, key: _Key, version: _Version) -> kms_v1.CryptoKeyVersion:
        return kms_v1.CryptoKeyVersion(
            name=self.version_name(key.name, version.number),
            state=version.state,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
            algorithm=kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
            create_time=version.create_time,
            generate_time=version.create_time,
            destroy_time=version.destroy_time,
        )

    def _key_pb(self, key: _Key) -> kms_v1.CryptoKey:
        out = kms_v1.CryptoKey(
            name=key.name,
            purpose=kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
            create_time=key.create_time,
            destroy_scheduled_duration=key.destroy_scheduled_duration,
        )
        if key.primary is not None:
            out.primary = self._version_pb(key, key.versions[key.primary - 1])
        return out

    @staticmethod
    def _check_crc(request, data_field: str, crc_field: str) -> bool:
        if not type(request).pb(request).HasField(crc_field):
            return False
        if getattr(request, crc_field) != _crc(getattr(request, data_field)):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"The checksum in field {crc_field} did not match the data.")
        return True

    @staticmethod
    def _aad(key: _Key, aad: bytes) -> bytes:
        return key.name.encode() + b"\x00" + aad

    # -- the service ------------------------------------------------------------

    def _encrypt(self, request: kms_v1.EncryptRequest) -> kms_v1.EncryptResponse:
        if "/cryptoKeyVersions/" in request.name:
            key, version = self._split_version(request.name)
        else:
            key = self._key(request.name)
            if key.primary is None:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"{key.name} has no primary version.")
            version = key.versions[key.primary - 1]
        if version.state != State.ENABLED or version.secret is None:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.version_name(key.name, version.number)} is not enabled, current state is: {version.state.name}.",
            )
        verified_pt = self._check_crc(request, "plaintext", "plaintext_crc32c")
        verified_aad = self._check_crc(request, "additional_authenticated_data", "additional_authenticated_data_crc32c")
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(version.secret).encrypt(
            nonce, request.plaintext, self._aad(key, request.additional_authenticated_data)
        )
        ciphertext = _HEADER.pack(_MAGIC, version.number) + nonce + sealed
        return kms_v1.EncryptResponse(
            name=self.version_name(key.name, version.number),
            ciphertext=ciphertext,
            ciphertext_crc32c=_crc(ciphertext),
            verified_plaintext_crc32c=verified_pt,
            verified_additional_authenticated_data_crc32c=verified_aad,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )

    def _decrypt(self, request: kms_v1.DecryptRequest) -> kms_v1.DecryptResponse:
        key = self._key(request.name)
        self._check_crc(request, "ciphertext", "ciphertext_crc32c")
        self._check_crc(request, "additional_authenticated_data", "additional_authenticated_data_crc32c")
        data = request.ciphertext
        invalid = _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.")
        if len(data) < _HEADER.size + _NONCE + 16:
            raise invalid
        magic, number = _HEADER.unpack_from(data)
        if magic != _MAGIC or not 1 <= number <= len(key.versions):
            raise invalid
        version = key.versions[number - 1]
        if version.state != State.ENABLED or version.secret is None:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.version_name(key.name, number)} is not enabled, current state is: {version.state.name}.",
            )
        start = _HEADER.size
        try:
            plaintext = AESGCM(version.secret).decrypt(
                data[start : start + _NONCE],
                data[start + _NONCE :],
                self._aad(key, request.additional_authenticated_data),
            )
        except InvalidTag:
            raise invalid from None
        return kms_v1.DecryptResponse(
            plaintext=plaintext,
            plaintext_crc32c=_crc(plaintext),
            used_primary=number == key.primary,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )

    def _get_crypto_key(self, request: kms_v1.GetCryptoKeyRequest) -> kms_v1.CryptoKey:
        return self._key_pb(self._key(request.name))

    def _get_crypto_key_version(self, request: kms_v1.GetCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        return self._version_pb(*self._split_version(request.name))

    def _list_crypto_key_versions(
        self, request: kms_v1.ListCryptoKeyVersionsRequest
    ) -> kms_v1.ListCryptoKeyVersionsResponse:
        key = self._key(request.parent)
        versions = key.versions
        if request.filter:
            m = re.fullmatch(r"\s*state\s*=\s*([A-Z_]+)\s*", request.filter)
            if m is None or m.group(1) not in State.__members__:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported filter: {request.filter}")
            versions = [v for v in versions if v.state == State[m.group(1)]]
        start = int(request.page_token or 0)
        size = request.page_size or 25
        page = versions[start : start + size]
        more = start + size < len(versions)
        return kms_v1.ListCryptoKeyVersionsResponse(
            crypto_key_versions=[self._version_pb(key, v) for v in page],
            next_page_token=str(start + size) if more else "",
            total_size=len(versions),
        )

    def _create_crypto_key_version(self, request: kms_v1.CreateCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        key = self._key(request.parent)
        return self._version_pb(key, self._new_version(key))

    def _update_crypto_key_primary_version(
        self, request: kms_v1.UpdateCryptoKeyPrimaryVersionRequest
    ) -> kms_v1.CryptoKey:
        key, version = self._split_version(f"{request.name}/cryptoKeyVersions/{request.crypto_key_version_id}")
        if version.state != State.ENABLED:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.version_name(key.name, version.number)} is not enabled, current state is: {version.state.name}.",
            )
        key.primary = version.number
        return self._key_pb(key)

    def _destroy_crypto_key_version(self, request: kms_v1.DestroyCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        key, version = self._split_version(request.name)
        if version.state not in (State.ENABLED, State.DISABLED):
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{request.name} is not enabled or disabled, current state is: {version.state.name}.",
            )
        version.state = State.DESTROY_SCHEDULED
        version.secret = None  # the fake cannot restore: as good as destroyed for every test
        version.destroy_time = dt.datetime.now(dt.UTC) + key.destroy_scheduled_duration
        return self._version_pb(key, version)
