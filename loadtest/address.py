"""Where the load tester may send load: a loopback address, or the one remote host the operator names.

A load test is a flood of requests; sent to the wrong host it is an attack. `check_target("host:port",
allow_remote_host)` accepts `localhost`, `127.0.0.0/8` and `::1` (bracketed, `[::1]:8001`), and any other host
only when `allow_remote_host` names exactly that host (as written; names are not resolved, so a name that
happens to resolve to loopback must be named too). Everything else raises `RemoteHostRefused`.
"""

from __future__ import annotations

import ipaddress


class RemoteHostRefused(ValueError):
    """The target is not on loopback and `--allow-remote-host` does not name it."""


def split_host_port(target: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host without brackets, port); ValueError for anything else."""
    target = target.strip()
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"not host:port: {target!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"not host:port (bracket an IPv6 address): {target!r}")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not host:port: {target!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: not resolved here


def check_target(target: str, allow_remote_host: str | None = None) -> str:
    """The target as given when load may go there; RemoteHostRefused (or ValueError for a malformed one)."""
    host, _port = split_host_port(target)
    if is_loopback(host):
        return target
    if allow_remote_host and host.lower() == allow_remote_host.strip().strip("[]").lower():
        return target
    raise RemoteHostRefused(
        f"{host} is not a loopback address: a load test goes to loopback only, unless --allow-remote-host {host} names it"
    )
