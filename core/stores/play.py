"""Google Play receipts: the Play Developer API (androidpublisher v3) through Google's own client.

`purchases.products.get` says what a purchase token is: purchased, canceled or pending; consumed or not; a
license tester's (purchaseType 0) or paid; which product, how many, for which obfuscated account. Credits are
granted only for a purchased token that was not yet consumed; `consume` then uses it up (Play refunds a purchase
left unacknowledged for three days). `purchases.voidedpurchases.list` lists refunded, charged-back and revoked
purchases of the last 30 days.

Credentials: Application Default Credentials (a service account the Play Console granted "View financial data"
and "Manage orders") with the androidpublisher scope; with FACEHARMONY_PLAY_API_ENDPOINT set (a local server
speaking the same REST protocol, as the tests run), anonymous ones. httplib2 is not thread-safe, so every call
gets an Http of its own.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import re

import google.auth
import google_auth_httplib2
import httplib2
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from faceharmony.core.stores import (
    GOOGLE_PLAY,
    PurchasePending,
    ReceiptInvalid,
    Revocation,
    StorePurchase,
    StoreUnavailable,
    from_millis,
)

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/androidpublisher"
TOKEN = re.compile(r"^[A-Za-z0-9._\-]{1,4096}$")
PURCHASED, CANCELED, PENDING = 0, 1, 2
TEST_PURCHASE = 0
MAX_QUANTITY = 100
VOIDED_PAGE = 1000
VOIDED_REASONS = {
    0: "other",
    1: "remorse",
    2: "not_received",
    3: "defective",
    4: "accidental_purchase",
    5: "fraud",
    6: "friendly_fraud",
    7: "chargeback",
    8: "unacknowledged_purchase",
}


class GooglePlay:
    def __init__(
        self, *, package_name: str, endpoint: str = "", timeout: float = 10.0, allow_test_purchases: bool = False
    ) -> None:
        self.package_name = package_name
        self.timeout = timeout
        self.allow_test_purchases = allow_test_purchases
        self._credentials: google.auth.credentials.Credentials
        if endpoint:
            self._credentials = AnonymousCredentials()
        else:  # pragma: no cover - needs Google's servers
            self._credentials, _ = google.auth.default(scopes=[SCOPE])
        options = {"api_endpoint": endpoint} if endpoint else None
        self._service = build(
            "androidpublisher", "v3", http=self._http(), client_options=options, static_discovery=True
        )

    def _http(self) -> google_auth_httplib2.AuthorizedHttp:
        return google_auth_httplib2.AuthorizedHttp(self._credentials, http=httplib2.Http(timeout=self.timeout))

    def _execute(self, request, *, answer: bool = True) -> dict:
        """The call's JSON answer; `answer=False`: a call that answers no body (consume), whatever it holds."""
        try:
            got = request.execute(http=self._http())
        except HttpError as exc:
            status = exc.resp.status
            if status in (400, 404, 410):
                raise ReceiptInvalid("token not known to Google Play for this app and product") from exc
            if status in (401, 403):
                log.error("Google Play refused this server's credentials (HTTP %s)", status)
            raise StoreUnavailable(f"Google Play answered HTTP {status}") from exc
        except (TimeoutError, OSError, http.client.HTTPException, httplib2.HttpLib2Error, GoogleAuthError) as exc:
            raise StoreUnavailable("Google Play could not be reached") from exc
        except ValueError as exc:  # a body the client could not decode (UnicodeDecodeError, not JSON)
            raise StoreUnavailable("Google Play's answer was not readable") from exc
        if not answer:
            return {}
        if not isinstance(got, dict):  # not the API's JSON (a proxy's page, a truncated body)
            raise StoreUnavailable("Google Play's answer was not readable")
        return got

    def verify_token(self, product_id: str, token: str, token_key: str) -> StorePurchase:
        """`token_key`: the keyed hash the token is recorded under (never the token itself)."""
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            raise ReceiptInvalid("not a purchase token")
        products = self._service.purchases().products()
        got = self._execute(products.get(packageName=self.package_name, productId=product_id, token=token))
        if got.get("productId") not in (None, product_id):
            raise ReceiptInvalid("token of another product")
        state = got.get("purchaseState")
        if state == PENDING:
            raise PurchasePending("pending")
        if state != PURCHASED:
            raise ReceiptInvalid("not purchased (canceled)")
        test = got.get("purchaseType") == TEST_PURCHASE
        if test and not self.allow_test_purchases:
            raise ReceiptInvalid("a license tester's purchase")
        try:
            quantity = int(got.get("quantity") or 1)
            purchase_time = from_millis(got.get("purchaseTimeMillis"))
        except (TypeError, ValueError, OverflowError, OSError):
            raise StoreUnavailable("Google Play's answer was not readable") from None
        if not 1 <= quantity <= MAX_QUANTITY:
            raise ReceiptInvalid("quantity out of range")
        return StorePurchase(
            store=GOOGLE_PLAY,
            transaction_id=got.get("orderId") or f"token:{token_key[:40]}",
            product_id=product_id,
            quantity=quantity,
            purchase_time=purchase_time,
            environment="Test" if test else "Production",
            account_token=(got.get("obfuscatedExternalAccountId") or "").lower() or None,
            consumed=got.get("consumptionState") == 1,
            record={
                "orderId": got.get("orderId"),
                "productId": product_id,
                "purchaseState": state,
                "consumptionState": got.get("consumptionState"),
                "acknowledgementState": got.get("acknowledgementState"),
                "purchaseType": got.get("purchaseType"),
                "quantity": quantity,
                "purchaseTimeMillis": got.get("purchaseTimeMillis"),
            },
        )

    def consume(self, product_id: str, token: str) -> None:
        products = self._service.purchases().products()
        self._execute(products.consume(packageName=self.package_name, productId=product_id, token=token), answer=False)

    def voided(self, since: dt.datetime) -> list[Revocation]:
        """Every one-time product purchase voided since `since` (at most 30 days back: the API's limit)."""
        voided = self._service.purchases().voidedpurchases()
        start = int(since.timestamp() * 1000)
        found: list[Revocation] = []
        page: str | None = None
        while True:
            args = {"packageName": self.package_name, "startTime": start, "maxResults": VOIDED_PAGE, "type": 0}
            if page:
                args["token"] = page
            got = self._execute(voided.list(**args))
            for item in got.get("voidedPurchases") or []:
                token = item.get("purchaseToken") if isinstance(item, dict) else None
                if not token or not isinstance(token, str):
                    continue
                try:
                    when = from_millis(item.get("voidedTimeMillis")) or dt.datetime.now(dt.UTC)
                except (TypeError, ValueError, OverflowError, OSError):
                    when = dt.datetime.now(dt.UTC)
                found.append(
                    Revocation(
                        store=GOOGLE_PLAY,
                        transaction_id=item.get("orderId"),
                        token=token,
                        reason=VOIDED_REASONS.get(item.get("voidedReason"), "other"),
                        when=when,
                    )
                )
            page = (got.get("tokenPagination") or {}).get("nextPageToken")
            if not page:
                return found
