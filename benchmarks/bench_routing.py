"""Routing across Triton replicas: rendezvous hashing (the order workers') against round-robin, in one run.

    .venv/bin/python benchmarks/bench_routing.py                     # 3 replicas, 2 workers, 24 users, CPU here
    .venv/bin/python benchmarks/bench_routing.py --rounds 2 --images 2  # quicker

One run, one machine: a SQLite database, the blob store and the tiny base pipeline in a temporary folder;
`--replicas` real Triton servers (the nvidia-pytriton wheel's) on `triton_models/`, each with an adapter cache
that holds `--cache-adapters` adapters (bytes of the parsed tensors, as the cache counts them: in production a
replica's cache holds far fewer adapters than there are users); two order workers in this process, each with
its own router over the same replicas. `--users` users each have a READY model (a random rank-4 adapter).

For each policy, the replicas' caches emptied first (EVICT_KEYS of every model), `--rounds` rounds in which
every user places one order of `--images` images at the same moment; the clock runs until every order is
finished; each image is checked recorded once and none failed. Reported: images/s and p50/p99 latency of an image over all rounds, adapter fetches from the blob
store (each replica's `faceharmony_adapter_cache_fetches_total`, read from its metrics port) and the mean
Triton batch size. The baseline is round-robin per request across the same replicas: what a request-level
(L7 gRPC) load balancer in front of the replicas does, the usual choice instead of routing by adapter.
A last run (`--kill-after`) repeats the rendezvous rounds and stops the first replica part way through: its
models fail over to the next replica in their hash order, and every image is still made exactly once.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_engine import random_adapter
from bench_orders import MODEL, bench_system, percentile, place_orders, setup_users, wait_done
from bench_training import machine_lines

from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.diffusion.adapter_cache import tensor_bytes
from faceharmony.order_worker.worker import OrderWorker, RoutedTriton
from faceharmony.triton_launcher.server import DEFAULT_REPOSITORY, start_triton

POLICIES = ("round_robin", "rendezvous")


def repository(tmp: Path, cache_bytes: int) -> Path:
    """A copy of triton_models/ whose adapter cache is bounded to `cache_bytes`."""
    repo = tmp / "repository"
    shutil.copytree(DEFAULT_REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    config = repo / MODEL / "config.pbtxt"
    text = config.read_text()
    text, n = re.subn(
        r'(key: "adapter_cache_bytes"\s+value: \{ string_value: ")\d+(")', rf"\g<1>{cache_bytes}\g<2>", text
    )
    if n != 1:
        raise RuntimeError("adapter_cache_bytes not found in config.pbtxt")
    config.write_text(text)
    return repo


def metric(port: int, name: str) -> float:
    """A series' value from a Triton's metrics port (0 when absent or the replica is gone)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def batches(clients) -> tuple[int, int]:
    """(executions, requests) of the model, summed over the replicas."""
    execs = reqs = 0
    for c in clients:
        try:
            stats = c.get_inference_statistics(MODEL, as_json=True)["model_stats"][0].get("batch_stats", [])
        except Exception:  # noqa: BLE001 - a replica stopped on purpose (--kill-after)
            continue
        for b in stats:
            n = int(b["compute_infer"].get("count", 0))
            execs += n
            reqs += n * int(b["batch_size"])
    return execs, reqs


def run_policy(policy, db, users, settings, servers, clients, keyring, args, kill_after: float | None = None) -> dict:
    """One policy's rounds; with `kill_after`, the first replica is stopped that many seconds in (its models fail
    over): fetches and batches are then counted on the replicas that stay."""
    replicas = [s.grpc_url for s in servers]
    keys = [f"{model_id}:1" for _, model_id, _, _ in users]
    for r in replicas:  # every replica starts with an empty cache
        RoutedTriton([r], settings.triton_model, 60).clients[r].evict(keys)
    counted = servers[1:] if kill_after is not None else servers
    fetches0 = sum(metric(s.metrics_port, "faceharmony_adapter_cache_fetches_total") for s in counted)
    execs0, reqs0 = batches(clients[1:] if kill_after is not None else clients)
    killer = threading.Timer(kill_after, servers[0].process.kill) if kill_after is not None else None  # SIGKILL
    workers = [
        OrderWorker(
            settings,
            db=db,
            worker_id=f"{policy}-{i}",
            replicas=replicas,
            triton=RoutedTriton(replicas, settings.triton_model, 600, keyring, policy=policy),
        )
        for i in range(2)
    ]
    threads = [threading.Thread(target=w.run_forever, daemon=True) for w in workers]
    for t in threads:
        t.start()
    latencies: list[float] = []
    images = 0
    failed = 0
    t0 = time.perf_counter()
    if killer is not None:
        killer.start()
    try:
        for _ in range(args.rounds):
            order_ids = place_orders(db, users, args.images, settings.order_max_attempts)
            wait_done(order_ids, timeout=3600)
            rows = list(
                m.GeneratedPhoto.select(m.GeneratedPhoto.created_at, m.Order.created_at.alias("placed"))
                .join(m.Order)
                .where(m.GeneratedPhoto.order.in_(order_ids))
                .dicts()
            )
            if len(rows) != len(order_ids) * args.images:
                raise RuntimeError(f"{len(rows)} images recorded of {len(order_ids) * args.images}")
            failed += sum(o.images_failed for o in m.Order.select().where(m.Order.id.in_(order_ids)))
            latencies += [(r["created_at"] - r["placed"]).total_seconds() for r in rows]
            images += len(rows)
        wall = time.perf_counter() - t0
    finally:
        for w in workers:
            w.shutting_down.set()
        for t in threads:
            t.join(60)
        for w in workers:
            w.close()
    if killer is not None:
        killer.cancel()
    fetches = sum(metric(s.metrics_port, "faceharmony_adapter_cache_fetches_total") for s in counted) - fetches0
    execs, reqs = batches(clients[1:] if kill_after is not None else clients)
    return {
        "images": images,
        "wall": wall,
        "latencies": latencies,
        "fetches": int(fetches),
        "failed": failed,
        "mean_batch": (reqs - reqs0) / max(1, execs - execs0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--images", type=int, default=2, help="images per order")
    parser.add_argument("--rounds", type=int, default=3, help="orders per user, one round after another")
    parser.add_argument("--cache-adapters", type=int, default=12, help="adapters one replica's cache holds")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--kill-after",
        type=float,
        default=5.0,
        help="a last rendezvous run in which the first replica is stopped this many seconds in (0: no such run)",
    )
    args = parser.parse_args()
    import tritonclient.grpc as grpcclient
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    for text in machine_lines(torch.device("cpu")):
        print(text)
    with tempfile.TemporaryDirectory(prefix="faceharmony-bench-routing-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        settings, db, keyring, base = bench_system(data, args.size, args.steps, inflight=16)
        per_adapter = tensor_bytes(random_adapter(base.unet, 4, seed=0))
        store = LocalBlobStore(settings.blob_dir, Role.TRAINER, keyring)
        users = setup_users(db, store, base.unet, args.users, keyring)
        repo = repository(tmp, per_adapter * args.cache_adapters + per_adapter // 2)
        print(
            f"tiny pipeline, {args.size}x{args.size}, {args.steps} steps; {args.replicas} Triton replicas, each "
            f"caching {args.cache_adapters} adapters ({per_adapter} bytes each); 2 order workers; {args.users} users x "
            f"{args.rounds} rounds x {args.images} images"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
        env["FACEHARMONY_DATA_DIR"] = str(data)
        servers = []
        try:
            for i in range(args.replicas):
                servers.append(start_triton(tmp / f"triton-{i}", repository=repo, env=env, ready_timeout=300))
            clients = [grpcclient.InferenceServerClient(s.grpc_url) for s in servers]
            results = {p: run_policy(p, db, users, settings, servers, clients, keyring, args) for p in POLICIES}
            if args.kill_after > 0:
                results["rendezvous, replica 0 stopped mid-run"] = run_policy(
                    "rendezvous", db, users, settings, servers, clients, keyring, args, kill_after=args.kill_after
                )
        finally:
            for s in servers:
                s.stop()
    for policy, r in results.items():
        lat = r["latencies"]
        print(
            f"  {policy:<38} {r['images']:>4} images ({r['failed']} failed) in {r['wall']:7.2f} s = {r['images'] / r['wall']:6.2f} images/s; "
            f"latency p50 {statistics.median(lat):6.2f} s, p99 {percentile(lat, 99):6.2f} s; "
            f"adapter fetches {r['fetches']:>4}; mean Triton batch {r['mean_batch']:.2f}"
        )
    rr, rh = results["round_robin"], results["rendezvous"]
    print(
        f"rendezvous / round-robin: images/s {(rh['images'] / rh['wall']) / (rr['images'] / rr['wall']):.2f}x, "
        f"adapter fetches {rh['fetches'] / max(1, rr['fetches']):.2f}x ({rh['fetches']} vs {rr['fetches']}; "
        f"{args.users} is the least possible)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
