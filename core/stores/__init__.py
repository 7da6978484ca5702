"""Store receipts: what the App Store and Google Play vouch for.

* `appstore.AppStore` verifies StoreKit 2 signed transactions and App Store Server Notifications V2 offline with
  Apple's app-store-server-library (the certificate chain to the configured roots, the bundle id, the app's
  Apple id and the environment);
* `play.GooglePlay` asks the Google Play Developer API (androidpublisher v3, google-api-python-client) about a
  purchase token, consumes it, and lists voided purchases.

Both answer with a `StorePurchase` (what was verified) or raise `ReceiptInvalid` (the store does not vouch for
it: a stable detail for the log, never the receipt) or `StoreUnavailable` (ask again later).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faceharmony.core.stores.appstore import AppStore
    from faceharmony.core.stores.play import GooglePlay

APP_STORE = "app_store"
GOOGLE_PLAY = "google_play"


class ReceiptInvalid(Exception):
    """The store does not vouch for the purchase. `detail` is a fixed phrase, safe to log."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class PurchasePending(Exception):
    """The store has not been paid yet (a pending Google Play purchase)."""


class StoreUnavailable(Exception):
    """The store could not be asked now; the same request may be retried."""


class StoreNotConfigured(Exception):
    pass


@dataclass(frozen=True)
class StorePurchase:
    """A purchase as its store vouched for it."""

    store: str
    # The key credits are granted once for: the App Store's originalTransactionId, Google Play's order id (or,
    # for a purchase without one, a keyed hash of its token).
    transaction_id: str
    product_id: str
    quantity: int
    purchase_time: dt.datetime | None
    environment: str  # Production | Sandbox (App Store), Production | Test (Google Play)
    # appAccountToken (StoreKit) or obfuscatedExternalAccountId (Play Billing), if the app set one.
    account_token: str | None = None
    # Google Play: whether the token was already consumed (a retry after our consume call was answered).
    consumed: bool = False
    # What was verified, kept with the purchase for support (ids, product, dates; no personal data).
    record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Revocation:
    """A refund or revocation the store told us about."""

    store: str
    # App Store: the originalTransactionId; Google Play: the purchase token (never stored: keyed hash only).
    transaction_id: str | None
    token: str | None
    reason: str
    when: dt.datetime
    # App Store REFUND_REVERSED: the refund was undone, the credits stand again.
    reversed: bool = False


def from_millis(value) -> dt.datetime | None:
    if value in (None, ""):
        return None
    return dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.UTC)


@dataclass
class Stores:
    """The stores this server is configured for (None: that store's purchases are refused)."""

    app_store: AppStore | None = None
    play: GooglePlay | None = None


def open_stores(settings) -> Stores:
    """The stores `settings` configure (core/settings.py, app_store_* and play_*)."""
    from pathlib import Path

    stores = Stores()
    if settings.app_store_bundle_id:
        from faceharmony.core.stores.appstore import AppStore, load_roots

        paths = [Path(p.strip()) for p in settings.app_store_root_certificates.split(",") if p.strip()]
        stores.app_store = AppStore(
            bundle_id=settings.app_store_bundle_id,
            environments=[e.strip() for e in settings.app_store_environments.split(",") if e.strip()],
            root_certificates=load_roots(paths),
            app_apple_id=settings.app_store_app_apple_id or None,
            online_checks=settings.app_store_online_checks,
        )
    if settings.play_package_name:
        from faceharmony.core.stores.play import GooglePlay

        stores.play = GooglePlay(
            package_name=settings.play_package_name,
            endpoint=settings.play_api_endpoint,
            timeout=settings.play_timeout_seconds,
            allow_test_purchases=settings.play_allow_test_purchases,
        )
    return stores
