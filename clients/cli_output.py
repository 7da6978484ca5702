"""How `faceharmony` speaks: rich tables and bars for people, JSON for scripts (--json), and its exit codes.

Data goes to stdout (a table, or with --json one JSON document, or one JSON object per line for the watch
commands); progress bars, hints and errors go to stderr, so a pipe gets the data alone. Rich writes no colour
or cursor codes when its stream is not a terminal, and a pipe gets wide lines rather than wrapped cells.
Every error ends as one line on stderr and an exit code from ExitCode, never a traceback. With --json it is one
JSON object on stderr, whatever went wrong (a refused call, a usage error, Ctrl-C, a file):
`{"error": {"code": gRPC code name or "", "reason": ErrorInfo reason or the CLI's own, "message": the line a
person reads, "exit_code": n}}`. A failure found here rather than by the server is raised as Failure.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressColumn

from faceharmony.clients.sdk import FaceHarmonyError


class ExitCode(enum.IntEnum):
    OK = 0
    REFUSED = 1  # the server refused: bad input, not found, a state conflict (or a file the CLI will not overwrite)
    USAGE = 2  # typer's own: a bad option or argument
    SIGNED_OUT = 3  # not signed in, or the session expired or was ended (UNAUTHENTICATED)
    UNREACHABLE = 4  # the server is unreachable, busy or too slow: trying again later may work
    SOME_REFUSED = 5  # an upload stored some photos and refused others
    INTERRUPTED = 130  # Ctrl-C


# Shown under `faceharmony --help`.
EPILOG = """Exit codes:
  0    ok
  1    the server refused (bad input, not found, a state conflict)
  2    usage (a bad option or argument)
  3    not signed in, or the session expired: run `faceharmony sign-in EMAIL`
  4    the server is unreachable, busy or too slow: try again
  5    some uploads were refused (the others were stored)
  130  interrupted (Ctrl-C)"""

# When stdout is not a terminal (and COLUMNS is not set), lines may be this wide, so a table in a pipe keeps
# one row per line and whole ids.
PIPE_WIDTH = 240


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    width = None if tty or "COLUMNS" in os.environ else PIPE_WIDTH
    # No markup, emoji or highlighting: file names and server text are shown as they are.
    return Console(stderr=stderr, width=width, markup=False, emoji=False, highlight=False)


class Failure(Exception):
    """An error the CLI itself finds (a bad option, a file, a watch given up): its exit code, a stable reason, words."""

    def __init__(self, exit_code: ExitCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.exit_code, self.reason, self.message = exit_code, reason, message


def shown(name: str) -> str:
    """A file name as text that can be printed: bytes that are not UTF-8 become U+FFFD."""
    try:
        return os.fsencode(name).decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that no file-system encoding made
        return name.encode("utf-8", "replace").decode("utf-8")


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready data: proto field names, enum names, every field (defaults too)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Output:
    """The invocation's two streams and its mode (tables and bars, or --json)."""

    def __init__(self, *, json_mode: bool) -> None:
        self.json = json_mode
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)

    # --- data -----------------------------------------------------------------------------------------
    def emit(self, data: dict[str, Any]) -> None:
        """One JSON document on stdout (--json)."""
        print(json.dumps(data, indent=2, ensure_ascii=False), flush=True)

    def emit_line(self, data: dict[str, Any]) -> None:
        """One JSON object on one line (--json watch commands)."""
        print(json.dumps(data, ensure_ascii=False, separators=(",", ":")), flush=True)

    def show(self, renderable: RenderableType | str, style: str | None = None) -> None:
        """A table or a line for people, on stdout."""
        self.out.print(renderable, style=style)

    def result(self, data: dict[str, Any], renderable: RenderableType | str, style: str | None = None) -> None:
        """The command's result: `data` with --json, else the table or line."""
        if self.json:
            self.emit(data)
        else:
            self.show(renderable, style=style)

    def listing(
        self, key: str, items: Sequence[Message], render: Callable[[Sequence[Any]], RenderableType | str]
    ) -> None:
        """A list command's result: {key: [...]} with --json (the API's field name), else render(items)."""
        self.result({key: [message_dict(item) for item in items]}, render(items))

    # --- stderr ---------------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """A hint for people (a prompt's context, what happens next); silent with --json."""
        if not self.json:
            self.err.print(text, style="dim")

    def warn(self, text: str) -> None:
        """A line on stderr about something that went half right (silent with --json: the data or error says it)."""
        if not self.json:
            self.err.print(f"warning: {text}", style="yellow")

    def tick(self, text: str) -> None:
        """A step of something followed, as its own line where no bar is drawn (a pipe, a log); else nothing."""
        if not self.json and not self.err.is_terminal:
            self.err.print(text)

    def progress(self, *columns: ProgressColumn | str) -> Progress:
        """A bar on stderr while it runs (what it ends with is said after it); none with --json or in a pipe."""
        return Progress(*columns, console=self.err, disable=self.json or not self.err.is_terminal, transient=True)

    # --- failed calls ---------------------------------------------------------------------------------
    def error(self, exit_code: ExitCode, reason: str, message: str, code: str = "") -> ExitCode:
        """Reports an error on stderr (one line, or one JSON object with --json) and returns its exit code."""
        if self.json:
            error = {"code": code, "reason": reason, "message": message, "exit_code": int(exit_code)}
            print(json.dumps({"error": error}, ensure_ascii=False), file=sys.stderr, flush=True)
        else:
            self.err.print(message if exit_code == ExitCode.INTERRUPTED else f"error: {message}", style="red")
        return exit_code

    def failed(self, failure: Failure) -> ExitCode:
        return self.error(failure.exit_code, failure.reason, failure.message)

    def refused(
        self, exc: FaceHarmonyError, *, server: str, signed_in: bool, session_unreadable: bool = False
    ) -> ExitCode:
        """Reports a failed call on stderr and returns its exit code."""
        text = describe(exc, server=server, signed_in=signed_in, session_unreadable=session_unreadable)
        return self.error(exit_code(exc), exc.reason, text, code=exc.code.name)


def exit_code(exc: FaceHarmonyError) -> ExitCode:
    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
        return ExitCode.SIGNED_OUT
    if exc.retryable:
        return ExitCode.UNREACHABLE
    return ExitCode.REFUSED


def describe(exc: FaceHarmonyError, *, server: str, signed_in: bool, session_unreadable: bool = False) -> str:
    """The error in words, with its stable reason (or gRPC code) and what to do about it."""
    tag = exc.reason or exc.code.name
    if exc.code == grpc.StatusCode.UNAUTHENTICATED and session_unreadable:
        return f"the session file is unreadable ({tag}): sign in again with `faceharmony sign-in EMAIL`"
    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
        said = exc.message if signed_in else "not signed in"
        return f"{said} ({tag}): run `faceharmony sign-in EMAIL`"
    if exc.code == grpc.StatusCode.UNAVAILABLE and not exc.reason:
        return (
            f"cannot reach the server at {server} (UNAVAILABLE): is it running? "
            "Name it with --server or FACEHARMONY_CLIENT_SERVER"
        )
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {server} did not answer in time (DEADLINE_EXCEEDED); try again"
    said = f"{exc.message} ({tag})" if exc.message else tag
    if exc.reason == "ACCOUNT_DEACTIVATED":
        return f"{said}: run `faceharmony reactivate`"
    if exc.retryable:
        return f"{said}; try again shortly"
    return said
