"""Structured logging for every process: one JSON object per line (or plain text), with the `extra` fields of each call.

Callers log ids, counts, durations and status codes, never names, emails or
image bytes; the formatter also masks anything shaped like an email address
as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys

_EMAIL_LIKE = re.compile(r"[^@\s\"'<>]+@[^@\s\"'<>]+")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _mask(text: str) -> str:
    return _EMAIL_LIKE.sub("<redacted>", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": _mask(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                payload[key] = _mask(value) if isinstance(value, str) else value
        if record.exc_info:
            payload["exception"] = _mask(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        base = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if extras:
            base += " " + extras
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return _mask(base)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Quiet even at DEBUG: peewee logs SQL with its parameters; Google's API client and its HTTP layer log
    # request URLs, and a Play purchase token travels in the URL (core/stores/play.py).
    for name in ("peewee", "googleapiclient", "google_auth_httplib2", "httplib2"):
        logging.getLogger(name).setLevel(logging.WARNING)
