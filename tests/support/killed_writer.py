"""A real process that writes personal data through the project's code and stops for good at a chosen point, to be killed with SIGKILL (tests/test_temporary_files.py).

    python -m tests.support.killed_writer blob-before-link BLOB_ROOT      # temporary file written, not linked
    python -m tests.support.killed_writer blob-after-link BLOB_ROOT       # linked into place, temporary not removed
    python -m tests.support.killed_writer outbox-before-rename OUTBOX     # email written, not renamed into place
    python -m tests.support.killed_writer trainer-mid-save                # the real trainer (--once, FACEHARMONY_*
                                                                          # settings), adapter serialized, not stored

The point is made deterministic by wrapping, in this process only, the one call
made there (os.link, os.replace, the trainer's encode_adapter): the wrapper makes the
real call first where the stage says so, prints "paused" and blocks reading
stdin, which never answers. Nothing else is changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# What the writers write: shaped like personal data, so a test can look for it in every file left behind.
PERSONAL = b"ada.lovelace@example.com: face bytes " * 64


def pause(*_args, **_kwargs) -> None:
    print("paused", flush=True)
    sys.stdin.read()  # the parent never writes: the process waits here for its SIGKILL
    os._exit(3)


def after(call):
    def wrapper(*args, **kwargs):
        call(*args, **kwargs)
        pause()

    return wrapper


def main(stage: str, folder: str = "") -> None:
    if stage == "trainer-mid-save":
        from faceharmony.trainer import lora

        real_encode = lora.encode_adapter

        def encode_adapter(*args, **kwargs):  # the adapter's bytes exist (in memory only), not yet stored
            real_encode(*args, **kwargs)
            pause()

        lora.encode_adapter = encode_adapter  # type: ignore[assignment]
        from faceharmony.trainer.main import main as trainer_main

        trainer_main(["--once"])
        raise SystemExit("the trainer finished without saving an adapter")
    if stage.startswith("blob-"):
        from faceharmony.core.blobstore.base import Role
        from faceharmony.core.blobstore.local import LocalBlobStore
        from tests.support.keyrings import make_keyring

        keyring = make_keyring(Path(folder).parent / "keys")  # the data folder's, as the server's
        key_id = keyring.new_key()
        os.link = {"blob-before-link": pause, "blob-after-link": after(os.link)}[stage]
        LocalBlobStore(Path(folder), Role.API, keyring).create("photos", PERSONAL, key_id=key_id)
    elif stage == "outbox-before-rename":
        from faceharmony.core.email.transports import OutboxTransport, build_message

        os.replace = pause
        message = build_message(
            sender="no-reply@faceharmony.invalid",
            to="ada.lovelace@example.com",
            subject="Your sign-in code",
            body="Your sign-in code is 123456.\n",
            message_id="0" * 32,
        )
        OutboxTransport(Path(folder)).send(message)
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    raise SystemExit("the write finished without pausing")


if __name__ == "__main__":
    main(*sys.argv[1:])
