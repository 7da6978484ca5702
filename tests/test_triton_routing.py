"""Rendezvous routing of model versions to Triton replicas and failover (order_worker/routing.py); the worker
with a replica down is in test_order_worker.py."""

from __future__ import annotations

import collections

import pytest

from faceharmony.core.jobs.evictions import replicas as configured_replicas
from faceharmony.core.settings import Settings, SettingsError
from faceharmony.order_worker.routing import DOWN_MAX_SECONDS, Router, hash_order

REPLICAS = ["triton-0.triton:8001", "triton-1.triton:8001", "triton-2.triton:8001"]
KEYS = [f"model{i:02d}:1" for i in range(240)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_worker_sends_a_key_to_the_same_replica_and_keys_spread_over_the_replicas():
    first = {k: Router(REPLICAS).order(k)[0] for k in KEYS}
    shuffled = {k: Router(list(reversed(REPLICAS))).order(k)[0] for k in KEYS}  # list order does not matter
    assert first == shuffled
    per_replica = collections.Counter(first.values())
    assert set(per_replica) == set(REPLICAS)
    assert min(per_replica.values()) >= 50  # 240 keys: each replica within a fair share's reach (80 expected)


def test_adding_or_removing_a_replica_moves_only_the_keys_it_gains_or_held():
    before = {k: hash_order(REPLICAS, k)[0] for k in KEYS}
    after_removal = {k: hash_order(REPLICAS[:2], k)[0] for k in KEYS}
    moved = {k for k in KEYS if before[k] != after_removal[k]}
    assert moved == {k for k in KEYS if before[k] == REPLICAS[2]}
    grown = REPLICAS + ["triton-3.triton:8001"]
    after_growth = {k: hash_order(grown, k)[0] for k in KEYS}
    assert {k for k in KEYS if before[k] != after_growth[k]} == {k for k in KEYS if after_growth[k] == grown[3]}


def test_a_replica_that_is_down_loses_its_keys_to_the_next_in_hash_order_until_its_while_is_over():
    clock = Clock()
    router = Router(REPLICAS, clock=clock)
    key = KEYS[0]
    own, second, third = hash_order(REPLICAS, key)
    assert router.order(key) == [own, second, third]
    assert router.failed(own) == 1.0
    assert router.order(key) == [second, third, own]
    assert router.failed(own) == 2.0  # doubles per consecutive failure
    clock.now += 1.5
    assert router.order(key)[0] == second
    clock.now += 1.0  # the while is over: the next request to it is the probe
    assert router.order(key)[0] == own and not router.is_down(own)
    assert router.answered(own) is True
    assert router.failed(own) == 1.0  # an answer reset the count
    for _ in range(10):
        seconds = router.failed(own)
    assert seconds == DOWN_MAX_SECONDS


def test_with_every_replica_down_a_key_waits_on_its_own_replica():
    router = Router(REPLICAS, clock=Clock())
    for r in REPLICAS:
        router.failed(r)
    for key in KEYS[:20]:
        assert router.order(key) == hash_order(REPLICAS, key)


def test_round_robin_sends_each_request_to_the_next_replica():
    router = Router(REPLICAS, policy="round_robin")
    firsts = [router.order("same:1")[0] for _ in range(6)]
    assert firsts == REPLICAS * 2


def test_bad_replica_lists_are_refused():
    with pytest.raises(ValueError):
        Router([])
    with pytest.raises(ValueError):
        Router(["a:1", "a:1"])
    with pytest.raises(ValueError):
        Router(["a:1"], policy="random")
    for bad in ("a:1,,b:2", "a:1,a:1", "nohost"):
        with pytest.raises(SettingsError, match="FACEHARMONY_TRITON_REPLICAS"):
            Settings(triton_replicas=bad).validate()


def test_the_configured_replicas_are_the_list_or_the_single_url():
    assert configured_replicas(Settings(triton_url="127.0.0.1:9001")) == ("127.0.0.1:9001",)
    listed = Settings(triton_url="127.0.0.1:9001", triton_replicas=" a:8001, b:8001 ,c:8001")
    listed.validate()
    assert configured_replicas(listed) == ("a:8001", "b:8001", "c:8001")
