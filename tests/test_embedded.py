"""clients/embedded.py refuses a folder that is not the server's before it sends anything."""

from __future__ import annotations

import pytest

from faceharmony.clients.embedded import EmbeddedError, EmbeddedSystem


def test_a_folder_that_is_not_the_servers_is_refused_before_anything_is_sent(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEHARMONY_DATABASE_URL", raising=False)
    # Port 1: had it tried to reach a server, the error would be UNAVAILABLE, not this refusal.
    with pytest.raises(EmbeddedError, match="no data folder"):
        EmbeddedSystem("127.0.0.1:1", tmp_path / "missing" / "outbox")
    with pytest.raises(EmbeddedError, match="not the server's data folder"):
        EmbeddedSystem("127.0.0.1:1", tmp_path / "outbox")
    assert list(tmp_path.iterdir()) == []  # nothing made in the wrong folder
    # A fresh server's folder: its database is there, its outbox not yet (no mail sent).
    (tmp_path / "faceharmony.sqlite3").write_bytes(b"")
    system = EmbeddedSystem("127.0.0.1:1", tmp_path / "outbox")
    assert system.data_dir == tmp_path
