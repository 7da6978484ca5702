"""Which Triton replica serves a model version: rendezvous hashing over the configured replicas, with failover.

Every request of one model version goes to the same replica, so its adapter is fetched into one replica's
cache (not into every replica's) and its images batch together there. The replica is the one with the highest
score `blake2b(replica, key)` (rendezvous, or highest-random-weight, hashing): every order worker computes the
same answer from the same list with no coordination, and adding or removing a replica moves only the keys it
gains or held.

A replica that does not answer (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED: the server, not the request, is the
problem) is marked down for a while that doubles with each consecutive failure (DOWN_MIN_SECONDS to
DOWN_MAX_SECONDS); meanwhile its keys go to the next replica in their hash order. When the while is over the
replica gets its keys back, and the next request to it is the probe: an answer marks it up again. With every
replica down, requests go to the key's own replica (the one down longest is not preferred: the key's first),
so the worker's retries wait on the replica that will hold the adapter once it is back.

An eviction goes to every replica, whichever is routed to (order_worker/worker.py, core/jobs/evictions.py):
a model may have been served by the next replica while its own was down.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence

DOWN_MIN_SECONDS = 1.0
DOWN_MAX_SECONDS = 30.0
# Triton statuses that say the replica, not the request, failed: the key fails over to the next replica.
FAILOVER_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})


def score(replica: str, key: str) -> int:
    """The replica's rendezvous weight for a key (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{replica}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hash_order(replicas: Sequence[str], key: str) -> list[str]:
    """The replicas in the key's preference order: highest weight first, ties (never seen) by address."""
    return sorted(replicas, key=lambda r: (-score(r, key), r))


class Router:
    """Picks a replica per model-version key and tracks which replicas are down. Thread-safe.

    `policy`: "rendezvous" (the service's) or "round_robin" (every request to the next replica in turn, what a
    request-level load balancer in front of the replicas does; used as the benchmark's baseline)."""

    def __init__(
        self,
        replicas: Sequence[str],
        *,
        policy: str = "rendezvous",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("at least one Triton replica is needed")
        if len(set(replicas)) != len(replicas):
            raise ValueError("the Triton replicas must be distinct")
        if policy not in ("rendezvous", "round_robin"):
            raise ValueError(f"unknown routing policy {policy!r}")
        self.replicas = tuple(replicas)
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._turn = 0

    def order(self, key: str) -> list[str]:
        """Where a request of `key` goes, best first: the replicas that are up in the policy's order, then those
        that are down in the same order (so with every replica down the key's own comes first)."""
        if self.policy == "round_robin":
            with self._lock:
                start, self._turn = self._turn, self._turn + 1
            ordered = [self.replicas[(start + i) % len(self.replicas)] for i in range(len(self.replicas))]
        else:
            ordered = hash_order(self.replicas, key)
        now = self._clock()
        with self._lock:
            down = {r for r, until in self._down_until.items() if until > now}
        return [r for r in ordered if r not in down] + [r for r in ordered if r in down]

    def is_down(self, replica: str) -> bool:
        with self._lock:
            return self._down_until.get(replica, 0.0) > self._clock()

    def failed(self, replica: str) -> float:
        """The replica did not answer: it is down for the returned number of seconds (doubling per failure)."""
        with self._lock:
            n = self._failures[replica] = self._failures.get(replica, 0) + 1
            seconds = min(DOWN_MAX_SECONDS, DOWN_MIN_SECONDS * 2 ** (n - 1))
            self._down_until[replica] = self._clock() + seconds
            return seconds

    def answered(self, replica: str) -> bool:
        """The replica answered (any answer from the model): it is up. True when it had been marked down."""
        with self._lock:
            was_down = replica in self._down_until
            self._down_until.pop(replica, None)
            self._failures.pop(replica, None)
            return was_down
