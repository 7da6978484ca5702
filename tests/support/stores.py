"""Local stores that speak the real protocols to the real clients (core/stores).

* `LocalAppStore`: a certificate authority of its own (a root, an intermediate with Apple's WWDR extension
  1.2.840.113635.100.6.2.1, a leaf with the App Store receipt-signing extension 1.2.840.113635.100.6.11.1) that
  signs StoreKit 2 transactions and App Store Server Notifications V2 as Apple does: ES256 JWS with the x5c chain.
  Apple's SignedDataVerifier is given its root to trust, as production is given Apple Root CA - G3.
* `LocalPlay`: an HTTP server speaking the Play Developer API's REST protocol (androidpublisher v3
  purchases.products get/consume/acknowledge, purchases.voidedpurchases list) to google-api-python-client.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

BUNDLE_ID = "app.faceharmony.ios"
APP_APPLE_ID = 1234567890
PACKAGE_NAME = "app.faceharmony.android"
WWDR_OID = "1.2.840.113635.100.6.2.1"
RECEIPT_SIGNING_OID = "1.2.840.113635.100.6.11.1"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")]
    )


def _cert(subject, subject_key, issuer, issuer_key, *, ca: bool, oid: str | None, not_before, not_after):
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if oid:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), b"\x05\x00"), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


class LocalAppStore:
    """Signs as the App Store does, under its own root. `expired=True`: the leaf's validity ended a year ago."""

    def __init__(self, *, expired: bool = False, wrong_leaf_oid: bool = False) -> None:
        now = dt.datetime.now(dt.UTC)
        long_ago, far = now - dt.timedelta(days=3650), now + dt.timedelta(days=3650)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        root_name, mid_name = _name("Test Root CA"), _name("Test WWDR")
        self.root = _cert(
            root_name, self.root_key, root_name, self.root_key, ca=True, oid=None, not_before=long_ago, not_after=far
        )
        self.intermediate = _cert(
            mid_name, self.mid_key, root_name, self.root_key, ca=True, oid=WWDR_OID, not_before=long_ago, not_after=far
        )
        leaf_end = now - dt.timedelta(days=365) if expired else far
        self.leaf = _cert(
            _name("Test StoreKit"),
            self.leaf_key,
            mid_name,
            self.mid_key,
            ca=False,
            oid=None if wrong_leaf_oid else RECEIPT_SIGNING_OID,
            not_before=long_ago,
            not_after=leaf_end,
        )

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(Encoding.DER)

    def write_root(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"root-{secrets.token_hex(4)}.cer"
        path.write_bytes(self.root_der)
        return path

    def sign(self, payload: dict) -> str:
        chain = [b64encode(c.public_bytes(Encoding.DER)).decode() for c in (self.leaf, self.intermediate, self.root)]
        return jwt.encode(payload, self.leaf_key, algorithm="ES256", headers={"x5c": chain})

    def transaction_payload(self, at: dt.datetime | None = None, **overrides) -> dict:
        """A consumable's transaction, signed `at` (default: now; tests on a manual clock pass its time)."""
        now = int((at.timestamp() if at else time.time()) * 1000)
        tx_id = str(secrets.randbelow(10**15))
        payload = {
            "transactionId": tx_id,
            "originalTransactionId": tx_id,
            "bundleId": BUNDLE_ID,
            "productId": "credits_10",
            "purchaseDate": now - 1000,
            "originalPurchaseDate": now - 1000,
            "quantity": 1,
            "type": "Consumable",
            "inAppOwnershipType": "PURCHASED",
            "signedDate": now,
            "environment": "Production",
            "transactionReason": "PURCHASE",
            "storefront": "USA",
            "storefrontId": "143441",
            "price": 4990,
            "currency": "USD",
        }
        payload.update(overrides)
        return {k: v for k, v in payload.items() if v is not None}

    def transaction(self, at: dt.datetime | None = None, **overrides) -> str:
        return self.sign(self.transaction_payload(at, **overrides))

    def notification(
        self,
        kind: str,
        signed_transaction: str,
        *,
        environment: str = "Production",
        at: dt.datetime | None = None,
        **data,
    ) -> str:
        body = {
            "notificationType": kind,
            "notificationUUID": str(uuid.uuid4()),
            "version": "2.0",
            "signedDate": int((at.timestamp() if at else time.time()) * 1000),
            "data": {
                "appAppleId": APP_APPLE_ID,
                "bundleId": BUNDLE_ID,
                "bundleVersion": "1",
                "environment": environment,
                "signedTransactionInfo": signed_transaction,
                **data,
            },
        }
        return self.sign(body)


@functools.cache
def shared_app_store() -> LocalAppStore:
    """The App Store every test harness trusts by default (making its keys takes a few milliseconds)."""
    return LocalAppStore()


def app_store_settings(store: LocalAppStore, folder: Path, **overrides) -> dict:
    settings = {
        "app_store_bundle_id": BUNDLE_ID,
        "app_store_app_apple_id": APP_APPLE_ID,
        "app_store_environments": "Production",
        "app_store_root_certificates": str(store.write_root(folder)),
    }
    settings.update(overrides)
    return settings


@dataclass
class PlayPurchase:
    product_id: str
    order_id: str | None = None
    purchase_state: int = 0
    consumption_state: int = 0
    acknowledgement_state: int = 0
    purchase_type: int | None = None
    quantity: int = 1
    account_id: str | None = None  # obfuscatedExternalAccountId
    reported_product: str | None = None  # productId in the answer (Google: "may not be present")
    package_name: str = PACKAGE_NAME
    purchase_time_ms: int = field(default_factory=lambda: int(time.time() * 1000) - 5000)
    voided_ms: int | None = None
    voided_reason: int = 0


_PRODUCT_PATH = re.compile(
    r"^/androidpublisher/v3/applications/(?P<pkg>[^/]+)/purchases/products/(?P<product>[^/]+)/tokens/(?P<token>[^/:]+)(?P<verb>:acknowledge|:consume)?$"
)
_VOIDED_PATH = re.compile(r"^/androidpublisher/v3/applications/(?P<pkg>[^/]+)/purchases/voidedpurchases$")


class LocalPlay:
    """The Play Developer API's purchase endpoints, with purchases the test adds. `fail(status, n, on=...)` answers
    the next n calls (of the given verb: get, consume, voided) with an HTTP error; `stall(seconds)` delays every
    answer (a timeout, for a client with a shorter one)."""

    def __init__(self) -> None:
        self.purchases: dict[str, PlayPurchase] = {}
        self.calls: list[tuple[str, str]] = []  # (verb, token)
        self._failures: list[tuple[str | None, int | str]] = []
        self.stall_seconds = 0.0
        self._lock = threading.Lock()
        play = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                play._serve(self, "GET")

            def do_POST(self):
                play._serve(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="local-play")
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, product_id: str = "credits_10", **fields) -> str:
        token = ".".join(secrets.token_urlsafe(24) for _ in range(3))
        fields.setdefault(
            "order_id",
            f"GPA.{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**5):05d}",
        )
        self.purchases[token] = PlayPurchase(product_id=product_id, **fields)
        return token

    def void(self, token: str, reason: int = 1) -> None:
        purchase = self.purchases[token]
        purchase.voided_ms = int(time.time() * 1000)
        purchase.voided_reason = reason

    def fail(self, status: int, times: int = 1, on: str | None = None) -> None:
        """The next `times` calls (of verb `on`) answer HTTP `status`; status "html" answers 200 with a proxy's
        HTML page, "truncated" a body cut short of its Content-Length."""
        with self._lock:
            self._failures.extend([(on, status)] * times)

    def _failure_for(self, verb: str) -> int | str | None:
        with self._lock:
            for i, (on, status) in enumerate(self._failures):
                if on in (None, verb):
                    del self._failures[i]
                    return status
        return None

    def _reply(self, handler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, handler, status: int | str, message: str) -> None:
        if status == "html":
            data = b"<html><body>502 Bad Gateway</body></html>"
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if status == "truncated":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json; charset=UTF-8")
            handler.send_header("Content-Length", "4096")
            handler.end_headers()
            handler.wfile.write(b'{"purchaseState": 0, "consum')
            handler.close_connection = True
            return
        assert isinstance(status, int)
        self._reply(handler, status, {"error": {"code": status, "message": message, "errors": [{"message": message}]}})

    def _serve(self, handler, method: str) -> None:
        if self.stall_seconds:
            time.sleep(self.stall_seconds)
        url = urllib.parse.urlsplit(handler.path)
        if handler.headers.get("Content-Length"):
            handler.rfile.read(int(handler.headers["Content-Length"]))
        match = _PRODUCT_PATH.match(url.path)
        if match:
            verb = (match["verb"] or ":get")[1:]
            token = urllib.parse.unquote(match["token"])
            self.calls.append((verb, token))
            if (method == "GET") != (verb == "get"):
                return self._error(handler, 405, "method not allowed")
            failure = self._failure_for(verb)
            if failure:
                return self._error(handler, failure, "injected failure")
            purchase = self.purchases.get(token)
            if purchase is None or purchase.package_name != match["pkg"]:
                return self._error(handler, 400, "The purchase token is invalid.")
            if purchase.product_id != urllib.parse.unquote(match["product"]):
                return self._error(handler, 400, "The purchase token does not match the product ID.")
            if verb == "get":
                body = {
                    "kind": "androidpublisher#productPurchase",
                    "purchaseTimeMillis": str(purchase.purchase_time_ms),
                    "purchaseState": purchase.purchase_state,
                    "consumptionState": purchase.consumption_state,
                    "acknowledgementState": purchase.acknowledgement_state,
                    "quantity": purchase.quantity,
                    "regionCode": "US",
                }
                if purchase.order_id:
                    body["orderId"] = purchase.order_id
                if purchase.purchase_type is not None:
                    body["purchaseType"] = purchase.purchase_type
                if purchase.account_id:
                    body["obfuscatedExternalAccountId"] = purchase.account_id
                if purchase.reported_product:
                    body["productId"] = purchase.reported_product
                return self._reply(handler, 200, body)
            if purchase.purchase_state != 0:
                return self._error(handler, 400, "The purchase is not in a valid state to perform the operation.")
            if verb == "consume":
                if purchase.consumption_state == 1:
                    return self._error(handler, 400, "The product purchase is already consumed.")
                purchase.consumption_state = 1
            purchase.acknowledgement_state = 1
            return self._reply(handler, 200, {})
        match = _VOIDED_PATH.match(url.path)
        if match and method == "GET":
            self.calls.append(("voided", ""))
            failure = self._failure_for("voided")
            if failure:
                return self._error(handler, failure, "injected failure")
            query = urllib.parse.parse_qs(url.query)
            start = int(query.get("startTime", ["0"])[0])
            items = [
                {
                    "kind": "androidpublisher#voidedPurchase",
                    "purchaseToken": token,
                    "orderId": p.order_id,
                    "purchaseTimeMillis": str(p.purchase_time_ms),
                    "voidedTimeMillis": str(p.voided_ms),
                    "voidedSource": 0,
                    "voidedReason": p.voided_reason,
                }
                for token, p in self.purchases.items()
                if p.voided_ms is not None and p.voided_ms >= start and p.package_name == match["pkg"]
            ]
            page_size = int(query.get("maxResults", ["1000"])[0])
            offset = int(query.get("token", ["0"])[0])
            body: dict = {"voidedPurchases": items[offset : offset + page_size]}
            if offset + page_size < len(items):
                body["tokenPagination"] = {"nextPageToken": str(offset + page_size)}
            return self._reply(handler, 200, body)
        return self._error(handler, 404, "not found")


def play_settings(play: LocalPlay, **overrides) -> dict:
    settings = {"play_package_name": PACKAGE_NAME, "play_api_endpoint": play.endpoint, "play_timeout_seconds": 2.0}
    settings.update(overrides)
    return settings
