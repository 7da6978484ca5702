"""UploadPhoto latency and throughput against a running server with the local verifier, and the verifier alone on the same image, in one run.

    .venv/bin/python benchmarks/bench_upload.py [--seconds 8]

Starts `faceharmony-server` as its own process on a temporary data folder
(SQLite, local blobs, local verifier), signs a user up through the API, then
for concurrency 1, 4 and 16 sends UploadPhoto with a 512x512 JPEG of one face
(skimage's astronaut) for a fixed time, and reports p50/p99 latency and
photos/s. The baseline is the verifier's own work (decode, checks, re-encode,
detection) called in this process on the same bytes with the same number of
worker threads. The server's overhead is reported as ratios:
RPC p50 / verifier p50 at concurrency 1, and verifier photos/s / RPC photos/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from PIL import Image
from skimage import data

from faceharmony.core.verify.local import LocalVerifier
from faceharmony.core.verify.prepare import Limits, prepare_upload
from faceharmony.v1 import account_pb2, account_pb2_grpc, admin_pb2, admin_pb2_grpc, photo_pb2, photo_pb2_grpc

BIN = Path(sys.executable).parent


def jpeg_512() -> bytes:
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, format="JPEG", quality=90)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_load(fn, concurrency: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker():
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return latencies, len(latencies) / (time.perf_counter() - start)


def sign_up(channel, data_dir: Path) -> tuple:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    env = dict(os.environ, FACEHARMONY_DATA_DIR=str(data_dir))
    subprocess.run(
        [str(BIN / "faceharmony-admin"), "create-staff", "bench-staff@example.com", "Bench Staff", "--role", "admin"],
        env=env,
        check=True,
        capture_output=True,
    )

    def code(email: str) -> str:
        accounts.RequestSignInCode(account_pb2.RequestSignInCodeRequest(email=email))
        for _ in range(200):
            for path in (data_dir / "outbox").glob("*.eml"):
                text = path.read_text()
                found = re.search(r"code is: (\d{6})", text)
                if f"To: {email}" in text and found:
                    path.unlink()
                    return found.group(1)
            time.sleep(0.05)
        raise RuntimeError("no code")

    staff = accounts.SignIn(
        account_pb2.SignInRequest(email="bench-staff@example.com", code=code("bench-staff@example.com"))
    )
    staff_md = (("authorization", f"Bearer {staff.session_token}"),)
    accounts.JoinWaitlist(account_pb2.JoinWaitlistRequest(name="Bench", email="bench@example.com", is_16_or_older=True))
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    entry = admin.ListWaitlist(admin_pb2.ListWaitlistRequest(), metadata=staff_md).entries[0]
    admin.ApproveWaitlistEntry(admin_pb2.ApproveWaitlistEntryRequest(id=entry.id), metadata=staff_md)
    user = accounts.SignIn(account_pb2.SignInRequest(email="bench@example.com", code=code("bench@example.com")))
    return (("authorization", f"Bearer {user.session_token}"),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=2, help="verifier threads, in the server and in the baseline")
    args = parser.parse_args()
    payload = jpeg_512()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(
        f"image: 512x512 JPEG, {len(payload)} bytes; {args.seconds:.0f} s per measurement; {args.workers} verifier threads"
    )

    verifier = LocalVerifier()
    limits = Limits()

    def verify_only():
        verdict = verifier.verify(prepare_upload(payload, limits))
        assert verdict.faces == 1 and not verdict.nsfw

    verify_only()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(
            os.environ,
            FACEHARMONY_DATA_DIR=str(Path(tmp) / "data"),
            FACEHARMONY_LISTEN=f"127.0.0.1:{port}",
            FACEHARMONY_MAX_PHOTOS_PER_ACCOUNT="1000000",
            FACEHARMONY_VERIFIER_WORKERS=str(args.workers),
            FACEHARMONY_LOG_LEVEL="WARNING",
        )
        server_log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen([str(BIN / "faceharmony-server")], env=env, stdout=server_log, stderr=server_log)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            time.sleep(0.5)
            md = sign_up(channel, Path(tmp) / "data")
            photos = photo_pb2_grpc.PhotoServiceStub(channel)

            def upload():
                photos.UploadPhoto(photo_pb2.UploadPhotoRequest(content=payload), metadata=md, timeout=60)

            upload()
            rows = []
            for concurrency in (1, 4, 16):
                v_lat, v_rate = run_load(verify_only, min(concurrency, args.workers), args.seconds)
                r_lat, r_rate = run_load(upload, concurrency, args.seconds)
                rows.append((concurrency, r_lat, r_rate, v_lat, v_rate))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            server_log.close()

    print()
    print(
        "| concurrency | RPC p50 ms | RPC p99 ms | RPC photos/s | verifier p50 ms | verifier photos/s | p50 ratio | throughput ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for concurrency, r_lat, r_rate, v_lat, v_rate in rows:
        print(
            f"| {concurrency} | {statistics.median(r_lat) * 1000:.1f} | {percentile(r_lat, 0.99) * 1000:.1f} | {r_rate:.1f} "
            f"| {statistics.median(v_lat) * 1000:.1f} | {v_rate:.1f} | {statistics.median(r_lat) / statistics.median(v_lat):.2f} "
            f"| {v_rate / r_rate:.2f} |"
        )
    print()
    print("p50 ratio = RPC p50 / verifier p50 (at concurrency > workers the RPC also queues);")
    print("throughput ratio = verifier photos/s / RPC photos/s (goal: <= 1.3).")


if __name__ == "__main__":
    main()
