"""The one typed settings object, read from FACEHARMONY_* environment variables once at start-up.

Every field is documented in README.md with its default. The defaults are the
embedded ones: one data folder holding the SQLite file, the blobs, the email
outbox and the server's secret key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "FACEHARMONY_"
# Variables of the command-line clients share the prefix but are not server settings.
CLIENT_PREFIX = "FACEHARMONY_CLIENT_"


class SettingsError(ValueError):
    """A FACEHARMONY_* variable has a value that cannot be used."""


# Settings that hold a secret may instead name a file holding it (FACEHARMONY_SECRET_KEY_FILE=/run/secrets/...):
# the way container secrets arrive (compose `secrets:`, a Kubernetes Secret mounted as a volume), so the value
# is in no environment that `ps e`, `podman inspect` or a crash report shows.
FILE_SETTINGS = frozenset({"secret_key", "database_url", "smtp_password"})
FILE_SUFFIX = "_file"
# A secret file is a few hundred bytes; anything larger is a wrong path (a folder's device, a log), not a secret.
_MAX_SECRET_FILE_BYTES = 64 * 1024


def _from_file(name: str, raw: str | None, path: str | None) -> str | None:
    """The value of a secret setting: the variable itself, or the content of the file its _FILE variable names."""
    if path is None:
        return raw
    variable = f"{PREFIX}{name.upper()}"
    if raw is not None:
        raise SettingsError(f"set {variable} or {variable}_FILE, not both")
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"{variable}_FILE: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise SettingsError(f"{variable}_FILE: {path} is larger than a secret ({_MAX_SECRET_FILE_BYTES} bytes)")
    try:
        value = data.decode().rstrip("\r\n")  # the newline `echo` and editors leave is not part of the secret
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}_FILE: {path} is not UTF-8 text") from None
    if not value:
        raise SettingsError(f"{variable}_FILE: {path} is empty")
    return value


def _parse_products(text: str) -> dict[str, int]:
    products: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, credits = item.partition("=")
        if not sep or not name.strip() or not credits.strip().isdigit() or int(credits) <= 0:
            raise SettingsError(f"bad product entry {item!r}: expected product_id=credits")
        products[name.strip()] = int(credits)
    return products


@dataclass(frozen=True)
class Settings:
    # Where the embedded defaults keep their state.
    data_dir: Path = Path("data")
    # The API server's listening address.
    listen: str = "127.0.0.1:50051"
    # SQLite file (default: <data_dir>/faceharmony.sqlite3) or a postgresql:// URL.
    database_url: str = ""
    database_pool_size: int = 10
    # Apply pending migrations when the server starts (embedded default).
    auto_migrate: bool = True
    # Secret for the email HMAC, code and token hashing; default: generated once into <data_dir>/secret.key.
    secret_key: str = ""
    # Email transport: "outbox" writes .eml files to <data_dir>/outbox, "smtp" sends through smtp_*.
    email_transport: str = "outbox"
    email_from: str = "FaceHarmony <no-reply@faceharmony.invalid>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 10.0
    # Blob store: "local" (folder <data_dir>/blobs) or "gcs".
    blob_backend: str = "local"
    gcs_bucket: str = ""
    gcs_project: str = ""
    # An emulator's endpoint (anonymous credentials); empty in production.
    gcs_endpoint: str = ""
    # Per-person data keys (core/keys). The KEK that wraps them: "local" (versions as files in
    # <data_dir>/keys/kek) or "gcp-kms" (the Cloud KMS CryptoKey kms_key_name, projects/.../cryptoKeys/...;
    # kms_endpoint: a local server speaking KMS's gRPC protocol, empty in production). The store of the
    # wrapped keys: "local" (<data_dir>/keys/keystore.sqlite3) or "gcs" (key_store_bucket, a bucket of its
    # own with soft delete and versioning off). The KEK rotates every kek_rotation_days; a version is
    # destroyed backup_window_days after it was replaced, so a purged person's data is unreadable in every
    # backup at most kek_rotation_days + backup_window_days after the purge (30 days by default): keep
    # database and key-store backups for at most backup_window_days. Unwrapped keys stay in a process's
    # memory for at most key_cache_seconds.
    kek_provider: str = "local"
    kms_key_name: str = ""
    kms_endpoint: str = ""
    key_store: str = "local"
    key_store_bucket: str = ""
    kek_rotation_days: int = 7
    backup_window_days: int = 23
    key_cache_size: int = 10_000
    key_cache_seconds: float = 300.0
    # Upload verification: "local" (offline detectors) or "google-cloud-vision".
    verifier: str = "local"
    verifier_workers: int = 2
    vision_endpoint: str = ""
    vision_timeout_seconds: float = 10.0
    vision_max_attempts: int = 3
    vision_nsfw_likelihood: str = "LIKELY"
    vision_face_min_confidence: float = 0.5
    # Upload limits.
    upload_max_bytes: int = 10 * 1024 * 1024
    upload_max_pixels: int = 40_000_000
    upload_min_side: int = 128
    upload_store_max_side: int = 2048
    max_photos_per_account: int = 200
    # The bounded queue in front of the verifier threads: uploads that may wait for a thread beyond those being
    # verified (VERIFY_QUEUE_FULL beyond), how long one may wait for a thread and for the pixel budget before it
    # is refused, and the budget: decoded pixels (width x height from the header, reserved before decoding,
    # released after verification) of all uploads being verified at once; at least upload_max_pixels.
    verify_queue_size: int = 16
    verify_queue_wait_seconds: float = 10.0
    verify_max_pixels_in_flight: int = 40_000_000
    # Photos never attached to a model expire after this long (P11).
    unattached_photo_ttl_hours: int = 72
    # Personal models and training (P10-P13).
    # A local folder of diffusers weights (SD 1.5-style); default: <data_dir>/base-model (the tiny pipeline
    # that `faceharmony-admin build-tiny-base` makes, built by `faceharmony-up` when missing).
    base_model: str = ""
    model_min_photos: int = 4
    model_max_photos: int = 20
    model_grace_days: int = 30
    trigger_token: str = "sks"
    training_steps: int = 0
    lora_rank: int = 4
    learning_rate: float = 0.0
    training_max_attempts: int = 3
    training_lease_seconds: float = 60.0
    trainer_poll_seconds: float = 2.0
    # Orders and inference (P14-P16).
    order_max_models: int = 4
    order_max_count: int = 8
    credits_per_image: int = 1
    order_max_attempts: int = 5
    order_lease_seconds: float = 60.0
    order_worker_poll_seconds: float = 1.0
    order_worker_orders: int = 8
    order_worker_inflight: int = 16
    triton_url: str = "127.0.0.1:8001"
    # Each process's Prometheus /metrics listener (core/metrics.py): the port (0: none) and its address
    # (0.0.0.0: every interface). faceharmony-up gives its children consecutive ports from this one.
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    # The Triton replicas order workers route to and evict from (order_worker/routing.py): comma-separated gRPC
    # addresses, every one a separate Triton with its own adapter cache. Empty: FACEHARMONY_TRITON_URL alone.
    triton_replicas: str = ""
    # Address of Triton's gRPC and metrics listeners (`faceharmony-triton`, `faceharmony-up`); 0.0.0.0: every interface.
    triton_listen_address: str = "127.0.0.1"
    triton_model: str = "faceharmony_diffusion"
    triton_timeout_seconds: float = 600.0
    # How long the order worker waits at start for Triton to be live with its model ready before it refuses to
    # start (TRITON_UNAVAILABLE); 0: refuse at once.
    triton_wait_seconds: float = 120.0
    generation_steps: int = 25
    generation_guidance: float = 7.5
    # 0: the base pipeline's native size.
    generation_width: int = 0
    generation_height: int = 0
    preview_max_side: int = 256
    rejected_photo_days: int = 60
    # Seconds between WatchModel polls of the database (one query per tick for every watched model).
    watch_poll_seconds: float = 0.5
    # Sign-in codes and sessions.
    code_ttl_seconds: int = 600
    code_max_attempts: int = 5
    code_requests_per_window: int = 5
    code_request_window_seconds: int = 3600
    # Wrong sign-in codes one email may try in 24 hours, over all its codes (a long-term brute-force cap).
    code_max_failures_per_day: int = 10
    session_ttl_seconds: int = 30 * 24 * 3600
    invitation_ttl_seconds: int = 14 * 24 * 3600
    invitations_per_day: int = 20
    # Retention periods (P13, P16, P17).
    account_grace_days: int = 30
    # The retention daemon: seconds between cycles, rows per batch (each batch one short transaction),
    # purge a model's photos as soon as its training succeeds (P11 operator option), and the age a blob
    # with no row must reach before the orphan sweep deletes it, and seconds between two orphan sweeps
    # (a sweep lists every blob, so it runs less often than the cycles; `--once` always sweeps).
    retention_interval_seconds: float = 300.0
    retention_batch_size: int = 500
    purge_photos_after_training: bool = False
    orphan_margin_hours: int = 6
    orphan_sweep_interval_seconds: float = 3600.0
    # Credits.
    free_trial_credits: int = 10
    products: Mapping[str, int] = field(
        default_factory=lambda: {"credits_10": 10, "credits_50": 50, "credits_200": 200}
    )
    # Store receipts (core/stores). The App Store: the app's bundle id (empty: App Store purchases are refused,
    # STORE_NOT_CONFIGURED), its Apple id (required with Production), the environments accepted (Production;
    # add Sandbox for App Review and TestFlight), the roots trusted (files, DER or PEM, comma-separated: Apple
    # Root CA - G3 from apple.com/certificateauthority), OCSP checks of each chain (online; offline by default),
    # and the address of the App Store Server Notifications V2 listener (HTTP; empty: none).
    app_store_bundle_id: str = ""
    app_store_app_apple_id: int = 0
    app_store_environments: str = "Production"
    app_store_root_certificates: str = ""
    app_store_online_checks: bool = False
    app_store_notifications_listen: str = ""
    # Google Play: the app's package name (empty: Play purchases are refused), the Developer API's endpoint
    # (empty: Google's, with Application Default Credentials; a local server gets anonymous ones), one call's
    # timeout, whether license testers' purchases grant credits, seconds between polls of voided purchases.
    play_package_name: str = ""
    play_api_endpoint: str = ""
    play_timeout_seconds: float = 10.0
    play_allow_test_purchases: bool = False
    play_voided_poll_seconds: float = 900.0
    # RecordPurchase checks per account per hour (each may call a store; RATE_LIMITED beyond), and whether a
    # purchase must carry the account's store_account_token (set it once every app version in use sets it).
    store_checks_per_hour: int = 30
    store_require_account_token: bool = False
    # gRPC limits.
    max_receive_message_bytes: int = 12 * 1024 * 1024
    max_send_message_bytes: int = 12 * 1024 * 1024
    # Calls in progress per server and per signed-in account (RESOURCE_EXHAUSTED with SERVER_BUSY or
    # TOO_MANY_CONCURRENT_CALLS beyond); long-lived Watch streams are counted apart, with bounds of their own.
    max_concurrent_calls: int = 64
    max_calls_per_account: int = 16
    max_concurrent_watches: int = 4096
    max_watches_per_account: int = 32
    shutdown_grace_seconds: float = 10.0
    # The heartbeat file (<data_dir>/run/<prog>.heartbeat) of the trainer, order worker and retention daemon:
    # rewritten every heartbeat_interval_seconds while the process runs; `--healthcheck` calls one older than
    # heartbeat_max_age_seconds stale (exit 1).
    heartbeat_interval_seconds: float = 5.0
    heartbeat_max_age_seconds: float = 60.0
    # Logging: "json" (structured, default) or "text".
    log_format: str = "json"
    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'faceharmony.sqlite3').resolve()}"

    @property
    def base_model_dir(self) -> Path:
        return Path(self.base_model) if self.base_model else self.data_dir / "base-model"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Reads every field from FACEHARMONY_<FIELD NAME IN CAPITALS>; unknown variables are an error."""
        env = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        file_names = {name + FILE_SUFFIX for name in FILE_SETTINGS}
        unknown = sorted(
            k
            for k in env
            if k.startswith(PREFIX)
            and not k.startswith(CLIENT_PREFIX)
            and k[len(PREFIX) :].lower() not in known
            and k[len(PREFIX) :].lower() not in file_names
        )
        if unknown:
            raise SettingsError("unknown settings: " + ", ".join(unknown))
        values: dict[str, object] = {}
        for name, f in known.items():
            raw = env.get(PREFIX + name.upper())
            if name in FILE_SETTINGS:
                raw = _from_file(name, raw, env.get(PREFIX + (name + FILE_SUFFIX).upper()))
            if raw is None:
                continue
            values[name] = _convert(name, f.type, raw)
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        replicas = [r.strip() for r in self.triton_replicas.split(",")] if self.triton_replicas.strip() else []
        if any(not r or ":" not in r for r in replicas) or len(set(replicas)) != len(replicas):
            raise SettingsError("FACEHARMONY_TRITON_REPLICAS must be distinct host:port addresses, comma-separated")
        if self.email_transport not in ("outbox", "smtp"):
            raise SettingsError("FACEHARMONY_EMAIL_TRANSPORT must be 'outbox' or 'smtp'")
        if self.blob_backend not in ("local", "gcs"):
            raise SettingsError("FACEHARMONY_BLOB_BACKEND must be 'local' or 'gcs'")
        if self.blob_backend == "gcs" and not self.gcs_bucket:
            raise SettingsError("FACEHARMONY_GCS_BUCKET is required with the gcs blob backend")
        if self.kek_provider not in ("local", "gcp-kms"):
            raise SettingsError("FACEHARMONY_KEK_PROVIDER must be 'local' or 'gcp-kms'")
        if self.kek_provider == "gcp-kms" and not re.fullmatch(
            r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+", self.kms_key_name
        ):
            raise SettingsError(
                "FACEHARMONY_KMS_KEY_NAME must be projects/P/locations/L/keyRings/R/cryptoKeys/K with gcp-kms"
            )
        if self.key_store not in ("local", "gcs"):
            raise SettingsError("FACEHARMONY_KEY_STORE must be 'local' or 'gcs'")
        if self.key_store == "gcs" and not self.key_store_bucket:
            raise SettingsError("FACEHARMONY_KEY_STORE_BUCKET is required with the gcs key store")
        if self.key_store == "gcs" and self.key_store_bucket == self.gcs_bucket:
            raise SettingsError("FACEHARMONY_KEY_STORE_BUCKET must not be the blob bucket")
        if self.verifier not in ("local", "google-cloud-vision"):
            raise SettingsError("FACEHARMONY_VERIFIER must be 'local' or 'google-cloud-vision'")
        if self.vision_nsfw_likelihood not in ("POSSIBLE", "LIKELY", "VERY_LIKELY"):
            raise SettingsError("FACEHARMONY_VISION_NSFW_LIKELIHOOD must be POSSIBLE, LIKELY or VERY_LIKELY")
        if self.model_min_photos > self.model_max_photos:
            raise SettingsError("FACEHARMONY_MODEL_MIN_PHOTOS must not exceed FACEHARMONY_MODEL_MAX_PHOTOS")
        if not re.fullmatch(r"[a-z0-9]{1,32}", self.trigger_token):
            raise SettingsError("FACEHARMONY_TRIGGER_TOKEN must be 1-32 lowercase letters and digits")
        for name in ("generation_width", "generation_height"):
            value = getattr(self, name)
            if value and (value < 64 or value > 2048 or value % 8):
                raise SettingsError(f"FACEHARMONY_{name.upper()} must be 0 or a multiple of 8 in 64-2048")
        if self.generation_guidance < 0:
            raise SettingsError("FACEHARMONY_GENERATION_GUIDANCE must not be negative")
        if not 0 <= self.metrics_port < 65536:
            raise SettingsError("FACEHARMONY_METRICS_PORT must be 0 (no listener) or a port number (1-65535)")
        if not self.metrics_address.strip():
            raise SettingsError("FACEHARMONY_METRICS_ADDRESS must not be empty")
        if not self.triton_listen_address.strip():
            raise SettingsError("FACEHARMONY_TRITON_LISTEN_ADDRESS must not be empty")
        if self.log_format not in ("json", "text"):
            raise SettingsError("FACEHARMONY_LOG_FORMAT must be 'json' or 'text'")
        url = self.resolved_database_url
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise SettingsError("FACEHARMONY_DATABASE_URL must be sqlite:///PATH or postgresql://...")
        if not url.startswith("sqlite:///"):
            _check_postgres_url(url)
        if not 0 < self.smtp_port < 65536:
            raise SettingsError("FACEHARMONY_SMTP_PORT must be a port number (1-65535)")
        if self.email_transport == "smtp" and not self.smtp_host.strip():
            raise SettingsError("FACEHARMONY_SMTP_HOST must not be empty with the smtp transport")
        if self.triton_wait_seconds < 0:
            raise SettingsError("FACEHARMONY_TRITON_WAIT_SECONDS must not be negative")
        if self.heartbeat_max_age_seconds <= self.heartbeat_interval_seconds:
            raise SettingsError(
                "FACEHARMONY_HEARTBEAT_MAX_AGE_SECONDS must exceed FACEHARMONY_HEARTBEAT_INTERVAL_SECONDS"
            )
        for name in (
            "code_ttl_seconds",
            "code_max_attempts",
            "code_max_failures_per_day",
            "session_ttl_seconds",
            "account_grace_days",
            "verifier_workers",
            "vision_max_attempts",
            "upload_max_bytes",
            "upload_max_pixels",
            "upload_min_side",
            "upload_store_max_side",
            "unattached_photo_ttl_hours",
            "model_min_photos",
            "model_max_photos",
            "model_grace_days",
            "lora_rank",
            "training_max_attempts",
            "training_lease_seconds",
            "trainer_poll_seconds",
            "watch_poll_seconds",
            "order_max_models",
            "order_max_count",
            "credits_per_image",
            "order_max_attempts",
            "order_lease_seconds",
            "order_worker_poll_seconds",
            "order_worker_orders",
            "order_worker_inflight",
            "triton_timeout_seconds",
            "generation_steps",
            "preview_max_side",
            "rejected_photo_days",
            "retention_interval_seconds",
            "kek_rotation_days",
            "backup_window_days",
            "key_cache_size",
            "key_cache_seconds",
            "retention_batch_size",
            "orphan_margin_hours",
            "orphan_sweep_interval_seconds",
            "verify_queue_wait_seconds",
            "max_concurrent_calls",
            "max_calls_per_account",
            "store_checks_per_hour",
            "max_concurrent_watches",
            "max_watches_per_account",
            "heartbeat_interval_seconds",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"FACEHARMONY_{name.upper()} must be positive")
        environments = [e.strip() for e in self.app_store_environments.split(",") if e.strip()]
        if not environments or any(e not in ("Production", "Sandbox") for e in environments):
            raise SettingsError("FACEHARMONY_APP_STORE_ENVIRONMENTS must list Production and/or Sandbox")
        if self.app_store_bundle_id:
            if not self.app_store_root_certificates.strip():
                raise SettingsError("FACEHARMONY_APP_STORE_ROOT_CERTIFICATES is required with the App Store")
            if "Production" in environments and self.app_store_app_apple_id <= 0:
                raise SettingsError("FACEHARMONY_APP_STORE_APP_APPLE_ID is required with the Production environment")
        if self.play_timeout_seconds <= 0 or self.play_voided_poll_seconds <= 0:
            raise SettingsError("FACEHARMONY_PLAY_TIMEOUT_SECONDS and _VOIDED_POLL_SECONDS must be positive")
        if self.verify_queue_size < 0:
            raise SettingsError("FACEHARMONY_VERIFY_QUEUE_SIZE must not be negative")
        if self.verify_max_pixels_in_flight < self.upload_max_pixels:
            raise SettingsError(
                "FACEHARMONY_VERIFY_MAX_PIXELS_IN_FLIGHT must be at least FACEHARMONY_UPLOAD_MAX_PIXELS"
            )

    def secret(self) -> bytes:
        """The server secret: the configured one, or one generated once into the data folder."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            from faceharmony.core.datadir import private_dir

            private_dir(self.data_dir)
            tmp = path.with_suffix(f".{secrets.token_hex(8)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # never overwrite a key another process made first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()


def _check_postgres_url(url: str) -> None:
    """A PostgreSQL URL that libpq can use: a host, a port number, a database name (the messages never quote the
    URL, which may hold the password)."""
    import urllib.parse

    try:
        parsed = urllib.parse.urlparse(url)
        port = parsed.port
    except ValueError:
        raise SettingsError("FACEHARMONY_DATABASE_URL: the port is not a number (1-65535)") from None
    if port is not None and not 0 < port < 65536:
        raise SettingsError("FACEHARMONY_DATABASE_URL: the port is not a number (1-65535)")
    if not parsed.hostname and "host=" not in parsed.query:  # ?host=/run/postgresql: a Unix socket
        raise SettingsError("FACEHARMONY_DATABASE_URL: no host (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)")
    if not parsed.path.lstrip("/") or "/" in parsed.path.lstrip("/"):
        raise SettingsError("FACEHARMONY_DATABASE_URL: no database name (postgresql://USER@HOST:PORT/DATABASE)")


def _convert(name: str, annotation: object, raw: str) -> object:
    kind = str(annotation)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind.startswith("Mapping"):
            return _parse_products(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"FACEHARMONY_{name.upper()}: cannot read {raw!r} as {kind}") from exc
