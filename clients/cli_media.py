"""The `faceharmony` commands for photos, models and orders: uploads with a bar and a table of verdicts,
training and orders followed with a bar and an ETA, generated photos listed, saved, rejected and deleted.

An upload is one atomic RPC per file, so an interrupted upload leaves nothing half-done on the server: the
first Ctrl-C lets the file in flight finish and sends no more (the photos reported stored are exactly the
ones stored); a second one stops at once, and the file then in flight is stored whole or not at all.

A watch (--watch, watch-model, watch-order) outlives a server restart: gRPC retries a stream only until its first
message, so a watch that fails later with UNAVAILABLE or DEADLINE_EXCEEDED is opened again here (each watch starts
from the current state, so nothing is missed or repeated wrongly), with a bounded backoff, until --timeout.
Creates (a model, an order) carry a request_id, printed if Ctrl-C cuts the call off, so a re-run with
--request-id cannot make a second one. Downloads check where they will write before they fetch (fetching marks
a photo downloaded).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import grpc
import tenacity
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from faceharmony.clients import cli_tables as tables
from faceharmony.clients.cli_output import ExitCode, Failure, message_dict, shown
from faceharmony.clients.cli_state import State, state
from faceharmony.clients.sdk import FaceHarmonyError, Verdict
from faceharmony.v1 import model_pb2, order_pb2

media = typer.Typer()

PHOTOS, MODELS, ORDERS = "Photos", "Models", "Orders"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# One upload command sends at most this many files (an account holds at most 200 photos by default).
MAX_FILES = 200
# A model takes at most this many photos (the server's default FACEHARMONY_MODEL_MAX_PHOTOS).
MODEL_MAX_PHOTOS = 20
# How long a watch is followed, across reopenings, unless --timeout says otherwise (seconds).
FOLLOW_TIMEOUT = 2 * 3600.0
# A watch is reopened after these (never before it has reached the server once: a wrong address stays an error).
REOPEN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

ID = Annotated[str, typer.Argument(metavar="ID")]
FORCE = Annotated[bool, typer.Option("--force", help="Overwrite the file if it exists.")]


# --- photos --------------------------------------------------------------------------------------------------


def image_files(paths: Sequence[Path], limit: int = MAX_FILES) -> list[Path]:
    """The files to upload: files as named, and the images (by extension) directly inside named folders."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise typer.BadParameter(f"no {', '.join(IMAGE_SUFFIXES)} files in {path}", param_hint="PATH")
            files.extend(found)
        else:
            files.append(path)
    files = list(dict.fromkeys(files))
    if len(files) > limit:
        raise typer.BadParameter(f"{len(files)} files: at most {limit} at a time", param_hint="PATH")
    return files


class StopAfterCurrent:
    """While in force, the first Ctrl-C asks the loop to stop after the file in flight and the second stops it
    now (KeyboardInterrupt), until `finishing()`: from then on (the report is printed) Ctrl-C is ignored.
    Outside the main thread (no signal handler can be set there) Ctrl-C is left as it is."""

    def __init__(self) -> None:
        self.requested = False
        self.on_request: Callable[[], None] | None = None
        self._finishing = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._finishing:
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.on_request is not None:
            self.on_request()

    def finishing(self) -> None:
        self._finishing = True

    def __enter__(self) -> StopAfterCurrent:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class Sent:
    """What an upload loop did: a verdict per file sent, the file cut off by a second Ctrl-C, the call that failed."""

    verdicts: list[Verdict] = field(default_factory=list)
    in_flight: Path | None = None
    cut_off: Path | None = None
    failure: FaceHarmonyError | None = None
    bug: BaseException | None = None


def send(st: State, files: Sequence[Path], guard: StopAfterCurrent) -> Sent:
    """Uploads the files in turn with a bar, until the end, a Ctrl-C or a failure that is not a verdict.

    The calls run on a worker thread while this one waits, so Ctrl-C is seen at once (a blocking gRPC call holds
    Python's signal handlers until it returns); a second Ctrl-C closes the channel, which cancels the call."""
    sent = Sent()
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with st.out.progress(*columns) as bar:
        task = bar.add_task("uploading", total=len(files))
        guard.on_request = lambda: bar.update(task, description="stopping after this file (Ctrl-C again: now)")

        def to_send() -> Iterator[Path]:
            for path in files:
                if guard.requested:
                    return
                sent.in_flight = path
                bar.update(task, description=path.name)
                yield path

        def seen(verdict: Verdict) -> None:
            sent.verdicts.append(verdict)
            sent.in_flight = None
            bar.advance(task)

        def run() -> None:
            try:
                st.client.photos.upload_files(to_send(), on_verdict=seen)
            except FaceHarmonyError as exc:
                sent.failure = exc
            except BaseException as exc:  # noqa: BLE001 (a bug: raised again on the main thread)
                sent.bug = exc
            finally:
                if sent.failure is None:
                    sent.in_flight = None

        worker = threading.Thread(target=run, name="upload", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.1)
        except KeyboardInterrupt:
            st.close()  # ends the call in flight (CANCELLED); the server stores that photo whole or not at all
            worker.join()
            sent.cut_off, sent.failure = sent.in_flight, None
    if sent.bug is not None:
        raise sent.bug
    return sent


@media.command(rich_help_panel=PHOTOS)
def upload(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(exists=True, metavar="PATH", help="Photos, or folders of them (.jpg .jpeg .png .webp)."),
    ],
) -> None:
    """Upload cropped face photos: each is verified (one face, nothing unsafe) and stored or refused."""
    st = state(ctx)
    files = image_files(paths)
    with StopAfterCurrent() as guard:
        sent = send(st, files, guard)
        guard.finishing()
        done = sent.verdicts
        names = [shown(str(p)) for p in files[: len(done)]]
        if st.out.json:
            st.out.emit(
                {
                    "verdicts": [_verdict_dict(name, v) for name, v in zip(names, done, strict=True)],
                    "uploaded": sum(v.ok for v in done),
                    "refused": sum(not v.ok for v in done),
                    "cut_off": None if sent.cut_off is None else shown(str(sent.cut_off)),
                    "not_sent": [shown(str(p)) for p in files[len(done) + (sent.cut_off is not None) :]],
                }
            )
        elif done:
            st.out.show(tables.verdicts(names, done))
    stored = sum(v.ok for v in done)
    summary = f"{stored} of {len(files)} uploaded" + (f", {len(done) - stored} refused" if len(done) > stored else "")
    unsent = len(files) - len(done) - (sent.cut_off is not None)
    if sent.cut_off is not None:
        raise Failure(
            ExitCode.INTERRUPTED,
            "INTERRUPTED",
            f"interrupted: {summary}; {shown(str(sent.cut_off))} was cut off in flight (stored whole or not at all: "
            f"see `faceharmony photos`); the other {unsent} were not sent",
        )
    if guard.requested:
        raise Failure(ExitCode.INTERRUPTED, "INTERRUPTED", f"interrupted: {summary}; the other {unsent} were not sent")
    if sent.failure is not None:
        if done:
            st.out.warn(f"stopped: {summary}; the other {unsent} were not sent")
        raise sent.failure
    st.out.note(summary)
    if stored < len(done):
        raise typer.Exit(ExitCode.SOME_REFUSED)


# The command's name before folders and tables.
media.command("upload-photo", hidden=True)(upload)


def _verdict_dict(file: str, v: Verdict) -> dict[str, Any]:
    if v.photo is not None:
        return {"file": file, "accepted": True, "photo": message_dict(v.photo)}
    error = v.error
    return {
        "file": file,
        "accepted": False,
        "reason": v.reason,
        "code": error.code.name if error else "",
        "message": error.message if error else "",
    }


@media.command(rich_help_panel=PHOTOS)
def photos(ctx: typer.Context) -> None:
    """List my photos."""
    st = state(ctx)
    st.out.listing("photos", st.client.photos.list_photos(), tables.photos)


@media.command(rich_help_panel=PHOTOS)
def delete_photo(ctx: typer.Context, photo_id: ID) -> None:
    """Delete a photo that belongs to no model."""
    st = state(ctx)
    st.client.photos.delete_photo(photo_id)
    st.out.result({}, f"Photo {photo_id} deleted.")


# --- models --------------------------------------------------------------------------------------------------

WATCH = Annotated[bool, typer.Option("--watch", help="Follow it with a progress bar until it is done.")]
TIMEOUT = Annotated[
    float,
    typer.Option(
        "--timeout", min=1, metavar="SECONDS", help="Stop following after this long (the work goes on on the server)."
    ),
]
REQUEST_ID = Annotated[
    str,
    typer.Option(
        "--request-id", metavar="ID", help="The id an interrupted run printed: a re-run is then the same request."
    ),
]
E = TypeVar("E")


@dataclass(frozen=True)
class Watch:
    """A follow in progress: what is watched (kind and id, for the words), its bar, and how long it may take."""

    kind: str  # "model" or "order"
    id: str
    bar: Progress
    task: TaskID
    timeout: float
    reached: bool  # the server was reached already (a create): a first failure is reopened too


def follow(
    st: State,
    watch: Watch,
    open_watch: Callable[..., Iterable[E]],
    on_event: Callable[[E], None],
    now_said: Callable[[], str],
) -> None:
    """Reads open_watch(id, timeout=seconds) to its end, opening it again after UNAVAILABLE or DEADLINE_EXCEEDED
    once it has reached the server (watch.reached, or a first event), with a bounded backoff, until watch.timeout
    seconds have passed in all. Giving up raises Failure (exit 4) that says what happened and what it was last."""
    timeout = watch.timeout
    deadline = time.monotonic() + timeout
    seen = watch.reached
    away = False  # UNAVAILABLE since the last event: the server is gone, not slow

    def once() -> None:
        nonlocal seen, away
        try:
            for event in open_watch(watch.id, timeout=max(deadline - time.monotonic(), 0.001)):
                seen, away = True, False
                on_event(event)
        except FaceHarmonyError as exc:
            away = away or exc.code == grpc.StatusCode.UNAVAILABLE
            raise

    def reopenable(exc: BaseException) -> bool:
        return seen and isinstance(exc, FaceHarmonyError) and exc.code in REOPEN_CODES

    backoff = tenacity.wait_exponential(multiplier=0.5, max=10) + tenacity.wait_random(0, 0.5)

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        code = exc.code.name if isinstance(exc, FaceHarmonyError) else "?"
        pause = rs.next_action.sleep if rs.next_action else 0.0
        said = f"the watch ended ({code}): opening it again in {pause:.1f} s"
        watch.bar.update(watch.task, description=said)
        st.out.tick(said)

    try:
        tenacity.Retrying(
            retry=tenacity.retry_if_exception(reopenable),
            wait=lambda rs: min(backoff(rs), max(deadline - time.monotonic(), 0.0)),
            stop=lambda rs: time.monotonic() >= deadline - 0.1,
            before_sleep=before_sleep,
            reraise=True,
        )(once)
    except FaceHarmonyError as exc:
        if not reopenable(exc):
            raise
        if away:
            happened = f"the server at {st.server} went away and was not back within --timeout ({timeout:g} s)"
        else:
            happened = f"stopped following after {timeout:g} s (--timeout)"
        raise Failure(
            ExitCode.UNREACHABLE,
            "WATCH_GAVE_UP",
            f"{happened}; {watch.kind} {watch.id} was {now_said()} and goes on without you: "
            f"`faceharmony watch-{watch.kind} {watch.id}`",
        ) from None


def follow_model(st: State, model_id: str, *, timeout: float = FOLLOW_TIMEOUT, reached: bool = False) -> None:
    """Follows training (WatchModel): a bar with an ETA, then the outcome; exits 1 if it failed."""
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
    )
    last: model_pb2.WatchModelResponse | None = None

    def now_said() -> str:
        return f"{tables.word(model_pb2.ModelState, last.state)} {last.progress:.0%}" if last else "not heard of yet"

    with st.out.progress(*columns) as bar:
        task = bar.add_task("waiting", total=1.0)

        def seen(event: model_pb2.WatchModelResponse) -> None:
            nonlocal last
            last = event
            if st.out.json:
                st.out.emit_line(message_dict(event))
                return
            said = tables.word(model_pb2.ModelState, event.state)
            if event.message and event.message.lower() != said:
                said = f"{said}: {event.message}"
            bar.update(task, completed=event.progress, description=said)
            st.out.tick(f"{said} {event.progress:.0%}")

        watch = Watch("model", model_id, bar, task, timeout, reached)
        follow(st, watch, st.client.models.watch_model, seen, now_said)
    if last is None or last.state != model_pb2.MODEL_STATE_READY:
        m = last.model if last is not None else None
        said = tables.word(model_pb2.ModelState, last.state) if last else "gone"
        reason = f": {m.failure_reason}" if m is not None and m.failure_reason else ""
        raise Failure(ExitCode.REFUSED, "MODEL_NOT_READY", f"model {model_id} ended {said!r}{reason}")
    st.out.note(
        f"Model {model_id} is ready (version {last.model.version}): `faceharmony order --style STYLE {model_id}`"
    )


def usable_photos(st: State) -> list[str]:
    """The ids of my photos that a new model may take: in no model, not expired; the newest MODEL_MAX_PHOTOS."""
    now = dt.datetime.now(dt.UTC)
    free = [
        p
        for p in st.client.photos.list_photos()
        if not p.model_id and (not p.HasField("expire_time") or p.expire_time.ToDatetime(dt.UTC) > now)
    ]
    free.sort(key=lambda p: (p.create_time.seconds, p.create_time.nanos, p.id), reverse=True)
    if len(free) > MODEL_MAX_PHOTOS:
        st.out.note(
            f"{len(free)} photos are in no model and a model takes at most {MODEL_MAX_PHOTOS}: "
            f"using the newest {MODEL_MAX_PHOTOS} (name them to choose)"
        )
    return [p.id for p in free[:MODEL_MAX_PHOTOS]]


@contextlib.contextmanager
def placing(what: str, listing: str, request_id: str) -> Iterator[None]:
    """A create cut off by Ctrl-C: it may have been made, and a re-run with its request_id is the same request."""
    try:
        yield
    except KeyboardInterrupt:
        raise Failure(
            ExitCode.INTERRUPTED,
            "INTERRUPTED",
            f"interrupted: the {what} may have been placed: check `faceharmony {listing}`; run the command again "
            f"with --request-id {request_id} and it is the same {what}, never a second one",
        ) from None


@media.command(rich_help_panel=MODELS)
def create_model(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")],
    photo_ids: Annotated[list[str] | None, typer.Argument(metavar="PHOTO_ID", help="4-20 of my photos.")] = None,
    all_photos: Annotated[
        bool, typer.Option("--all-photos", help="Use my photos that are in no model and not expired (newest 20).")
    ] = False,
    watch: WATCH = False,
    timeout: TIMEOUT = FOLLOW_TIMEOUT,
    request_id: REQUEST_ID = "",
) -> None:
    """Train a personal model from 4-20 of my photos."""
    st = state(ctx)
    ids = list(photo_ids or [])
    if all_photos == bool(ids):
        raise typer.BadParameter("name the photos, or give --all-photos (not both)", param_hint="PHOTO_ID")
    if all_photos:
        ids = usable_photos(st)
    request_id = request_id or uuid.uuid4().hex
    with placing("model", "models", request_id):
        m = st.client.models.create_model(name, ids, request_id=request_id)
    _started(st, m, tables.model(m), functools.partial(follow_model, timeout=timeout) if watch else None, "watch-model")


def _started(st: State, message: Any, table: Any, follow: Callable[..., None] | None, watch: str) -> None:
    """A new model or order: shown, then followed (--watch) or with the command that follows it."""
    if st.out.json:
        (st.out.emit_line if follow else st.out.emit)(message_dict(message))
    else:
        st.out.show(table)
    if follow is not None:
        follow(st, message.id, reached=True)
    else:
        st.out.note(f"Follow it with `faceharmony {watch} {message.id}`.")


@media.command(rich_help_panel=MODELS)
def watch_model(ctx: typer.Context, model_id: ID, timeout: TIMEOUT = FOLLOW_TIMEOUT) -> None:
    """Follow a model's training with a progress bar and an ETA."""
    follow_model(state(ctx), model_id, timeout=timeout)


@media.command(rich_help_panel=MODELS)
def models(ctx: typer.Context) -> None:
    """List my models."""
    st = state(ctx)
    st.out.listing("models", st.client.models.list_models(), tables.models)


@media.command(rich_help_panel=MODELS)
def delete_model(ctx: typer.Context, model_id: ID) -> None:
    """Delete a model (hidden now, purged after the grace period)."""
    st = state(ctx)
    m = st.client.models.delete_model(model_id)
    st.out.result(message_dict(m), f"Model {m.id} deleted; purged after {tables.when(m, 'purge_after')}.")


@media.command(rich_help_panel=MODELS)
def retrain(ctx: typer.Context, model_id: ID, watch: WATCH = False, timeout: TIMEOUT = FOLLOW_TIMEOUT) -> None:
    """Train a model again from its photos."""
    st = state(ctx)
    m = st.client.models.retrain_model(model_id)
    _started(st, m, tables.model(m), functools.partial(follow_model, timeout=timeout) if watch else None, "watch-model")


# --- orders --------------------------------------------------------------------------------------------------


def follow_order(st: State, order_id: str, *, timeout: float = FOLLOW_TIMEOUT, reached: bool = False) -> None:
    """Follows an order (WatchOrder): a bar of images made, then the outcome; exits 1 unless it completed."""
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
    )
    last: order_pb2.Order | None = None

    def now_said() -> str:
        if last is None:
            return "not heard of yet"
        return f"{tables.word(order_pb2.OrderState, last.state)} ({last.images_done}/{last.images_total} made)"

    with st.out.progress(*columns) as bar:
        task = bar.add_task("waiting", total=None)

        def seen(event: order_pb2.WatchOrderResponse) -> None:
            nonlocal last
            last = event.order
            if st.out.json:
                st.out.emit_line(message_dict(event))
                return
            failed = f", {last.images_failed} failed" if last.images_failed else ""
            said = tables.word(order_pb2.OrderState, last.state)
            bar.update(
                task,
                total=last.images_total or None,
                completed=last.images_done + last.images_failed,
                description=f"{said}{failed}",
            )
            st.out.tick(f"{said} {last.images_done}/{last.images_total}{failed}")

        watch = Watch("order", order_id, bar, task, timeout, reached)
        follow(st, watch, st.client.orders.watch_order, seen, now_said)
    if last is None:
        raise Failure(ExitCode.REFUSED, "ORDER_NOT_COMPLETED", f"order {order_id} ended without news")
    said = tables.word(order_pb2.OrderState, last.state)
    outcome = f"Order {order_id} {said}: {last.images_done}/{last.images_total} made, {last.images_failed} failed"
    if last.state != order_pb2.ORDER_STATE_COMPLETED:
        raise Failure(ExitCode.REFUSED, "ORDER_NOT_COMPLETED", outcome)
    st.out.note(f"{outcome}. See them with `faceharmony generated --order {order_id}`.")


@media.command(rich_help_panel=ORDERS)
def styles(ctx: typer.Context) -> None:
    """List the portrait styles."""
    st = state(ctx)
    st.out.listing("styles", st.client.orders.list_styles(), tables.styles)


@media.command(rich_help_panel=ORDERS)
def order(
    ctx: typer.Context,
    model_ids: Annotated[list[str], typer.Argument(metavar="MODEL_ID", help="My ready models.")],
    style: Annotated[str, typer.Option(help="A style id (see `faceharmony styles`).")],
    count: Annotated[int, typer.Option(help="Images per model.")] = 1,
    request_id: REQUEST_ID = "",
    watch: WATCH = False,
    timeout: TIMEOUT = FOLLOW_TIMEOUT,
) -> None:
    """Order generated portraits from my ready models."""
    st = state(ctx)
    request_id = request_id or uuid.uuid4().hex
    with placing("order", "orders", request_id):
        o = st.client.orders.create_order(model_ids, style, count, request_id=request_id)
    _started(st, o, tables.order(o), functools.partial(follow_order, timeout=timeout) if watch else None, "watch-order")


@media.command(rich_help_panel=ORDERS)
def watch_order(ctx: typer.Context, order_id: ID, timeout: TIMEOUT = FOLLOW_TIMEOUT) -> None:
    """Follow an order with a progress bar of the images made."""
    follow_order(state(ctx), order_id, timeout=timeout)


@media.command(rich_help_panel=ORDERS)
def orders(ctx: typer.Context) -> None:
    """List my orders."""
    st = state(ctx)
    st.out.listing("orders", st.client.orders.list_orders(), tables.orders)


@media.command(rich_help_panel=ORDERS)
def generated(
    ctx: typer.Context, order_id: Annotated[str, typer.Option("--order", help="Only this order's photos.")] = ""
) -> None:
    """List my generated photos."""
    st = state(ctx)
    st.out.listing("generated_photos", st.client.orders.list_generated_photos(order_id=order_id), tables.generated)


def _write_new(path: Path, data: bytes, force: bool) -> None:
    """Writes the file; without force, one that appeared since _check_destination is still not overwritten."""
    with path.open("wb" if force else "xb") as fh:
        fh.write(data)


def _check_destination(path: Path, force: bool) -> None:
    """Refuses (exit 1), before anything is fetched, a FILE that could not be written: fetching marks it downloaded."""
    folder = path.parent

    def refuse(reason: str, said: str) -> Failure:
        return Failure(ExitCode.REFUSED, reason, f"{said}; nothing was fetched")

    if not folder.is_dir():
        raise refuse("NO_SUCH_FOLDER", f"{shown(str(folder))} is not a folder that exists")
    if path.is_dir():
        raise refuse("IS_A_FOLDER", f"{shown(str(path))} is a folder")
    if path.exists() and not force:
        raise refuse("FILE_EXISTS", f"{shown(str(path))} exists; give --force to overwrite it")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise refuse("NOT_WRITABLE", f"cannot write {shown(str(path))} (permission denied)")


OUT = Annotated[Path | None, typer.Argument(metavar="FILE", dir_okay=False, help="Where to save it.")]


@media.command(rich_help_panel=ORDERS)
def download(ctx: typer.Context, photo_id: ID, out: OUT = None, force: FORCE = False) -> None:
    """Save a generated photo as PNG (marks it downloaded); FILE defaults to ID.png."""
    st = state(ctx)
    path = out or Path(f"{photo_id}.png")
    _check_destination(path, force)
    data = st.client.orders.download(photo_id)
    _write_new(path, data, force)
    st.out.result({"path": str(path), "bytes": len(data)}, f"Saved {path} ({len(data):,} bytes).")


@media.command(rich_help_panel=ORDERS)
def preview(ctx: typer.Context, photo_id: ID, out: OUT = None, force: FORCE = False) -> None:
    """Save a generated photo's small JPEG preview; FILE defaults to ID-preview.jpg."""
    st = state(ctx)
    path = out or Path(f"{photo_id}-preview.jpg")
    _check_destination(path, force)
    reply = st.client.orders.get_preview(photo_id)
    _write_new(path, reply.jpeg, force)
    st.out.result(
        {"path": str(path), "width": reply.width, "height": reply.height},
        f"Saved {path} ({reply.width}x{reply.height}).",
    )


@media.command(rich_help_panel=ORDERS)
def reject(ctx: typer.Context, photo_id: ID) -> None:
    """Reject a generated photo (purged after the retention period)."""
    st = state(ctx)
    g = st.client.orders.reject(photo_id)
    st.out.result(message_dict(g), f"Rejected {g.id}; purged after {tables.when(g, 'purge_after')}.")


@media.command(rich_help_panel=ORDERS)
def delete_generated(ctx: typer.Context, photo_id: ID) -> None:
    """Delete a generated photo now."""
    st = state(ctx)
    st.client.orders.delete(photo_id)
    st.out.result({}, f"Generated photo {photo_id} deleted.")
