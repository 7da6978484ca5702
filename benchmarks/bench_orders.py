"""End-to-end order throughput and latency through the order worker and Triton, against a naive baseline.

    .venv/bin/python benchmarks/bench_orders.py                       # N = 1, 8, 32 users, tiny pipeline, CPU here
    .venv/bin/python benchmarks/bench_orders.py --users 1,8 --images 1  # quicker

One run, one machine:

* **end to end**: a SQLite database, the blob store and the tiny base pipeline in a temporary folder; the
  real Triton server from the nvidia-pytriton wheel on `triton_models/`; one order worker (in this process,
  `FACEHARMONY_ORDER_WORKER_INFLIGHT` = 32). For each N, N distinct users (each with their own READY model:
  a random rank-4 adapter stored in `models/`) place one order of `--images` images at the same moment;
  the clock runs until every order is finished. Reported: images/s, p50/p99 latency of an image (from its
  order's creation to its photo being recorded), and Triton's executions by batch size during that N.
  A warm-up round (one image per user, untimed) fills Triton's adapter cache first, as in steady service.
* **naive baseline**, same requests, same prompts, seeds, steps and size, Triton idle: one diffusers
  `StableDiffusionPipeline` (base loaded once) serving the images one at a time, for each loading the
  user's LoRA from the blob store (`load_lora_weights`), generating, and unloading it
  (`unload_lora_weights`); latency of an image = when it is done, all requests having arrived at the start.

The ratio end-to-end / naive of images/s is printed per N. The end-to-end path also pays for what the
baseline skips (PNG + preview encoding, blob writes, database transactions, gRPC), so the ratio is a
floor for the batching gain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_engine import random_adapter, reference_pipeline
from bench_training import machine_lines

from faceharmony.core import ids
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import open_database, write_transaction
from faceharmony.core.db.migrate import migrate
from faceharmony.core.diffusion.adapter_format import parse_adapter_bytes
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline, load_base
from faceharmony.core.jobs import styles
from faceharmony.core.jobs.orders import create as create_order
from faceharmony.core.keys.factory import install_keyring
from faceharmony.core.settings import Settings
from faceharmony.order_worker.worker import OrderWorker
from faceharmony.triton_launcher.server import start_triton

STYLE = styles.get("studio")
MODEL = "faceharmony_diffusion"


def bench_system(data: Path, size: int, steps: int, inflight: int):
    """The tiny base pipeline, a migrated SQLite database and the keyring in `data`, with settings for the order
    workers: (settings, database, keyring, loaded base)."""
    build_tiny_pipeline(data / "base-model", seed=0)
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'db.sqlite3'}",
        generation_width=size,
        generation_height=size,
        generation_steps=steps,
        order_worker_inflight=inflight,
        order_worker_orders=inflight,
        order_worker_poll_seconds=0.02,
    )
    db = open_database(settings.resolved_database_url, pool_size=40)
    keyring = install_keyring(settings)  # the data folder's, which Triton and the worker open too
    migrate(db)
    return settings, db, keyring, load_base(data / "base-model", device="cpu")


def setup_users(db, store: LocalBlobStore, unet, n: int, keyring) -> list[tuple[str, str, str, str]]:
    """n accounts, each with a READY model whose version is a random rank-4 adapter sealed with the account's key:
    (account, model, adapter blob id, key id)."""
    import safetensors.torch

    out = []
    now = dt.datetime.now(dt.UTC)
    for i in range(n):
        key_id = keyring.new_key()
        blob = safetensors.torch.save({k: v.contiguous() for k, v in random_adapter(unet, 4, seed=i).items()})
        adapter_id = store.create("models", blob, key_id=key_id)
        with write_transaction(db):
            account = m.Account.create(
                id=ids.new_id(),
                key_id=key_id,
                email=f"bench-{i}@example.invalid",
                email_hmac=f"{i:064x}",
                name="Bench",
                is_16_or_older=True,
                created_at=now,
                updated_at=now,
            )
            m.CreditEntry.create(id=ids.new_id(), account=account.id, delta=100_000, kind="trial", created_at=now)
            model = m.UserModel.create(
                id=ids.new_id(),
                account=account.id,
                key_id=key_id,
                display_name="Bench",
                state="ready",
                progress=1.0,
                trigger_token="sks",
                current_version=1,
                created_at=now,
                updated_at=now,
            )
            job = m.TrainingJob.create(
                id=ids.new_id(),
                model=model.id,
                kind="train",
                state="succeeded",
                attempts=1,
                max_attempts=1,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
                finished_at=now,
            )
            m.ModelVersion.create(
                id=ids.new_id(),
                model=model.id,
                version=1,
                job=job.id,
                adapter_blob_id=adapter_id,
                metadata_blob_id=ids.new_id(),
                base_fingerprint="0" * 64,
                created_at=now,
                key_id=key_id,
            )
        out.append((account.id, model.id, adapter_id, key_id))
    return out


def place_orders(db, users, count: int, max_attempts: int) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    order_ids = []
    for account_id, model_id, _, key_id in users:
        with write_transaction(db):
            order_ids.append(
                create_order(account_id, [(model_id, 1)], STYLE.id, count, 1, None, now, max_attempts, key_id=key_id).id
            )
    return order_ids


def wait_done(order_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            m.Order.select().where(m.Order.id.in_(order_ids), m.Order.state.not_in(("completed", "failed"))).count()
            == 0
        ):
            return
        time.sleep(0.05)
    raise RuntimeError("orders did not finish in time")


def batch_sizes(client) -> dict[int, int]:
    stats = client.get_inference_statistics(MODEL, as_json=True)
    return {
        int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
        for b in stats["model_stats"][0].get("batch_stats", [])
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def end_to_end(db, users, count: int, settings: Settings, client) -> dict:
    before = batch_sizes(client)
    t0 = time.perf_counter()
    order_ids = place_orders(db, users, count, settings.order_max_attempts)
    wait_done(order_ids, timeout=3600)
    wall = time.perf_counter() - t0
    rows = list(
        m.GeneratedPhoto.select(m.GeneratedPhoto.created_at, m.Order.created_at.alias("placed"), m.Order.state)
        .join(m.Order)
        .where(m.GeneratedPhoto.order.in_(order_ids))
        .dicts()
    )
    failed = m.Order.select().where(m.Order.id.in_(order_ids), m.Order.images_failed > 0).count()
    if failed or len(rows) != len(order_ids) * count:
        raise RuntimeError(f"{failed} orders had failed images; {len(rows)} images recorded")
    latencies = [(r["created_at"] - r["placed"]).total_seconds() for r in rows]
    grown = {bs: n - before.get(bs, 0) for bs, n in batch_sizes(client).items() if n > before.get(bs, 0)}
    return {"images": len(rows), "wall": wall, "latencies": latencies, "batches": dict(sorted(grown.items()))}


def naive(pipe, users, count: int, size: int, steps: int, store: LocalBlobStore) -> dict:
    t0 = time.perf_counter()
    latencies = []
    for u, (_account, _model, adapter_id, key_id) in enumerate(users):
        for k in range(count):
            adapter = parse_adapter_bytes(
                store.read("models", adapter_id, key_id=key_id)
            )  # fetched per request, as a naive server would
            pipe.load_lora_weights(adapter, adapter_name=f"user{u}_{k}")
            pipe(
                STYLE.prompt_for("sks"),
                negative_prompt=STYLE.negative_prompt,
                num_inference_steps=steps,
                guidance_scale=7.5,
                width=size,
                height=size,
                generator=torch.Generator("cpu").manual_seed(1000 + u * count + k),
                output_type="np",
            )
            pipe.unload_lora_weights()
            latencies.append(time.perf_counter() - t0)
    return {"images": len(latencies), "wall": time.perf_counter() - t0, "latencies": latencies}


def line(label: str, r: dict) -> str:
    lat = r["latencies"]
    return (
        f"  {label:<32} {r['images']:>4} images in {r['wall']:7.2f} s = {r['images'] / r['wall']:6.2f} images/s; "
        f"latency p50 {statistics.median(lat):6.2f} s, p99 {percentile(lat, 99):6.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--users", default="1,8,32", help="comma-separated N values (distinct users with an order in flight)"
    )
    parser.add_argument("--images", type=int, default=2, help="images per order")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    ns = [int(x) for x in args.users.split(",")]
    import tritonclient.grpc as grpcclient
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    for text in machine_lines(torch.device("cpu")):
        print(text)
    print(
        f"tiny pipeline, {args.size}x{args.size}, {args.steps} steps, guidance 7.5, rank-4 adapters, {args.images} images per order, "
        f"Triton max_batch_size 8 (dynamic batching, 50 ms window)"
    )
    with tempfile.TemporaryDirectory(prefix="faceharmony-bench-orders-") as tmp:
        data = Path(tmp) / "data"
        settings, db, keyring, base = bench_system(data, args.size, args.steps, inflight=32)
        store = LocalBlobStore(settings.blob_dir, Role.TRAINER, keyring)
        users = setup_users(db, store, base.unet, max(ns), keyring)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
        env["FACEHARMONY_DATA_DIR"] = str(data)
        results = {}
        with start_triton(Path(tmp) / "triton", env=env, ready_timeout=180) as srv:
            settings = Settings(**{**settings.__dict__, "triton_url": srv.grpc_url})
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            worker = OrderWorker(settings, db=db)
            thread = threading.Thread(target=worker.run_forever, daemon=True)
            thread.start()
            try:
                end_to_end(db, users, 1, settings, client)  # warm-up: every adapter in Triton's cache
                for n in ns:
                    results[n] = {"e2e": end_to_end(db, users[:n], args.images, settings, client)}
            finally:
                worker.shutting_down.set()
                thread.join(60)
        pipe = reference_pipeline(data / "base-model", torch.device("cpu"), torch.float32, None)
        reader = LocalBlobStore(settings.blob_dir, Role.ORDER)
        naive(pipe, users[:2], 1, args.size, args.steps, reader)  # warm-up
        for n in ns:
            results[n]["naive"] = naive(pipe, users[:n], args.images, args.size, args.steps, reader)

    for n in ns:
        e2e, base_r = results[n]["e2e"], results[n]["naive"]
        print(f"N = {n} users, {n * args.images} images:")
        print(line("order worker + Triton", e2e))
        print(line("naive diffusers, swap per image", base_r))
        ratio = (e2e["images"] / e2e["wall"]) / (base_r["images"] / base_r["wall"])
        print(f"  throughput ratio e2e / naive: {ratio:.2f}x; Triton executions by batch size: {e2e['batches']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
