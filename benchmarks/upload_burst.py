"""Peak memory of the API server under a burst of near-limit uploads, with the abuse bounds at their defaults and with them effectively off, in one run.

    .venv/bin/python benchmarks/upload_burst.py [--uploads 48] [--accounts 8] [--side 6000]

Loopback only, bounded (every call has a deadline, every server is stopped),
stops by itself. For each configuration (the defaults; then the bounds set
very high: calls per server and per account, verify queue size and wait, the
pixel budget) and each scenario (all uploads from one account; the same number
spread over several accounts), it starts `faceharmony-server` as its own
process on a temporary data folder (SQLite, local blobs, the local verifier),
signs the accounts up through the API, makes one ordinary upload (the
verifier's models loaded), waits for the server to settle, samples the server
process's RSS (psutil, every 10 ms) as the idle baseline, then fires N
concurrent uploads of a small JPEG declaring large dimensions (a flat colour
image of side x side pixels: about 0.6 MB on the wire for 6000 x 6000, about
100 MB once decoded) and prints the peak RSS over the baseline, the burst's
duration and the answers by status and reason. The last line is the ratio of
the peak increase without the bounds to the one with them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import psutil
from PIL import Image
from skimage import data

from faceharmony.clients.errors import reason_of
from faceharmony.triton_launcher.server import free_port
from faceharmony.v1 import account_pb2, account_pb2_grpc, admin_pb2, admin_pb2_grpc, photo_pb2, photo_pb2_grpc

BIN = Path(sys.executable).parent
CALL_TIMEOUT = 180.0
OFF = {
    "FACEHARMONY_MAX_CONCURRENT_CALLS": "1000000",
    "FACEHARMONY_MAX_CALLS_PER_ACCOUNT": "1000000",
    "FACEHARMONY_VERIFY_QUEUE_SIZE": "1000000",
    "FACEHARMONY_VERIFY_QUEUE_WAIT_SECONDS": "1000000",
    "FACEHARMONY_VERIFY_MAX_PIXELS_IN_FLIGHT": str(10**12),
}


def near_limit_jpeg(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 60)).save(out, format="JPEG", quality=50)
    return out.getvalue()


def face_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, format="JPEG", quality=90)
    return out.getvalue()


class RssSampler:
    """Samples one process's RSS on a thread; `peak` is the highest seen since start()."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.process, self.interval = psutil.Process(pid), interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sign_up_accounts(channel, data_dir: Path, count: int) -> list[tuple]:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    env = dict(os.environ, FACEHARMONY_DATA_DIR=str(data_dir))
    staff_email = "burst-staff@example.com"
    subprocess.run(
        [str(BIN / "faceharmony-admin"), "create-staff", staff_email, "Burst Staff", "--role", "admin"],
        env=env,
        check=True,
        capture_output=True,
    )

    def code(email: str) -> str:
        accounts.RequestSignInCode(account_pb2.RequestSignInCodeRequest(email=email), timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for path in (data_dir / "outbox").glob("*.eml"):
                text = path.read_text()
                found = re.search(r"code is: (\d{6})", text)
                if f"To: {email}" in text and found:
                    path.unlink()
                    return found.group(1)
            time.sleep(0.05)
        raise RuntimeError("no sign-in code arrived")

    staff = accounts.SignIn(account_pb2.SignInRequest(email=staff_email, code=code(staff_email)), timeout=30)
    staff_md = (("authorization", f"Bearer {staff.session_token}"),)
    out = []
    for i in range(count):
        email = f"burst{i}@example.com"
        accounts.JoinWaitlist(
            account_pb2.JoinWaitlistRequest(name="Burst", email=email, is_16_or_older=True), timeout=30
        )
        entries = admin.ListWaitlist(
            admin_pb2.ListWaitlistRequest(page_size=200), metadata=staff_md, timeout=30
        ).entries
        entry = next(e for e in entries if e.email == email)
        admin.ApproveWaitlistEntry(admin_pb2.ApproveWaitlistEntryRequest(id=entry.id), metadata=staff_md, timeout=30)
        user = accounts.SignIn(account_pb2.SignInRequest(email=email, code=code(email)), timeout=30)
        out.append((("authorization", f"Bearer {user.session_token}"),))
    return out


def settle(pid: int, seconds: float = 2.0) -> int:
    """The process's RSS once it has stopped moving (max over a short quiet window)."""
    process = psutil.Process(pid)
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(process.memory_info().rss)
        time.sleep(0.05)
    return max(samples)


def run_burst(config: str, env_extra: dict, accounts: int, uploads: int, payload: bytes, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        env = dict(
            os.environ,
            FACEHARMONY_DATA_DIR=str(data_dir),
            FACEHARMONY_LISTEN=f"127.0.0.1:{port}",
            FACEHARMONY_MAX_PHOTOS_PER_ACCOUNT="1000000",
            FACEHARMONY_VERIFIER_WORKERS=str(workers),
            FACEHARMONY_LOG_LEVEL="WARNING",
            **env_extra,
        )
        log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen([str(BIN / "faceharmony-server")], env=env, stdout=log, stderr=log)
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=120)
            users = sign_up_accounts(channel, data_dir, accounts)
            photos = photo_pb2_grpc.PhotoServiceStub(channel)
            photos.UploadPhoto(
                photo_pb2.UploadPhotoRequest(content=face_jpeg()), metadata=users[0], timeout=CALL_TIMEOUT
            )
            baseline = settle(server.pid)

            def one(i: int):
                try:
                    photos.UploadPhoto(
                        photo_pb2.UploadPhotoRequest(content=payload),
                        metadata=users[i % accounts],
                        timeout=CALL_TIMEOUT,
                    )
                    return "OK"
                except grpc.RpcError as exc:
                    return f"{exc.code().name} {reason_of(exc)}".strip()

            barrier = threading.Barrier(uploads)

            def together(i: int):
                barrier.wait(timeout=60)
                return one(i)

            with RssSampler(server.pid) as sampler:
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(uploads) as pool:
                    answers = Counter(pool.map(together, range(uploads)))
                seconds = time.perf_counter() - started
            return {
                "config": config,
                "accounts": accounts,
                "uploads": uploads,
                "baseline": baseline,
                "peak": sampler.peak,
                "increase": max(0, sampler.peak - baseline),
                "seconds": seconds,
                "answers": answers,
            }
        finally:
            channel.close()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=48, help="concurrent uploads in each burst")
    parser.add_argument("--accounts", type=int, default=8, help="accounts of the spread-out scenario")
    parser.add_argument("--side", type=int, default=6000, help="declared width and height (at most the pixel limit)")
    parser.add_argument("--workers", type=int, default=2, help="verifier threads (FACEHARMONY_VERIFIER_WORKERS)")
    args = parser.parse_args()
    payload = near_limit_jpeg(args.side)
    mib = 1024 * 1024
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )
    print(
        f"payload: {args.side}x{args.side} JPEG, {len(payload) / 1024:.0f} KiB on the wire, "
        f"{args.side * args.side * 3 / mib:.0f} MiB as RGB; {args.uploads} concurrent uploads per burst; {args.workers} verifier threads"
    )
    results = []
    for config, extra in (("defaults", {}), ("bounds off", OFF)):
        for accounts in (1, args.accounts):
            result = run_burst(config, extra, accounts, args.uploads, payload, args.workers)
            results.append(result)
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(result["answers"].items()))
            print(
                f"{config:10} | {accounts} account(s) | baseline {result['baseline'] / mib:.0f} MiB | peak {result['peak'] / mib:.0f} MiB "
                f"| +{result['increase'] / mib:.0f} MiB | {result['seconds']:.1f} s | {answers}",
                flush=True,
            )
    print()
    print("| bounds | accounts | idle RSS MiB | peak RSS MiB | peak over idle MiB | burst s | answers |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(r["answers"].items()))
        print(
            f"| {r['config']} | {r['accounts']} | {r['baseline'] / mib:.0f} | {r['peak'] / mib:.0f} | {r['increase'] / mib:.0f} "
            f"| {r['seconds']:.1f} | {answers} |"
        )
    print()
    for accounts in (1, args.accounts):
        on = next(r for r in results if r["config"] == "defaults" and r["accounts"] == accounts)
        off = next(r for r in results if r["config"] == "bounds off" and r["accounts"] == accounts)
        ratio = off["increase"] / on["increase"] if on["increase"] else float("inf")
        print(f"{accounts} account(s): peak increase without the bounds / with them = {ratio:.2f}")


if __name__ == "__main__":
    main()
