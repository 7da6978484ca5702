"""The sockets a process tree listens on, read from the kernel (psutil), for the tests of listening addresses."""

from __future__ import annotations

import ipaddress
import socket

import psutil


def _ip(address: str) -> str:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # a dual-stack socket bound to ::ffff:127.0.0.1
    return str(mapped or ip)


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN and every bound UDP socket of `pid` and its descendants."""
    found: set[tuple[str, int]] = set()
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            connections = proc.net_connections("inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in connections:
            if c.laddr and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)):
                found.add((_ip(c.laddr.ip), c.laddr.port))
    return found
