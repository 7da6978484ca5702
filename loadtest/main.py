"""`faceharmony-loadtest`: the ops load tester's command line (typer), thin over the modules of this package.

faceharmony-loadtest seed --models N --manifest M      N synthetic user models for the Triton target
faceharmony-loadtest cleanup --manifest M              delete their blobs, shred their keys
faceharmony-loadtest cleanup --users U                 delete the test accounts a killed orders run left
faceharmony-loadtest run --target triton|orders ...    a sweep: --concurrency 1,4 and/or --rate 0.5,1
faceharmony-loadtest perf-analyzer-input --manifest M --out F

It reads the system's settings (FACEHARMONY_*, `Settings.from_env()`) as `faceharmony-admin` does, with the
keyring and blob store of the data folder they name. `run` writes `report.json` and the PNG plots into `--out`
(default `<data dir>/loadtest/<UTC time>/`; the folder 0700, its files 0600) and prints a table. An option
the target does not use (`--models`, `--manifest`, `--keep`, `--width/--height/--steps` for orders; `--users`,
`--triton-url` for triton) is a usage error. Exit status: 0 when the run ended with at least one successful
request, 1 when none succeeded, 2 for a refused start (bad setting or option, non-loopback target, missing
manifest, tritonclient not installed, a test user's model not READY), 3 when the run ended early because the
target or Triton's statistics went away (the partial report is written, one line says why), 130 when stopped
by Ctrl-C or SIGTERM (what was measured until then is still written, and what the run seeded is still
cleaned up). The first Ctrl-C says how many requests are in flight and waits for them (each up to
`--timeout`); a second one stops waiting, closes the clients and cleans up.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from faceharmony.core import process
from faceharmony.loadtest.arrivals import Control

PROG = "faceharmony-loadtest"

app = typer.Typer(name=PROG, help="FaceHarmony ops load tester: Triton directly, or the whole order path.")


class TargetName(StrEnum):
    triton = "triton"
    orders = "orders"


MAX_LEVELS = 16  # steps of one sweep


def _numbers(text: str, kind: type, most: float) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {text!r}") from None
    if any(not 0 < v <= most for v in values):
        raise typer.BadParameter(f"every value must be within (0, {most:g}]")
    if len(values) > MAX_LEVELS:
        raise typer.BadParameter(f"at most {MAX_LEVELS} values")
    return values


def _run(body) -> None:
    """Runs `body(entry)` as the process (settings, SIGINT/SIGTERM as `entry.stopping`) and exits with its status."""
    raise typer.Exit(process.run(PROG, body, configure_logs=False))


def _keyring(settings):
    from faceharmony.core.keys.factory import install_keyring

    return install_keyring(settings)


@app.command()
def seed(
    manifest: Annotated[Path, typer.Option(help="where to write the manifest (0600, never overwritten)")],
    models: Annotated[int, typer.Option(min=1, max=1000, help="distinct synthetic user models")] = 8,
    rank: Annotated[int, typer.Option(min=1, max=128, help="LoRA rank")] = 4,
    seed: Annotated[int, typer.Option(help="seed of the random LoRA weights")] = 0,
) -> None:
    """Store N synthetic LoRA adapters for the configured base, each under a fresh data key; write the manifest."""

    def body(entry: process.Entry) -> int:
        from faceharmony.loadtest.seed import seed_models

        try:
            made = seed_models(entry.settings, models, manifest, _keyring(entry.settings), rank=rank, seed=seed)
        except (FileExistsError, ValueError) as exc:
            raise process.Refused(str(exc)) from None
        print(f"{len(made.models)} synthetic models stored; manifest {manifest}")
        return 0

    _run(body)


@app.command()
def cleanup(
    manifest: Annotated[Path | None, typer.Option(help="a manifest written by `seed` (or by a --keep run)")] = None,
    users: Annotated[
        Path | None, typer.Option(help="an orders run's users.json: sign each test account in, delete it")
    ] = None,
    allow_remote_host: Annotated[str, typer.Option(help="--users: the API's host when not loopback")] = "",
) -> None:
    """Delete a manifest's adapter blobs and shred their data keys, or delete an orders run's test accounts."""
    if (manifest is None) == (users is None):
        raise typer.BadParameter("give --manifest or --users (one of them)")

    def body(entry: process.Entry) -> int:
        if users is not None:
            from faceharmony.clients.embedded import EmbeddedError
            from faceharmony.loadtest.orders_target import cleanup_users

            try:
                deleted, failed = cleanup_users(
                    entry.settings.outbox_dir, users, allow_remote_host=allow_remote_host or None
                )
            except (ValueError, EmbeddedError) as exc:
                raise process.Refused(str(exc)) from None
            left = ", ".join(f"{k} {v}" for k, v in failed.items())
            print(f"{deleted} test accounts deleted" + (f"; not deleted: {left} (the file is kept)" if left else ""))
            return 1 if failed else 0
        from faceharmony.loadtest.seed import cleanup as remove

        assert manifest is not None
        try:
            done = remove(entry.settings, manifest, _keyring(entry.settings))
        except ValueError as exc:
            raise process.Refused(str(exc)) from None
        print(f"{done.blobs_deleted} blobs deleted, {done.keys_shredded} data keys shredded")
        return 0

    _run(body)


@app.command("perf-analyzer-input")
def perf_analyzer_input(
    manifest: Annotated[Path, typer.Option(help="a manifest written by `seed`")],
    out: Annotated[Path, typer.Option(help="the input-data JSON file to write")],
    width: Annotated[int, typer.Option(min=0, max=2048, help="image width (0: the setting, else native)")] = 0,
    height: Annotated[int, typer.Option(min=0, max=2048, help="image height (0: the setting, else native)")] = 0,
    steps: Annotated[int, typer.Option(min=0, max=150, help="denoising steps (0: FACEHARMONY_GENERATION_STEPS)")] = 0,
) -> None:
    """Write a perf_analyzer --input-data file with the manifest's real blob and key ids."""

    def body(entry: process.Entry) -> int:
        from faceharmony.core.diffusion.pipeline import BasePipelineMissing
        from faceharmony.loadtest.perf_analyzer_input import input_data, write_input_data
        from faceharmony.loadtest.runs import resolve_size
        from faceharmony.loadtest.seed import read_manifest

        try:
            size = resolve_size(entry.settings, width, height, steps)
            data = input_data(read_manifest(manifest), width=size[0], height=size[1], steps=size[2])
        except (ValueError, OSError, BasePipelineMissing) as exc:
            raise process.Refused(str(exc)) from None
        write_input_data(out, data)
        print(f"{len(data['data'])} requests ({size[0]}x{size[1]}, {size[2]} steps) written to {out}")
        return 0

    _run(body)


TRITON_ONLY = ("models", "manifest", "keep", "width", "height", "steps")
ORDERS_ONLY = ("users", "triton_url")


def _refuse_unused(ctx: typer.Context, target: TargetName) -> None:
    """A usage error for an option given that `target` does not use (never silently ignored)."""
    unused = TRITON_ONLY if target is TargetName.orders else ORDERS_ONLY
    given = [
        name for name in unused if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    ]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        why = (
            "the order path uses the server's models (--users), size and steps"
            if target is TargetName.orders
            else "they are the orders target's"
        )
        raise typer.BadParameter(f"{options}: not used by --target {target.value} ({why})")


class _Interrupts:
    """The run's SIGINT/SIGTERM: the first says how many requests are in flight (they are waited for), the
    second stops waiting (the clients are closed, then the clean-up runs)."""

    def __init__(self, control: Control, timeout_s: float) -> None:
        self.control = control
        self.timeout_s = timeout_s
        self.count = 0

    def __call__(self, _signum: int) -> None:
        self.count += 1
        n = self.control.in_flight
        if self.count == 1 and n == 0:
            line = "stopping: writing what was measured, then cleaning up"
        elif self.count == 1:
            line = f"stopping: waiting for {n} requests in flight (up to {self.timeout_s:g} s); Ctrl-C again to stop waiting"
        elif self.count == 2:
            self.control.abandon.set()
            line = f"not waiting for {n} requests in flight: closing the clients, then cleaning up"
        else:
            return
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


@app.command()
def run(
    ctx: typer.Context,
    target: Annotated[TargetName, typer.Option(help="triton: Triton's gRPC directly; orders: the API's order path")],
    concurrency: Annotated[str, typer.Option(help="closed loop: concurrencies to sweep, e.g. 1,4")] = "",
    rate: Annotated[str, typer.Option(help="open loop: offered rates (requests/s) to sweep, e.g. 0.5,1")] = "",
    url: Annotated[str, typer.Option(help="triton: FACEHARMONY_TRITON_URL; orders: the API server")] = "",
    triton_url: Annotated[
        str, typer.Option(help="orders: the system's Triton, for its statistics (FACEHARMONY_TRITON_URL)")
    ] = "",
    allow_remote_host: Annotated[
        str, typer.Option(help="the one non-loopback host load may go to (default: loopback only)")
    ] = "",
    manifest: Annotated[
        Path | None, typer.Option(help="triton: models seeded earlier (kept); default: seed --models now")
    ] = None,
    models: Annotated[int, typer.Option(min=1, max=1000, help="distinct user models (seeded by this run)")] = 8,
    keep: Annotated[bool, typer.Option(help="keep what this run seeded (its manifest is in --out)")] = False,
    count: Annotated[int, typer.Option(min=1, max=100_000, help="requests per step at most")] = 20,
    duration: Annotated[float, typer.Option(min=0.1, max=3600, help="seconds per step at most")] = 60.0,
    warmup: Annotated[
        int,
        typer.Option(
            min=0,
            max=1000,
            help="requests before the first step, not counted (after the target's own warm-up: triton every"
            " model once, 8 at a time; orders one order per user; each within --duration)",
        ),
    ] = 2,
    width: Annotated[int, typer.Option(min=0, max=2048, help="image width (0: the setting, else native)")] = 0,
    height: Annotated[int, typer.Option(min=0, max=2048, help="image height (0: the setting, else native)")] = 0,
    steps: Annotated[int, typer.Option(min=0, max=150, help="denoising steps (0: FACEHARMONY_GENERATION_STEPS)")] = 0,
    max_inflight: Annotated[
        int,
        typer.Option(
            min=1, max=256, help="open loop: requests in flight at most (later arrivals queue; their wait is latency)"
        ),
    ] = 16,
    timeout: Annotated[float, typer.Option(min=1, max=3600, help="seconds one request may take")] = 600.0,
    users: Annotated[int, typer.Option(min=1, max=8, help="orders: users with a READY model each")] = 2,
    seed: Annotated[int, typer.Option(help="seed of models, prompts' seeds and arrivals")] = 0,
    out: Annotated[Path | None, typer.Option(help="folder for report.json and the PNGs")] = None,
) -> None:
    """Drive one target through a sweep; write report.json and PNG plots; print a table."""
    from faceharmony.loadtest.arrivals import MAX_CONCURRENCY, MAX_RATE

    concurrencies = _numbers(concurrency, int, MAX_CONCURRENCY)
    rates = _numbers(rate, float, MAX_RATE)
    if not concurrencies and not rates:
        raise typer.BadParameter("give --concurrency and/or --rate")
    _refuse_unused(ctx, target)

    def body(entry: process.Entry) -> int:
        from faceharmony.loadtest.address import RemoteHostRefused, check_target
        from faceharmony.loadtest.sweep import Plan
        from faceharmony.loadtest.triton_target import TritonClientMissing, require_tritonclient

        settings = entry.settings
        folder = out or settings.data_dir / "loadtest" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        plan = Plan(concurrencies, rates, count, duration, warmup, max_inflight, seed=seed)
        try:
            if target is TargetName.triton:
                check_target(url or settings.triton_url, allow_remote_host or None)
            else:
                check_target(url or "127.0.0.1:50051", allow_remote_host or None)
                check_target(triton_url or settings.triton_url, allow_remote_host or None)
            require_tritonclient()
        except (RemoteHostRefused, TritonClientMissing, ValueError) as exc:
            raise process.Refused(str(exc)) from None
        control = Control(entry.stopping)
        entry.on_stop(_Interrupts(control, timeout))
        if target is TargetName.triton:
            from faceharmony.core.diffusion.pipeline import BasePipelineMissing
            from faceharmony.loadtest.runs import run_triton

            try:
                report = run_triton(
                    settings,
                    plan,
                    folder,
                    control=control,
                    url=url or settings.triton_url,
                    allow_remote_host=allow_remote_host or None,
                    manifest_path=manifest,
                    models=models,
                    keep=keep,
                    width=width,
                    height=height,
                    steps=steps,
                    timeout_s=timeout,
                )
            except (FileExistsError, ValueError, BasePipelineMissing) as exc:
                raise process.Refused(str(exc)) from None
        else:
            from faceharmony.clients.embedded import EmbeddedError
            from faceharmony.clients.sdk import FaceHarmonyError
            from faceharmony.loadtest.orders_target import Stopped
            from faceharmony.loadtest.runs import run_orders

            try:
                report = run_orders(
                    settings,
                    plan,
                    folder,
                    control=control,
                    url=url or "127.0.0.1:50051",
                    allow_remote_host=allow_remote_host or None,
                    triton_url=triton_url or settings.triton_url,
                    users=users,
                    timeout_s=timeout,
                )
            except Stopped as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                return 130
            except (EmbeddedError, FaceHarmonyError, RuntimeError, ValueError) as exc:  # the set-up failed
                raise process.Refused(f"the orders target could not be set up: {exc}") from None
        from rich.console import Console

        from faceharmony.loadtest.report import render_table

        console = Console(width=None if sys.stdout.isatty() else 180)
        console.print(render_table(report))
        console.print(f"report: {folder / 'report.json'}; plots: " + ", ".join(report["plots"]))
        left = (report.get("cleanup") or {}).get("users_file")
        if left:
            print(f"{PROG}: test accounts left: `{PROG} cleanup --users {left}`", file=sys.stderr)
        if entry.stopping.is_set():
            return 130
        gone = report.get("error") or next(
            (
                f"Triton's statistics: {s['triton']['error']}"
                for s in report["steps"]
                if "error" in (s.get("triton") or {})
            ),
            None,
        )
        if gone:
            print(f"{PROG}: the run ended early ({gone}); partial report: {report['report']}", file=sys.stderr)
            return 3
        return 0 if any(s["succeeded"] for s in report["steps"]) else 1

    _run(body)


def main(argv: Sequence[str] | None = None) -> int:
    """The `faceharmony-loadtest` command: runs one command and returns its exit status."""
    try:
        app(args=list(sys.argv[1:] if argv is None else argv), prog_name=PROG)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
