"""Polling helper for tests that wait on other processes."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    """The first truthy value of predicate(), polled every 0.1 s; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
