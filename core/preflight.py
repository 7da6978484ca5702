"""Start-up probes that only read: a process checks what it depends on before it writes anything.

`check(settings, role=..., require_migrated=..., triton=...)` raises `Refused("REASON: message")` (core/process.py
prints `prog: REASON: message` and exits 2) when

* DATABASE_UNREACHABLE / DATABASE_AUTH_FAILED / DATABASE_MISSING: PostgreSQL cannot be reached, refuses the
  credentials, or has no such database (the message names host, port, user and database, never the password);
* the database needs migrations (process.MIGRATE_HINT) where the process would refuse them anyway;
* STORAGE_UNREACHABLE / STORAGE_BUCKET_MISSING / STORAGE_FORBIDDEN: the GCS bucket cannot be reached, does not
  exist or refuses the role. The probe respects the role's grants (ARCHITECTURE.md): it reads a nonexistent
  object under a prefix the role may read (NotFound: reachable and authorised), and only the retention role,
  which holds `storage.buckets.get`, reads the bucket itself. Nothing is listed or written;
* KEYS_UNAVAILABLE / KEK_MISSING: an existing key store that cannot be used (core/keys), checked without
  creating anything;
* TRITON_UNAVAILABLE: Triton (order worker) not live or its model not ready within FACEHARMONY_TRITON_WAIT_SECONDS.

SQLite and the local blob folder are the data folder itself: the first start makes them, so there is nothing
to reach; a missing SQLite file is only a refusal where the process requires a migrated database.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from faceharmony.core.blobstore.base import Role
from faceharmony.core.process import MIGRATE_HINT, Refused
from faceharmony.core.settings import Settings

log = logging.getLogger("faceharmony.preflight")

DATABASE_CONNECT_TIMEOUT = 5
STORAGE_TIMEOUT = 10
_PROBE_ID = "0" * 32  # a blob id no object has (ids are random)
# The prefix each role may read (a NotFound there proves reach and grant); None: the bucket (buckets.get).
_READABLE = {
    Role.API: "generated",
    Role.TRAINER: "photos",
    Role.ORDER: "models",
    Role.MIGRATION: "photos",
    Role.RETENTION: None,
}


def check(
    settings: Settings,
    *,
    role: Role | None,
    require_migrated: bool = False,
    triton: bool = False,
    stopping: threading.Event | None = None,
) -> None:
    """Refuses (core/process.py's Refused) what the process cannot run with. The wait for Triton ends early when
    `stopping` is set (a SIGTERM while the process is still starting): the caller then checks it and exits."""
    check_keys(settings)
    check_database(settings, require_migrated=require_migrated)
    if role is not None:
        check_blob_store(settings, role)
    if triton:
        from faceharmony.core.jobs.evictions import replicas

        check_triton(replicas(settings), settings.triton_model, settings.triton_wait_seconds, stopping)


# --- database ------------------------------------------------------------------------------------------------
def _where(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(url)
    where = f"{parsed.hostname or 'localhost'}:{parsed.port or 5432}"
    return where, urllib.parse.unquote(parsed.username or "")


def _database_refusal(url: str, exc: BaseException) -> Refused:
    text = str(exc).strip()
    lower = text.lower()
    where, user = _where(url)
    dbname = urllib.parse.urlparse(url).path.lstrip("/")
    if (
        "authentication failed" in lower
        or "no password supplied" in lower
        or ("role" in lower and "does not exist" in lower)
    ):
        return Refused(f"DATABASE_AUTH_FAILED: PostgreSQL at {where} refused the credentials of user {user!r}")
    if "database" in lower and "does not exist" in lower:
        return Refused(f"DATABASE_MISSING: PostgreSQL at {where} has no database {dbname!r}")
    first = text.splitlines()[0] if text else type(exc).__name__
    reason = first.rsplit("failed: ", 1)[-1].strip() or type(exc).__name__
    return Refused(f"DATABASE_UNREACHABLE: cannot connect to PostgreSQL at {where}: {reason}")


def _fresh_local_keys(settings: Settings) -> bool:
    return settings.key_store == "local" and not (settings.keys_dir / "keystore.sqlite3").exists()


def check_database(settings: Settings, *, require_migrated: bool) -> None:
    """Connects (PostgreSQL: within DATABASE_CONNECT_TIMEOUT), checks the migrations where they are required,
    and refuses a fresh local key store beside a database that holds accounts (KEK_MISSING, as
    keys/factory.check_database would after making a new KEK: here nothing is made)."""
    import peewee as pw

    from faceharmony.core.db.connection import close_database, make_database
    from faceharmony.core.db.migrate import pending

    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path == ":memory:":
            return
        if not Path(path).exists():
            if require_migrated:
                raise Refused(MIGRATE_HINT)
            return  # a fresh install: the first start makes the file
        probe_url = url
    else:
        separator = "&" if "?" in url else "?"
        probe_url = url if "connect_timeout=" in url else f"{url}{separator}connect_timeout={DATABASE_CONNECT_TIMEOUT}"
    db = make_database(probe_url, pool_size=1)
    try:
        try:
            db.connect()
            db.execute_sql("SELECT 1")
            waiting = pending(db)
            accounts = not waiting and _fresh_local_keys(settings) and _holds_accounts(db)
        except (pw.OperationalError, pw.InterfaceError) as exc:
            if url.startswith("sqlite:///"):
                raise Refused(f"DATABASE_UNREACHABLE: the SQLite file cannot be opened ({exc})") from None
            raise _database_refusal(url, exc) from None
        if waiting and require_migrated:
            raise Refused(MIGRATE_HINT)
        if accounts:
            from faceharmony.core.keys.errors import KekMissing

            raise KekMissing(
                "the key store holds none of the database's data keys: wrong FACEHARMONY_DATA_DIR (keys/) or"
                " FACEHARMONY_KEY_STORE_BUCKET, or a lost key store; refusing to start"
            )
    finally:
        try:
            close_database(db)
        except Exception:  # noqa: BLE001 - a connection that never opened
            pass


def _holds_accounts(db) -> bool:
    from faceharmony.core.db.models import Account, AccountState

    with db.bind_ctx([Account]):
        return Account.select().where(Account.state != AccountState.PURGING).exists()


# --- blob store ----------------------------------------------------------------------------------------------
def check_blob_store(settings: Settings, role: Role) -> None:
    if settings.blob_backend != "gcs":
        return
    from google.api_core import exceptions as gexc
    from google.cloud.storage.retry import DEFAULT_RETRY

    from faceharmony.core.blobstore.gcs import make_client

    bucket_name = settings.gcs_bucket
    try:
        client = make_client(settings.gcs_project or None, settings.gcs_endpoint or None)
    except Exception as exc:  # noqa: BLE001 - google.auth's DefaultCredentialsError: no client at all
        raise Refused(f"STORAGE_UNREACHABLE: no Cloud Storage client ({type(exc).__name__})") from None
    bucket = client.bucket(bucket_name)
    retry = DEFAULT_RETRY.with_timeout(2 * STORAGE_TIMEOUT)
    prefix = _READABLE[role]
    try:
        if prefix is None:
            bucket.reload(timeout=STORAGE_TIMEOUT, retry=retry)
        else:
            bucket.blob(f"{prefix}/{_PROBE_ID}").reload(timeout=STORAGE_TIMEOUT, retry=retry)
    except gexc.NotFound as exc:
        # An object probe's NotFound is the answer hoped for; GCS says apart a missing bucket.
        if prefix is None or "bucket does not exist" in str(exc).lower():
            raise Refused(f"STORAGE_BUCKET_MISSING: the bucket {bucket_name} does not exist") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        what = "the bucket" if prefix is None else f"{prefix}/"
        raise Refused(
            f"STORAGE_FORBIDDEN: bucket {bucket_name} refuses the {role.value} role reading {what} ({exc.code})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - connection refused, DNS, timeouts, 5xx
        raise Refused(
            f"STORAGE_UNREACHABLE: cannot reach bucket {bucket_name}"
            + (f" at {settings.gcs_endpoint}" if settings.gcs_endpoint else "")
            + f" ({type(exc).__name__})"
        ) from None


# --- keys ----------------------------------------------------------------------------------------------------
def check_keys(settings: Settings) -> None:
    """An existing key store is opened and checked without making anything (a fresh local one is left for
    install_keyring to make once every probe passed). KeysUnavailable/KekMissing propagate (core/process.py)."""
    from faceharmony.core.keys.factory import open_keyring

    if settings.key_store == "local" and not (settings.keys_dir / "keystore.sqlite3").exists():
        return
    keyring = open_keyring(settings)
    try:
        keyring.store.check()
        if not keyring.store.empty():
            keyring.kek.ensure(create=False)
    finally:
        close = getattr(keyring.store, "close", None)
        if close is not None:
            close()


# --- Triton --------------------------------------------------------------------------------------------------
def triton_state(url: str, model: str, timeout: float = 3.0) -> str | None:
    """None when Triton at `url` is live and `model` ready, else why not (no model-control call)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(url)
    except Exception as exc:  # noqa: BLE001 - a malformed address
        return f"bad address ({type(exc).__name__})"
    try:
        if not client.is_server_live(client_timeout=timeout):
            return "server not live"
        if not client.is_model_ready(model, client_timeout=timeout):
            return f"model {model} not ready"
        return None
    except InferenceServerException as exc:
        status = str(exc.status() or "").rsplit(".", 1)[-1] or "UNAVAILABLE"
        return f"not reachable ({status})"
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


def replicas_state(urls: Sequence[str], model: str, timeout: float = 3.0) -> str | None:
    """None when at least one of the Triton replicas is ready (the others' keys fail over to it), else why not."""
    states = []
    for url in urls:
        state = triton_state(url, model, timeout)
        if state is None:
            return None
        states.append(state if len(urls) == 1 else f"{url}: {state}")
    return "; ".join(states)


def check_triton(
    urls: str | Sequence[str], model: str, wait_seconds: float, stopping: threading.Event | None = None
) -> None:
    """Waits up to `wait_seconds` for at least one replica to be ready; TRITON_UNAVAILABLE after that. Returns at
    once when `stopping` is set (the process was told to stop: not being ready then is no refusal)."""
    stopping = stopping or threading.Event()
    urls = [urls] if isinstance(urls, str) else list(urls)
    url = ", ".join(urls)
    deadline = time.monotonic() + wait_seconds
    state = replicas_state(urls, model)
    if state is not None and wait_seconds > 0:
        log.info("waiting for Triton", extra={"triton_url": url, "state": state, "wait_seconds": wait_seconds})
    while state is not None and time.monotonic() < deadline:
        if stopping.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            return
        state = replicas_state(urls, model)
    if state is not None and not stopping.is_set():
        raise Refused(f"TRITON_UNAVAILABLE: Triton at {url}: {state}")
