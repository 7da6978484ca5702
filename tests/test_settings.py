"""The typed settings object: every FACEHARMONY_* variable parsed and checked once; typos refused; the secret made once, privately."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from faceharmony.core.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_ones():
    s = Settings.from_env({})
    assert s.resolved_database_url.startswith("sqlite:///") and s.resolved_database_url.endswith(
        "data/faceharmony.sqlite3"
    )
    assert s.email_transport == "outbox" and s.outbox_dir == Path("data/outbox")


def test_values_are_parsed_and_typed():
    s = Settings.from_env(
        {
            "FACEHARMONY_LISTEN": "0.0.0.0:6000",
            "FACEHARMONY_AUTO_MIGRATE": "false",
            "FACEHARMONY_CODE_TTL_SECONDS": "300",
            "FACEHARMONY_SMTP_TIMEOUT_SECONDS": "2.5",
            "FACEHARMONY_PRODUCTS": "a=1, b=20",
            "FACEHARMONY_DATABASE_URL": "postgresql://u:p@db:5432/fh",
            "FACEHARMONY_CLIENT_SERVER": "ignored-by-the-server:1",
        }
    )
    assert (s.listen, s.auto_migrate, s.code_ttl_seconds, s.smtp_timeout_seconds) == ("0.0.0.0:6000", False, 300, 2.5)
    assert dict(s.products) == {"a": 1, "b": 20}


@pytest.mark.parametrize(
    "env",
    [
        {"FACEHARMONY_LISTN": "x"},
        {"FACEHARMONY_CODE_TTL_SECONDS": "ten"},
        {"FACEHARMONY_CODE_TTL_SECONDS": "0"},
        {"FACEHARMONY_AUTO_MIGRATE": "maybe"},
        {"FACEHARMONY_EMAIL_TRANSPORT": "pigeon"},
        {"FACEHARMONY_DATABASE_URL": "mysql://x"},
        {"FACEHARMONY_PRODUCTS": "a=-1"},
        {"FACEHARMONY_TRIGGER_TOKEN": "SKS"},
        {"FACEHARMONY_TRIGGER_TOKEN": "a b"},
    ],
)
def test_bad_settings_are_refused(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_secret_is_generated_once_and_private(tmp_path):
    s = Settings(data_dir=tmp_path)
    first = s.secret()
    assert first == Settings(data_dir=tmp_path).secret() and len(first) == 64
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600


def test_every_setting_is_documented_in_the_readme():
    import dataclasses

    readme = (ROOT / "README.md").read_text()
    for f in dataclasses.fields(Settings):
        assert f"FACEHARMONY_{f.name.upper()}" in readme, f.name


def test_secret_settings_can_be_read_from_files(tmp_path):
    (tmp_path / "secret_key").write_text("s3cret-value\n")
    (tmp_path / "database_url").write_text("postgresql://fh:pw@db:5432/fh")
    s = Settings.from_env(
        {
            "FACEHARMONY_SECRET_KEY_FILE": str(tmp_path / "secret_key"),
            "FACEHARMONY_DATABASE_URL_FILE": str(tmp_path / "database_url"),
        }
    )
    # The trailing newline an editor or `echo` leaves is not part of the secret.
    assert (s.secret_key, s.database_url, s.smtp_password) == ("s3cret-value", "postgresql://fh:pw@db:5432/fh", "")


@pytest.mark.parametrize(
    ("content", "both", "expected"),
    [
        (None, False, "cannot read"),
        ("", False, "is empty"),
        ("x" * 70000, False, "larger than a secret"),
        ("value", True, "not both"),
    ],
)
def test_bad_secret_files_are_refused_in_one_line(tmp_path, content, both, expected):
    path = tmp_path / "smtp_password"
    if content is not None:
        path.write_text(content)
    env = {"FACEHARMONY_SMTP_PASSWORD_FILE": str(path)}
    if both:
        env["FACEHARMONY_SMTP_PASSWORD"] = "also-set"
    with pytest.raises(SettingsError, match=expected) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message and "also-set" not in message and "xxxx" not in message


def test_only_secret_settings_take_a_file():
    with pytest.raises(SettingsError, match="unknown settings: FACEHARMONY_LISTEN_FILE"):
        Settings.from_env({"FACEHARMONY_LISTEN_FILE": "/dev/null"})
