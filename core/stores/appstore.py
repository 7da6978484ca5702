"""App Store receipts: StoreKit 2 signed transactions and App Store Server Notifications V2, verified offline.

Apple's app-store-server-library (`SignedDataVerifier`) checks the JWS: ES256, its x5c chain to one of the roots
this server trusts (Apple Root CA - G3 in production; a test's own root in tests), the leaf and intermediate
certificates' Apple extensions, the chain's validity at the signing date, then the bundle id and environment (and,
for notifications, the app's Apple id). One verifier per accepted environment: a production server that must also
accept App Review's sandbox purchases lists both (FACEHARMONY_APP_STORE_ENVIRONMENTS=Production,Sandbox).

On top of the library this module refuses what a consumable credits purchase must not be: another type, a
revoked transaction, a signing date in the future, a quantity out of range.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.NotificationTypeV2 import NotificationTypeV2
from appstoreserverlibrary.models.Type import Type
from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier, VerificationException, VerificationStatus
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from faceharmony.core.stores import APP_STORE, ReceiptInvalid, Revocation, StorePurchase, StoreUnavailable, from_millis

log = logging.getLogger(__name__)

ENVIRONMENTS = {"Production": Environment.PRODUCTION, "Sandbox": Environment.SANDBOX}
MAX_JWS_CHARS = 16_384  # a transaction with its three certificates is about 4 KB
MAX_QUANTITY = 100
CLOCK_SKEW = dt.timedelta(minutes=5)
_STATUS_DETAIL = {
    VerificationStatus.VERIFICATION_FAILURE: "signature or certificate chain not valid",
    VerificationStatus.INVALID_APP_IDENTIFIER: "another app's transaction",
    VerificationStatus.INVALID_CERTIFICATE: "certificate not readable",
    VerificationStatus.INVALID_CHAIN_LENGTH: "certificate chain of the wrong length",
    VerificationStatus.INVALID_CHAIN: "certificate chain not valid",
    VerificationStatus.INVALID_ENVIRONMENT: "another environment's transaction",
}


def load_roots(paths: list[Path]) -> list[bytes]:
    """The trusted roots as DER, from files in DER (Apple's .cer downloads) or PEM."""
    roots = []
    for path in paths:
        data = path.read_bytes()
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        roots.append(cert.public_bytes(Encoding.DER))
    return roots


class AppStore:
    def __init__(
        self,
        *,
        bundle_id: str,
        environments: list[str],
        root_certificates: list[bytes],
        app_apple_id: int | None = None,
        online_checks: bool = False,
    ) -> None:
        if not root_certificates:
            raise ValueError("the App Store needs at least one trusted root certificate")
        self.bundle_id = bundle_id
        self._verifiers = {
            name: SignedDataVerifier(root_certificates, online_checks, ENVIRONMENTS[name], bundle_id, app_apple_id)
            for name in environments
        }

    def _verify(self, method: str, signed: str):
        if not isinstance(signed, str) or not signed or len(signed) > MAX_JWS_CHARS:
            raise ReceiptInvalid("not a signed transaction")
        last: Exception | None = None
        for name, verifier in self._verifiers.items():
            try:
                return name, getattr(verifier, method)(signed)
            except VerificationException as exc:
                if exc.status == VerificationStatus.RETRYABLE_VERIFICATION_FAILURE:  # OCSP unreachable
                    raise StoreUnavailable("the App Store's certificate status could not be checked") from exc
                if exc.status != VerificationStatus.INVALID_ENVIRONMENT:
                    raise ReceiptInvalid(_STATUS_DETAIL.get(exc.status, "not verified")) from exc
                last = exc
            except Exception as exc:  # a signed payload the library cannot structure
                raise ReceiptInvalid("not a readable signed transaction") from exc
        raise ReceiptInvalid("another environment's transaction") from last

    def verify_transaction(self, signed_transaction: str, now: dt.datetime) -> StorePurchase:
        environment, tx = self._verify("verify_and_decode_signed_transaction", signed_transaction)
        if tx.type != Type.CONSUMABLE:
            raise ReceiptInvalid("not a consumable purchase")
        if not tx.originalTransactionId or not tx.transactionId or not tx.productId:
            raise ReceiptInvalid("transaction without ids")
        if tx.revocationDate is not None:
            raise ReceiptInvalid("revoked by the App Store")
        signed = from_millis(tx.signedDate)
        if signed is None or signed > now + CLOCK_SKEW:
            raise ReceiptInvalid("signing date missing or in the future")
        quantity = tx.quantity or 1
        if not 1 <= quantity <= MAX_QUANTITY:
            raise ReceiptInvalid("quantity out of range")
        return StorePurchase(
            store=APP_STORE,
            transaction_id=tx.originalTransactionId,
            product_id=tx.productId,
            quantity=quantity,
            purchase_time=from_millis(tx.purchaseDate),
            environment=environment,
            account_token=(tx.appAccountToken or "").lower() or None,
            record={
                "transactionId": tx.transactionId,
                "originalTransactionId": tx.originalTransactionId,
                "productId": tx.productId,
                "bundleId": tx.bundleId,
                "environment": environment,
                "type": tx.rawType,
                "quantity": quantity,
                "purchaseDate": tx.purchaseDate,
                "signedDate": tx.signedDate,
            },
        )

    def verify_notification(self, signed_payload: str, now: dt.datetime) -> tuple[str | None, Revocation | None]:
        """(notification UUID, the revocation it announces or None). REFUND and REVOKE take credits back,
        REFUND_REVERSED restores them; other types (TEST, CONSUMPTION_REQUEST, ...) change nothing here."""
        _, note = self._verify("verify_and_decode_notification", signed_payload)
        kind = note.notificationType
        if kind not in (NotificationTypeV2.REFUND, NotificationTypeV2.REVOKE, NotificationTypeV2.REFUND_REVERSED):
            return note.notificationUUID, None
        if note.data is None or not note.data.signedTransactionInfo:
            raise ReceiptInvalid("notification without its transaction")
        _, tx = self._verify("verify_and_decode_signed_transaction", note.data.signedTransactionInfo)
        if not tx.originalTransactionId:
            raise ReceiptInvalid("transaction without ids")
        reversed_ = kind == NotificationTypeV2.REFUND_REVERSED
        # Events of one transaction are ordered by Apple's signing time: a redelivered or late one is older.
        when = from_millis(note.signedDate) or now
        return note.notificationUUID, Revocation(
            store=APP_STORE,
            transaction_id=tx.originalTransactionId,
            token=None,
            reason=note.rawNotificationType or "REFUND",
            when=when,
            reversed=reversed_,
        )
