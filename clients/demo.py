"""`faceharmony-demo`: the whole product in one command, against the system `make up` started.

    .venv/bin/faceharmony-demo                     # 127.0.0.1:50051, codes read from ./data/outbox
    .venv/bin/faceharmony-demo --server 127.0.0.1:50061 --data-dir /tmp/fh/data --out sheet.png --keep

It signs up two demo users (fresh addresses each run, approved by a staff account made with
`faceharmony-admin`, sign-in codes read from the embedded outbox: `faceharmony.clients.embedded`), uploads
each one's sample photos (`faceharmony.clients.samples`: faces made from photographs that ship in
scikit-image, and refused examples) and shows the server's verdicts, trains a model for each and follows
the training, orders portraits from both models at the same time (two threads, each creating its order and
watching it), downloads the images, and writes a contact sheet (PNG: inputs with their verdicts, the
outputs, the timings and how the two orders overlapped). Everything goes through the public gRPC API
(`faceharmony.clients.sdk`), as any client's calls do.

It is bounded and tidy: every call and every wait has a deadline (`--train-timeout`, `--order-timeout`);
Ctrl-C stops it with one line; and unless `--keep` is given it deletes both demo accounts at the end
(also after a failure or Ctrl-C), so that the server purges them with everything in them after its grace
period (the staff account, `demo-staff@faceharmony.example`, stays for the next run). `--json-summary FILE`
writes what happened, without names or addresses, for scripts and tests; the contact sheet and the summary
are written when the run got to the end. Exit codes: 0 done, 1 the system refused or failed a step (or did
not finish it in time), 2 it cannot run (no server, no outbox, scikit-image missing) or a usage error, 130
Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from faceharmony.clients import samples
from faceharmony.clients.embedded import EmbeddedError, EmbeddedSystem
from faceharmony.clients.sdk import DEFAULT_TARGET, Client, FaceHarmonyError
from faceharmony.v1 import model_pb2, order_pb2

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130
ADDRESS_DOMAIN = "faceharmony.example"
NOISE_NOTE_SHEET = (
    "The portraits look like noise, and should: the embedded base model is a tiny pipeline with random weights.",
    "With real Stable Diffusion 1.5-style weights (FACEHARMONY_BASE_MODEL) the same flow makes portraits of the person.",
)
NOISE_NOTE = " ".join(NOISE_NOTE_SHEET)


class DemoFailed(Exception):
    """A step the system refused or did not finish in time; the message says which."""


# --------------------------------------------------------------------------- what happened


@dataclass
class Upload:
    sample: samples.Sample
    seconds: float
    photo_id: str = ""
    reason: str = ""  # "" when accepted

    @property
    def accepted(self) -> bool:
        return bool(self.photo_id)

    @property
    def as_expected(self) -> bool:
        """Whether the server's verdict is the one the sample was made for."""
        return (self.sample.expect or "") == ("" if self.accepted else self.reason)


@dataclass
class Portrait:
    photo_id: str
    width: int
    height: int
    png: bytes


@dataclass
class DemoUser:
    person: samples.Person
    address: str
    client: Client | None = None
    uploads: list[Upload] = field(default_factory=list)
    model_id: str = ""
    model_state: str = ""
    queued_seconds: float = 0.0
    training_seconds: float = 0.0
    order_id: str = ""
    order_state: str = ""
    order_start: float = 0.0  # seconds since both orders were started
    order_end: float = 0.0
    image_times: list[float] = field(default_factory=list)  # seconds since both orders started, per image done
    portraits: list[Portrait] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.person.name

    @property
    def fh(self) -> Client:
        assert self.client is not None, "signed in first"
        return self.client


@dataclass
class Run:
    server: str
    started: dt.datetime
    users: list[DemoUser]
    style: str = ""
    count: int = 0
    deleted: bool = False

    def overlap(self) -> float:
        """Seconds during which both orders were in progress."""
        a, b = self.users
        return max(0.0, min(a.order_end, b.order_end) - max(a.order_start, b.order_start))

    def summary(self, sheet: Path | None, size: tuple[int, int] | None) -> dict[str, Any]:
        """What happened, without names or addresses: for --json-summary."""
        return {
            "server": self.server,
            "started": self.started.isoformat(),
            "style": self.style,
            "portraits_per_order": self.count,
            "orders_overlap_seconds": round(self.overlap(), 3),
            "accounts_deleted": self.deleted,
            "contact_sheet": None
            if sheet is None or size is None
            else {"path": str(sheet), "width": size[0], "height": size[1]},
            "users": [
                {
                    "person": u.person.source,
                    "uploads": [
                        {
                            "file": up.sample.name,
                            "expected": up.sample.expect or "ACCEPTED",
                            "verdict": "ACCEPTED" if up.accepted else up.reason,
                            "seconds": round(up.seconds, 3),
                        }
                        for up in u.uploads
                    ],
                    "model": {
                        "id": u.model_id,
                        "state": u.model_state,
                        "queued_seconds": round(u.queued_seconds, 3),
                        "training_seconds": round(u.training_seconds, 3),
                    },
                    "order": {
                        "id": u.order_id,
                        "state": u.order_state,
                        "start_seconds": round(u.order_start, 3),
                        "end_seconds": round(u.order_end, 3),
                        "wall_seconds": round(u.order_end - u.order_start, 3),
                    },
                    "images": [
                        {"id": p.photo_id, "width": p.width, "height": p.height, "bytes": len(p.png)}
                        for p in u.portraits
                    ],
                }
                for u in self.users
            ],
        }


# --------------------------------------------------------------------------- the steps


def new_address(person: str, run_id: str) -> str:
    return f"demo-{run_id}-{person}@{ADDRESS_DOMAIN}"


def sign_up(system: EmbeddedSystem, users: Sequence[DemoUser], console: Console) -> None:
    for user in users:
        with console.status(f"Signing up {user.label} (waiting list, approval, emailed code)..."):
            user.client = system.sign_up(user.address, user.label)
        console.print(f"[green]Signed up[/] {user.label} as {user.address}")


def upload(user: DemoUser, *, timeout: float) -> None:
    for sample in user.person.samples:
        started = time.monotonic()
        try:
            photo = user.fh.photos.upload_photo(sample.content, filename=sample.name, timeout=timeout)
        except FaceHarmonyError as exc:
            if exc.code.name != "INVALID_ARGUMENT":  # not a verdict on the photo: the run cannot go on
                raise DemoFailed(f"uploading {sample.name} failed: {exc}") from exc
            user.uploads.append(Upload(sample, time.monotonic() - started, reason=exc.reason or exc.code.name))
        else:
            user.uploads.append(Upload(sample, time.monotonic() - started, photo_id=photo.id))


def verdict_table(user: DemoUser) -> Table:
    table = Table(title=f"{user.label}: the server's verdict on each upload", title_justify="left")
    for column in ("file", "what it shows", "verdict", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left", no_wrap=column != "what it shows")
    for up in user.uploads:
        verdict = "[green]accepted[/]" if up.accepted else f"[red]{up.reason}[/]"
        if not up.as_expected:
            verdict += f" [yellow](expected {up.sample.expect or 'ACCEPTED'})[/]"
        table.add_row(up.sample.name, up.sample.caption, verdict, f"{up.seconds:.2f}")
    return table


def in_parallel(jobs: Sequence[Callable[[], None]], timeout: float) -> None:
    """Runs each job on its own thread and waits for all of them, at most `timeout` seconds; the first error is raised."""
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="demo")
    try:
        futures: list[Future[None]] = [pool.submit(job) for job in jobs]
        deadline = time.monotonic() + timeout
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout as exc:
                raise DemoFailed(f"not finished within {timeout:.0f} s") from exc
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def train(users: Sequence[DemoUser], progress: Progress, *, timeout: float) -> None:
    """Creates a model for each user from the accepted photos, then follows both until READY."""
    for user in users:
        # A photo accepted against expectation (a verifier that let a cat through) is not trained on.
        photo_ids = [up.photo_id for up in user.uploads if up.accepted and up.as_expected]
        try:
            user.model_id = user.fh.models.create_model(user.person.name.split()[0], photo_ids).id
        except FaceHarmonyError as exc:
            raise DemoFailed(f"creating {user.label}'s model failed: {exc}") from exc

    def follow(user: DemoUser, task: Any) -> None:
        created = time.monotonic()
        training_since = 0.0
        state = "QUEUED"
        try:
            for event in user.fh.models.watch_model(user.model_id, timeout=timeout):
                state = model_pb2.ModelState.Name(event.state).removeprefix("MODEL_STATE_")
                if state == "TRAINING" and not training_since:
                    training_since = time.monotonic()
                progress.update(task, completed=event.progress * 100, description=f"{user.label}: {state.lower()}")
        except FaceHarmonyError as exc:
            if exc.code.name == "DEADLINE_EXCEEDED":
                raise DemoFailed(
                    f"{user.label}'s model was not READY within {timeout:.0f} s (--train-timeout)"
                ) from exc
            raise DemoFailed(f"following {user.label}'s model failed: {exc}") from exc
        done = time.monotonic()
        training_since = training_since or done
        user.model_state = state
        user.queued_seconds, user.training_seconds = training_since - created, done - training_since
        if state != "READY":
            model = user.fh.models.get_model(user.model_id)
            raise DemoFailed(f"{user.label}'s model ended {state}: {model.failure_reason or 'no reason given'}")
        progress.update(task, completed=100, description=f"{user.label}: ready")

    tasks = [progress.add_task(f"{u.label}: queued", total=100) for u in users]
    in_parallel([partial(follow, u, t) for u, t in zip(users, tasks)], timeout + 30)


def order(users: Sequence[DemoUser], style: str, count: int, progress: Progress, *, timeout: float) -> None:
    """Both users order portraits at the same moment, each on its own thread, and follow their orders."""
    start = threading.Barrier(len(users))
    origin = time.monotonic()

    def place(user: DemoUser, task: Any) -> None:
        start.wait(timeout=30)
        user.order_start = time.monotonic() - origin
        try:
            placed = user.fh.orders.create_order([user.model_id], style, count)
            user.order_id = placed.id
            state = "QUEUED"
            for event in user.fh.orders.watch_order(placed.id, timeout=timeout):
                o = event.order
                finished = o.images_done + o.images_failed
                user.image_times += [time.monotonic() - origin] * (finished - len(user.image_times))
                state = order_pb2.OrderState.Name(o.state).removeprefix("ORDER_STATE_")
                progress.update(
                    task,
                    total=o.images_total or count,
                    completed=finished,
                    description=f"{user.label}: {state.lower()}",
                )
        except FaceHarmonyError as exc:
            if exc.code.name == "DEADLINE_EXCEEDED":
                raise DemoFailed(f"{user.label}'s order was not done within {timeout:.0f} s (--order-timeout)") from exc
            raise DemoFailed(f"{user.label}'s order failed: {exc}") from exc
        user.order_end = time.monotonic() - origin
        user.order_state = state
        if state != "COMPLETED":
            raise DemoFailed(f"{user.label}'s order ended {state}")

    tasks = [progress.add_task(f"{u.label}: ordering", total=count) for u in users]
    in_parallel([partial(place, u, t) for u, t in zip(users, tasks)], timeout + 30)


def download(user: DemoUser, *, timeout: float) -> None:
    for photo in user.fh.orders.list_generated_photos(order_id=user.order_id):
        content = user.fh.orders.download(photo.id, timeout=timeout)
        user.portraits.append(Portrait(photo.id, photo.width, photo.height, content))


def delete_accounts(server: str, users: Sequence[DemoUser]) -> bool:
    """Deletes every demo account that was made (fresh channels: after Ctrl-C the old ones may be closed)."""
    ok = True
    for user in users:
        if user.client is None or not user.client.token:
            continue
        try:
            with Client(server, token=user.client.token, timeout=10) as fh:
                fh.accounts.delete_account(user.address)
        except FaceHarmonyError:
            ok = False
    return ok


# --------------------------------------------------------------------------- the contact sheet

WIDTH = 1500
MARGIN = 36
GAP = 18
THUMB = 160
OUTPUT = 200
OUTPUTS_PER_ROW = 4  # the timings panel sits to the right of the outputs
CAPTION = 46  # two caption lines under a tile
TITLE_H = 96
HEADING_H = 46
LABEL_H = 30
PANEL_LINE = 30
TIMELINE_H = 170
FOOTER_H = 84
INK, MUTED, PAPER, TILE = (28, 30, 36), (96, 100, 110), (250, 250, 247), (232, 232, 228)
GREEN, RED, OVERLAP = (22, 128, 60), (190, 36, 36), (222, 236, 222)
BAR_COLOURS = ((52, 102, 196), (214, 120, 30))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _per_row(tile: int) -> int:
    return max(1, (WIDTH - 2 * MARGIN + GAP) // (tile + GAP))


def _rows(n: int, per_row: int) -> int:
    return max(1, -(-n // per_row))


def sheet_size(inputs: Sequence[int], outputs: Sequence[int]) -> tuple[int, int]:
    """The contact sheet's size (pixels) for users with these numbers of inputs and of outputs."""
    height = MARGIN + TITLE_H
    for n_in, n_out in zip(inputs, outputs):
        height += HEADING_H + LABEL_H + _rows(n_in, _per_row(THUMB)) * (THUMB + CAPTION + GAP)
        height += LABEL_H + _rows(n_out, OUTPUTS_PER_ROW) * (OUTPUT + CAPTION + GAP) + GAP
    return WIDTH, height + TIMELINE_H + FOOTER_H + MARGIN


def _fit(image: Image.Image, side: int, *, enlarge: bool) -> Image.Image:
    """The image scaled to fit a side x side square; a smaller one is enlarged only when asked (without smoothing)."""
    scale = side / max(image.size)
    if scale >= 1 and not enlarge:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)


def _tile(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    side: int,
    image: Image.Image | None,
    border: tuple[int, int, int],
    *,
    enlarge: bool = False,
    placeholder: str = "",
) -> None:
    x, y = xy
    draw.rectangle((x - 3, y - 3, x + side + 2, y + side + 2), fill=border)
    draw.rectangle((x, y, x + side - 1, y + side - 1), fill=TILE)
    if image is not None:
        fitted = _fit(image, side, enlarge=enlarge)
        canvas.paste(fitted, (x + (side - fitted.width) // 2, y + (side - fitted.height) // 2))
    else:
        draw.multiline_text((x + 12, y + 12), placeholder, fill=MUTED, font=_font(15), spacing=4)


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    size: int,
    fill: tuple[int, int, int] = INK,
    width: int = 0,
    *,
    shrink: bool = False,
) -> int:
    """Draws one line, fitted to `width` pixels when given (a smaller size if `shrink`, down to 12, then cut with an
    ellipsis); returns its width."""
    font = _font(size)
    while shrink and width and size > 12 and draw.textlength(text, font=font) > width:
        size -= 1
        font = _font(size)
    if width and draw.textlength(text, font=font) > width:
        while text and draw.textlength(text + "…", font=font) > width:
            text = text[:-1]
        text += "…"
    draw.text(xy, text, fill=fill, font=font)
    return int(draw.textlength(text, font=font))


def draw_sheet(run: Run) -> Image.Image:
    """The contact sheet: per user the inputs with their verdicts, the outputs and the timings; the orders' overlap."""
    canvas = Image.new(
        "RGB", sheet_size([len(u.uploads) for u in run.users], [len(u.portraits) for u in run.users]), PAPER
    )
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    _text(draw, (MARGIN, y), "FaceHarmony demo", 40)
    subtitle = (
        "Two users signed up, uploaded photos, trained a model each and ordered portraits at the same time,"
        f" all over the public gRPC API  ·  {run.server}  ·  {run.started:%Y-%m-%d %H:%M} UTC"
    )
    _text(draw, (MARGIN, y + 52), subtitle, 18, MUTED, WIDTH - 2 * MARGIN)
    y += TITLE_H
    for index, user in enumerate(run.users):
        y = _user_section(canvas, draw, run, user, BAR_COLOURS[index % len(BAR_COLOURS)], y)
    _timeline(draw, run, y)
    y += TIMELINE_H
    kept = "deleted at the end: the server purges them after its grace period" if run.deleted else "kept (--keep)"
    _text(draw, (MARGIN, y + 4), NOISE_NOTE_SHEET[0], 16, MUTED)
    _text(draw, (MARGIN, y + 28), NOISE_NOTE_SHEET[1], 16, MUTED)
    _text(
        draw, (MARGIN, y + 52), f"Sample photos: made from scikit-image's data module. Demo accounts {kept}.", 16, MUTED
    )
    return canvas


def _user_section(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, run: Run, user: DemoUser, colour: tuple[int, int, int], y: int
) -> int:
    draw.rectangle((MARGIN, y + 6, MARGIN + 10, y + 34), fill=colour)
    shown = _text(draw, (MARGIN + 22, y + 2), user.label, 28)
    _text(draw, (MARGIN + 40 + shown, y + 13), f"photos made from {user.person.source}", 17, MUTED)
    y += HEADING_H
    accepted = [up for up in user.uploads if up.accepted]
    _text(
        draw,
        (MARGIN, y),
        f"Uploads: {len(accepted)} accepted, {len(user.uploads) - len(accepted)} refused, each verified by the server"
        " as it arrives (exactly one face, nothing unsafe, RGB, large enough), with the time of each upload",
        17,
        MUTED,
        WIDTH - 2 * MARGIN,
    )
    y += LABEL_H
    per_row = _per_row(THUMB)
    for i, up in enumerate(user.uploads):
        x, ty = MARGIN + (i % per_row) * (THUMB + GAP), y + (i // per_row) * (THUMB + CAPTION + GAP)
        verdict_colour = GREEN if up.accepted else RED
        image = samples.thumbnail_source(up.sample)
        _tile(canvas, draw, (x, ty), THUMB, image, verdict_colour, placeholder=f"not an image:\n{up.sample.name}")
        seconds = f"{up.seconds:.2f} s"
        seconds_width = int(draw.textlength(seconds, font=_font(14)))
        _text(draw, (x, ty + THUMB + 6), up.sample.caption, 15, INK, THUMB - seconds_width - 6)
        _text(draw, (x + THUMB - seconds_width, ty + THUMB + 7), seconds, 14, MUTED)
        _text(
            draw, (x, ty + THUMB + 25), "accepted" if up.accepted else up.reason, 15, verdict_colour, THUMB, shrink=True
        )
    y += _rows(len(user.uploads), per_row) * (THUMB + CAPTION + GAP)
    _text(
        draw,
        (MARGIN, y),
        f"Portraits from {user.label.split()[0]}'s model (style {run.style}), downloaded as PNG",
        17,
        MUTED,
    )
    y += LABEL_H
    for i, portrait in enumerate(user.portraits):
        x = MARGIN + (i % OUTPUTS_PER_ROW) * (OUTPUT + GAP)
        ty = y + (i // OUTPUTS_PER_ROW) * (OUTPUT + CAPTION + GAP)
        with Image.open(io.BytesIO(portrait.png)) as generated:
            _tile(canvas, draw, (x, ty), OUTPUT, generated.convert("RGB"), colour, enlarge=True)
        _text(draw, (x, ty + OUTPUT + 6), f"portrait {i + 1}", 15)
        _text(draw, (x, ty + OUTPUT + 25), f"{portrait.width} x {portrait.height} px", 15, MUTED)
    panel = MARGIN + max(1, min(len(user.portraits), OUTPUTS_PER_ROW)) * (OUTPUT + GAP) + 40
    upload_seconds = sorted(up.seconds for up in user.uploads)
    lines = [
        (f"Model {user.model_state}", 22, INK),
        (
            f"{user.queued_seconds:.1f} s in the queue, {user.training_seconds:.1f} s training on {len(accepted)} photos",
            17,
            MUTED,
        ),
        (f"Order {user.order_state}", 22, INK),
        (
            f"{len(user.portraits)} portraits in {user.order_end - user.order_start:.1f} s wall time"
            f" (from {user.order_start:.1f} s to {user.order_end:.1f} s)",
            17,
            MUTED,
        ),
        ("Uploads", 22, INK),
        (
            f"{len(upload_seconds)} photos in {sum(upload_seconds):.1f} s, median {statistics.median(upload_seconds):.2f} s"
            " each (upload + verification)",
            17,
            MUTED,
        ),
    ]
    ly = y + 4
    for text, size, fill in lines:
        _text(draw, (panel, ly), text, size, fill, WIDTH - MARGIN - panel)
        ly += PANEL_LINE + (6 if size == 17 else 0)
    return y + _rows(len(user.portraits), OUTPUTS_PER_ROW) * (OUTPUT + CAPTION + GAP) + GAP


def _timeline(draw: ImageDraw.ImageDraw, run: Run, y: int) -> None:
    """Both orders on one time axis: when each started and finished, each image done, and the stretch they shared."""
    _text(draw, (MARGIN, y), f"Both orders at once: {run.overlap():.1f} s of overlap", 22)
    _text(
        draw,
        (MARGIN, y + 30),
        "Each bar is one order, from CreateOrder to its COMPLETED event; a dot marks an image done (dots together:"
        " one batch); green: both orders running",
        15,
        MUTED,
    )
    left, right = MARGIN + 190, WIDTH - MARGIN - 70
    end = max((u.order_end for u in run.users), default=0.0) or 1.0

    def at(seconds: float) -> int:
        return left + round((right - left) * seconds / end)

    top = y + 58
    a, b = run.users
    lo, hi = max(a.order_start, b.order_start), min(a.order_end, b.order_end)
    if hi > lo:
        draw.rectangle((at(lo), top - 6, at(hi), top + 64), fill=OVERLAP)
    for i, user in enumerate(run.users):
        row = top + i * 32
        _text(draw, (MARGIN, row + 2), user.label, 17)
        x0, x1 = at(user.order_start), max(at(user.order_end), at(user.order_start) + 2)
        draw.rectangle((x0, row, x1, row + 22), fill=BAR_COLOURS[i % len(BAR_COLOURS)])
        for done in user.image_times:
            x = min(at(done), x1 - 6)
            draw.ellipse((x - 5, row + 6, x + 5, row + 16), fill=PAPER, outline=INK, width=2)
        _text(draw, (x1 + 8, row + 3), f"{user.order_end - user.order_start:.1f} s", 15, MUTED)
    axis = top + 72
    draw.line((left, axis, right, axis), fill=MUTED, width=1)
    for k in range(6):
        seconds = end * k / 5
        draw.line((at(seconds), axis, at(seconds), axis + 6), fill=MUTED, width=1)
        _text(draw, (at(seconds) - 12, axis + 9), f"{seconds:.1f} s", 14, MUTED)


# --------------------------------------------------------------------------- the command


def run_demo(
    console: Console,
    *,
    server: str,
    data_dir: Path,
    out: Path,
    photos: int,
    count: int,
    style: str,
    keep: bool,
    train_timeout: float,
    order_timeout: float,
) -> tuple[Run, tuple[int, int]]:
    people = samples.people(photos)
    run_id = secrets.token_hex(4)
    users = [DemoUser(p, new_address(p.name.split()[0].lower(), run_id)) for p in people]
    run = Run(server, dt.datetime.now(dt.UTC), users, count=count)
    with Client(server, timeout=5) as probe:
        try:
            probe.health(timeout=5)
        except FaceHarmonyError as exc:
            raise EmbeddedError(
                f"no FaceHarmony server answers at {server} ({exc.code.name}): start it with `make up`"
            ) from None
    # The staff account is made by `faceharmony-admin`, which finds the system's database from the same
    # settings as the server: the data folder given here is the one it must use.
    os.environ["FACEHARMONY_DATA_DIR"] = str(data_dir)
    outbox = data_dir / "outbox"
    try:
        with EmbeddedSystem(server, outbox) as system:
            sign_up(system, users, console)
            styles = [s.id for s in users[0].fh.orders.list_styles()]
            if style and style not in styles:
                raise DemoFailed(f"no style {style!r}; the server has: {', '.join(styles)}")
            run.style = style or styles[0]
            for user in users:
                with console.status(f"Uploading {len(user.person.samples)} photos for {user.label}..."):
                    upload(user, timeout=60)
            for user in users:
                console.print(verdict_table(user))
            console.print(f"Training a model for each user (up to {train_timeout:.0f} s)...")
            with _progress(console) as progress:
                train(users, progress, timeout=train_timeout)
            for user in users:
                console.print(
                    f"[green]{user.label}'s model is READY[/]: {user.queued_seconds:.1f} s queued,"
                    f" {user.training_seconds:.1f} s training"
                )
            console.print(f"Both users order {count} portraits (style {run.style}) at the same time...")
            with _progress(console) as progress:
                order(users, run.style, count, progress, timeout=order_timeout)
            for user in users:
                download(user, timeout=60)
                console.print(
                    f"[green]{user.label}'s order COMPLETED[/] in {user.order_end - user.order_start:.1f} s:"
                    f" downloaded {len(user.portraits)} images"
                )
            console.print(f"The two orders ran together for {run.overlap():.1f} s.")
    finally:
        if not keep:
            run.deleted = delete_accounts(server, users) and all(u.client for u in users)
            if any(u.client for u in users):
                console.print(
                    "Deleted the demo accounts: the server purges them, with their photos, models and portraits,"
                    " after its grace period (FACEHARMONY_ACCOUNT_GRACE_DAYS, 30 days by default)."
                    if run.deleted
                    else "[yellow]Not every demo account could be deleted[/]: sign in as it and delete it."
                )
        for user in users:
            if user.client is not None:
                user.client.close()
    sheet = draw_sheet(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)
    console.print(f"Wrote the contact sheet to [bold]{out}[/] ({sheet.width} x {sheet.height} px).")
    if keep:
        console.print("Kept the demo accounts (--keep): " + ", ".join(u.address for u in users))
    console.print(f"[dim]{NOISE_NOTE}[/]")
    return run, sheet.size


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    )


app = typer.Typer(add_completion=False, help="Shows the product: two demo users from sign-up to portraits.")


@app.command()
def demo(
    server: Annotated[str, typer.Option(help="the API server (host:port)")] = DEFAULT_TARGET,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="FACEHARMONY_DATA_DIR", help="the system's data folder (its outbox holds the sign-in codes)"
        ),
    ] = Path("data"),
    out: Annotated[Path, typer.Option(help="where to write the contact sheet (PNG)")] = Path("demo-contact-sheet.png"),
    json_summary: Annotated[Path | None, typer.Option(help="also write what happened as JSON to this file")] = None,
    photos: Annotated[int, typer.Option(min=4, max=7, help="accepted photos per user (a model needs 4)")] = 5,
    count: Annotated[int, typer.Option(min=1, max=8, help="portraits per order")] = 2,
    style: Annotated[str, typer.Option(help="the style of the portraits (default: the server's first)")] = "",
    keep: Annotated[bool, typer.Option(help="keep the two demo accounts instead of deleting them")] = False,
    train_timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for the models")] = 600,
    order_timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for the orders")] = 600,
) -> None:
    """Signs up two demo users, uploads, trains, orders from both models at once, writes a contact sheet."""
    console = Console()
    try:
        run, size = run_demo(
            console,
            server=server,
            data_dir=data_dir,
            out=out,
            photos=photos,
            count=count,
            style=style,
            keep=keep,
            train_timeout=train_timeout,
            order_timeout=order_timeout,
        )
    except KeyboardInterrupt:
        console.print("\n[yellow]Interrupted[/]: the demo stopped.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (samples.SamplesUnavailable, EmbeddedError) as exc:
        console.print(f"[red]Cannot run the demo[/]: {exc}")
        raise typer.Exit(EXIT_CANNOT_RUN) from None
    except (DemoFailed, FaceHarmonyError) as exc:
        console.print(f"[red]The demo stopped[/]: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    if json_summary is not None:
        fd = os.open(json_summary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(run.summary(out, size), indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        app(args=list(argv) if argv is not None else None, prog_name="faceharmony-demo")
    except SystemExit as exc:  # typer ends every run so: the demo's exit code, or 2 for a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
