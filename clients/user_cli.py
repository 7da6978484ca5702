"""`faceharmony`: the app's features from a terminal, on the Python SDK (clients/sdk.py) over the public gRPC API.

This module owns the command line itself: the typer app, the global options (--server or
FACEHARMONY_CLIENT_SERVER, checked as host:port; --json; --tls or FACEHARMONY_CLIENT_TLS; --insecure), the
account, purchase and support commands, and the one place where a failure becomes an exit code (ExitCode in
cli_output.py): a refused call, an unreachable server, an expired session, a usage error, a file error or Ctrl-C
ends as one clear line (with --json, one JSON object), never a traceback, and gRPC's C core never logs to the
user (GRPC_VERBOSITY=NONE unless set). Photos, models and orders
are in cli_media.py; tables in cli_tables.py; the session file in cli_state.py.
"""

from __future__ import annotations

import os

# gRPC's C core logs to stderr (a bad target, a refused header); a person gets our one line instead. Read when grpc
# is first imported, so set before any import that brings it in.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import enum
import errno
from typing import Annotated, Any

import grpc
import typer
from typer.core import TyperGroup

from faceharmony.clients import cli_tables as tables
from faceharmony.clients.cli_media import media
from faceharmony.clients.cli_output import EPILOG, ExitCode, Failure, Output, message_dict, shown
from faceharmony.clients.cli_state import SessionFile, State, check_target, state
from faceharmony.clients.sdk import DEFAULT_TARGET, FaceHarmonyError
from faceharmony.v1 import purchase_pb2


class _Group(TyperGroup):
    """The command group: turns the failures a person can cause into a line on stderr and an exit code."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        given = list(args)  # click consumes args as it parses them
        try:
            return super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:  # a bad global option (click's, in typer): no State yet, --json looked for
            if "--json" not in given[: given.index("--") if "--" in given else None]:
                raise
            raise typer.Exit(Output(json_mode=True).error(ExitCode.USAGE, "USAGE", exc.format_message())) from None

    def invoke(self, ctx: Any) -> Any:  # ctx: the Context of typer's own copy of click
        try:
            return super().invoke(ctx)
        except FaceHarmonyError as exc:
            st = ctx.find_object(State)
            server = st.server if st else DEFAULT_TARGET
            signed_in = bool(st and st.signed_in)
            unreadable = bool(st and st.session_unreadable)
            raise typer.Exit(
                _out(ctx).refused(exc, server=server, signed_in=signed_in, session_unreadable=unreadable)
            ) from None
        except Failure as exc:
            raise typer.Exit(_out(ctx).failed(exc)) from None
        except typer.TyperException as exc:  # a usage error in a command: typer's box, or JSON with --json
            if not _out(ctx).json:
                raise
            code = ExitCode(getattr(exc, "exit_code", ExitCode.USAGE))
            raise typer.Exit(_out(ctx).error(code, "USAGE", exc.format_message())) from None
        except OSError as exc:  # a file that cannot be read or written
            if exc.errno == errno.EPIPE:  # stdout closed early (`| head`): typer ends quietly
                raise
            where = f": {shown(str(exc.filename))}" if exc.filename else ""
            raise typer.Exit(_out(ctx).error(ExitCode.REFUSED, "FILE_ERROR", f"{exc.strerror or exc}{where}")) from None
        except typer.Abort as exc:  # a prompt's end: Ctrl-C, or no input to read (stdin closed)
            _out(ctx).err.print()  # the prompt left the line open
            if not isinstance(exc.__context__, KeyboardInterrupt):
                said = "no answer to the question (stdin is closed): give it as an option"
                raise typer.Exit(_out(ctx).error(ExitCode.USAGE, "NO_INPUT", said)) from None
            raise typer.Exit(_out(ctx).error(ExitCode.INTERRUPTED, "INTERRUPTED", "interrupted")) from None
        except KeyboardInterrupt:
            raise typer.Exit(_out(ctx).error(ExitCode.INTERRUPTED, "INTERRUPTED", "interrupted")) from None


def _out(ctx: Any) -> Output:
    st = ctx.find_object(State)
    return st.out if st else Output(json_mode=bool(ctx.params.get("json_mode")))  # before the callback ran


app = typer.Typer(
    name="faceharmony",
    cls=_Group,
    help="FaceHarmony from a terminal: sign in, upload photos, train a model, order portraits.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a bug's traceback must not print the session token
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(media)

ACCOUNT, MONEY, SUPPORT = "Account", "Purchases", "Support"
SERVER_VAR = "FACEHARMONY_CLIENT_SERVER"
EMAIL = Annotated[str, typer.Argument(metavar="EMAIL")]
NAME = Annotated[str, typer.Argument(metavar="NAME")]


@app.callback()
def _global(
    ctx: typer.Context,
    server: Annotated[str, typer.Option(envvar=SERVER_VAR, help="The API server, host:port.")] = DEFAULT_TARGET,
    json_mode: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout (watch commands: one object a line).")
    ] = False,
    tls: Annotated[
        bool, typer.Option("--tls", envvar="FACEHARMONY_CLIENT_TLS", help="Talk to the server over TLS (system roots).")
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Send the session in plaintext to a server that is not on this machine."),
    ] = False,
) -> None:
    st = State(
        server=server, out=Output(json_mode=json_mode), session=SessionFile.from_env(), tls=tls, insecure=insecure
    )
    ctx.obj = st
    ctx.call_on_close(st.close)
    source = ctx.get_parameter_source("server")
    if source is not None and source.name == "DEFAULT" and os.environ.get(SERVER_VAR) == "":
        server = ""  # click reads an empty variable as unset; here it is a mistake (`=$HOST` with HOST unset)
    check_target(server)


def _done(st: State, text: str, data: dict[str, Any] | None = None) -> None:
    st.out.result(data or {}, text)


# --- account -------------------------------------------------------------------------------------------------


@app.command(rich_help_panel=ACCOUNT)
def join_waitlist(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Your name.")],
    email: Annotated[str, typer.Option(help="Your email address.")],
    adult: Annotated[bool, typer.Option("--16-or-older", help="I am 16 or older.")] = False,
    note: Annotated[str, typer.Option(help="A note for the team.")] = "",
) -> None:
    """Join the waiting list (an invitation is emailed once you are approved)."""
    st = state(ctx)
    st.client.accounts.join_waitlist(name, email, is_16_or_older=adult, note=note)
    _done(st, "You are on the waiting list; an email follows when you are approved.")


@app.command(rich_help_panel=ACCOUNT)
def request_code(ctx: typer.Context, email: EMAIL) -> None:
    """Email me a sign-in code (for scripts; `sign-in` asks for one itself)."""
    st = state(ctx)
    st.client.accounts.request_sign_in_code(email)
    _done(st, "If this email may sign in, a code is on its way.")


@app.command(rich_help_panel=ACCOUNT)
def sign_in(
    ctx: typer.Context,
    email: EMAIL,
    code: Annotated[
        str | None, typer.Option(help="The emailed code (already requested, e.g. by `request-code`); else asked for.")
    ] = None,
) -> None:
    """Sign in: emails you a code and asks for it."""
    st = state(ctx)
    st.require_private()
    if code is None:
        st.client.accounts.request_sign_in_code(email)
        st.out.note(f"If {email} may sign in, a 6-digit code is on its way there.")
        code = typer.prompt("Code", err=True).strip()
    _signed_in(st, st.client.accounts.sign_in(email, code))


@app.command(rich_help_panel=ACCOUNT)
def accept_invitation(
    ctx: typer.Context,
    token: Annotated[str, typer.Argument(metavar="TOKEN", help="The token from the invitation email.")],
    adult: Annotated[bool, typer.Option("--16-or-older", help="I am 16 or older.")] = False,
) -> None:
    """Accept an emailed invitation and sign in."""
    st = state(ctx)
    st.require_private()
    _signed_in(st, st.client.accounts.accept_invitation(token, is_16_or_older=adult))


def _signed_in(st: State, account: Any) -> None:
    assert st.client.token
    st.session.save(st.client.token)
    st.out.note(f"Signed in as {account.email}.")
    st.out.result(message_dict(account), tables.account(account))


@app.command(rich_help_panel=ACCOUNT)
def sign_out(ctx: typer.Context) -> None:
    """Sign out (ends the session on the server and forgets it here, even if the server cannot be reached)."""
    st = state(ctx)
    try:
        if st.signed_in:
            st.client.accounts.sign_out()
    except (FaceHarmonyError, Failure) as exc:
        # An expired session is as good as ended; anything else leaves it alive on the server until it expires.
        if not (isinstance(exc, FaceHarmonyError) and exc.code == grpc.StatusCode.UNAUTHENTICATED):
            st.out.warn("signed out here, but the session could not be ended on the server: it ends when it expires")
            raise
    finally:
        st.session.clear()
    _done(st, "Signed out.")


@app.command(rich_help_panel=ACCOUNT)
def account(ctx: typer.Context) -> None:
    """Show my account."""
    st = state(ctx)
    a = st.client.accounts.get_account()
    st.out.result(message_dict(a), tables.account(a))


@app.command(rich_help_panel=ACCOUNT)
def update_name(ctx: typer.Context, name: NAME) -> None:
    """Change my name."""
    st = state(ctx)
    a = st.client.accounts.update_name(name)
    st.out.result(message_dict(a), tables.account(a))


@app.command(rich_help_panel=ACCOUNT)
def invite(ctx: typer.Context, email: EMAIL, name: NAME) -> None:
    """Invite a friend by email."""
    st = state(ctx)
    st.client.accounts.invite_friend(email, name)
    _done(st, "Invitation sent.")


@app.command(rich_help_panel=ACCOUNT)
def delete_account(
    ctx: typer.Context,
    confirm_email: Annotated[
        str | None, typer.Option(help="My email address, to confirm (for scripts); else asked for.")
    ] = None,
) -> None:
    """Delete my account: deactivated now (and signed out), purged after the grace period unless reactivated."""
    st = state(ctx)
    if confirm_email is None:
        st.out.note("This deactivates your account now and signs you out; it and your photos, models and portraits")
        st.out.note("are purged after the grace period unless you sign in and run `faceharmony reactivate` before.")
        confirm_email = typer.prompt("Type your email address to confirm", err=True).strip()
    a = st.client.accounts.delete_account(confirm_email)
    st.session.clear()  # the server ended every session of the account
    st.out.result(
        message_dict(a),
        f"Account deactivated and signed out; purged after {tables.when(a, 'purge_after')} unless you sign in "
        "again and run `faceharmony reactivate`.",
    )


@app.command(rich_help_panel=ACCOUNT)
def reactivate(ctx: typer.Context) -> None:
    """Undo the deletion of my account (within the grace period)."""
    st = state(ctx)
    a = st.client.accounts.reactivate_account()
    st.out.result(message_dict(a), tables.account(a))


# --- purchases -----------------------------------------------------------------------------------------------


class StoreName(enum.StrEnum):
    app_store = "app_store"
    google_play = "google_play"


STORES = {StoreName.app_store: purchase_pb2.STORE_APP_STORE, StoreName.google_play: purchase_pb2.STORE_GOOGLE_PLAY}


@app.command(rich_help_panel=MONEY)
def balance(ctx: typer.Context) -> None:
    """Show my credits."""
    st = state(ctx)
    b = st.client.purchases.get_balance()
    st.out.result(message_dict(b), tables.balance(b))


@app.command(rich_help_panel=MONEY)
def products(ctx: typer.Context) -> None:
    """List the credit packs on sale."""
    st = state(ctx)
    st.out.listing("products", st.client.purchases.list_products(), tables.products)


@app.command(rich_help_panel=MONEY)
def record_purchase(
    ctx: typer.Context,
    store: Annotated[StoreName, typer.Option(help="The store the purchase was made in.")],
    receipt: Annotated[
        str, typer.Option(help="The App Store's signed transaction (JWS) or Google Play's purchase token.")
    ],
    product: Annotated[str, typer.Option(help="The product id (required for Google Play).")] = "",
) -> None:
    """Record a store purchase, verified with its store (idempotent on the store's transaction)."""
    st = state(ctx)
    p = st.client.purchases.record_purchase(STORES[store], product, receipt)
    st.out.result({"purchase": message_dict(p)}, tables.purchases([p]))


@app.command(rich_help_panel=MONEY)
def purchases(ctx: typer.Context) -> None:
    """List my purchases."""
    st = state(ctx)
    st.out.listing("purchases", st.client.purchases.list_purchases(), tables.purchases)


# --- support -------------------------------------------------------------------------------------------------


@app.command(rich_help_panel=SUPPORT)
def ticket(
    ctx: typer.Context,
    subject: Annotated[str, typer.Argument(metavar="SUBJECT")],
    body: Annotated[str, typer.Argument(metavar="BODY")],
) -> None:
    """Open a support ticket."""
    st = state(ctx)
    t = st.client.support.create_ticket(subject, body)
    st.out.result(message_dict(t), tables.ticket(t))


@app.command(rich_help_panel=SUPPORT)
def tickets(ctx: typer.Context) -> None:
    """List my support tickets."""
    st = state(ctx)
    st.out.listing("tickets", st.client.support.list_tickets(), tables.tickets)


@app.command(rich_help_panel=SUPPORT)
def show_ticket(ctx: typer.Context, ticket_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show a ticket and its messages."""
    st = state(ctx)
    t = st.client.support.get_ticket(ticket_id)
    st.out.result(message_dict(t), tables.ticket(t))


def main(argv: list[str] | None = None) -> int:
    """The `faceharmony` command: runs one command and returns its exit code."""
    try:
        app(args=argv, prog_name="faceharmony")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
