"""A whole `run` per target: set up what it drives, sweep, write the report and plots, clean up.

* `run_triton(settings, plan, out_dir, ...)`: seeds `models` synthetic models (seed.py; manifest in `out_dir`)
  unless a manifest is given, drives Triton (triton_target.py) through the plan (sweep.py), writes
  `report.json` and the PNGs, and deletes what it seeded itself unless `keep` (also after an error or a
  stop: a given manifest is never cleaned up by `run`).
* `run_orders(...)`: the same through the API's order path (orders_target.py), with Triton's statistics when
  `triton_url` answers; its test accounts' addresses are in `out_dir/users.json` (0600) until it deletes
  them at the end.

Both take the run's `Control` (arrivals.py): after a second Ctrl-C the clients are closed (what is still in
flight fails fast) before the clean-up. `out_dir` is made private (0700) and every file in it is 0600.

Sizes: 0 means FACEHARMONY_GENERATION_WIDTH/HEIGHT/STEPS, and a size still 0 the base's native one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceharmony.core.datadir import private_dir
from faceharmony.core.keys.factory import install_keyring
from faceharmony.core.settings import Settings
from faceharmony.loadtest.address import check_target
from faceharmony.loadtest.arrivals import Control
from faceharmony.loadtest.plots import plot_report
from faceharmony.loadtest.report import write_json
from faceharmony.loadtest.sweep import Plan, run_sweep


def resolve_size(settings: Settings, width: int, height: int, steps: int) -> tuple[int, int, int]:
    from faceharmony.loadtest.seed import native_size

    width = width or settings.generation_width
    height = height or settings.generation_height
    if not width or not height:
        native = native_size(settings.base_model_dir)
        width, height = width or native, height or native
    return width, height, steps or settings.generation_steps


def finish(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Plots and the JSON report (which lists the plots) into `out_dir`."""
    report["plots"] = [str(p) for p in plot_report(report, out_dir)]
    report["report"] = str(write_json(Path(out_dir) / "report.json", report))
    return report


def run_triton(
    settings: Settings,
    plan: Plan,
    out_dir: Path,
    *,
    control: Control,
    url: str,
    allow_remote_host: str | None = None,
    manifest_path: Path | None = None,
    models: int = 8,
    keep: bool = False,
    width: int = 0,
    height: int = 0,
    steps: int = 0,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    from faceharmony.loadtest.seed import cleanup, read_manifest, seed_models
    from faceharmony.loadtest.triton_target import TritonStatistics, TritonTarget, model_ready

    out_dir = Path(out_dir)
    check_target(url, allow_remote_host)
    private_dir(out_dir)
    if not model_ready(url, settings.triton_model):
        raise ValueError(f"Triton at {url} is not reachable or its model {settings.triton_model} is not ready")
    width, height, steps = resolve_size(settings, width, height, steps)
    keyring = install_keyring(settings)
    seeded = manifest_path is None
    if manifest_path is None:
        manifest_path = out_dir / "manifest.json"
        manifest = seed_models(settings, models, manifest_path, keyring, seed=plan.seed)
    else:
        manifest = read_manifest(manifest_path)
    cleaned: dict[str, int] | None = None
    try:
        target = TritonTarget(
            url,
            settings.triton_model,
            manifest,
            keyring,
            width=width,
            height=height,
            steps=steps,
            guidance=settings.generation_guidance,
            timeout_s=timeout_s,
            seed=plan.seed,
            allow_remote_host=allow_remote_host,
        )
        try:
            meta = {
                "target": "triton",
                "url": url,
                "model": settings.triton_model,
                "settings": {
                    "models": len(manifest.models),
                    "width": width,
                    "height": height,
                    "steps": steps,
                    "guidance": settings.generation_guidance,
                    "summary": f"{len(manifest.models)} models, {width}x{height}, {steps} steps",
                },
            }
            stats = TritonStatistics(url, settings.triton_model, allow_remote_host=allow_remote_host)
            try:
                report = run_sweep(target, plan, control=control, meta=meta, stats=stats)
            finally:
                stats.close()
        finally:
            target.close()  # fails what an abandon left in flight
    finally:
        if seeded and not keep:
            done = cleanup(settings, manifest_path, keyring)
            cleaned = {"blobs_deleted": done.blobs_deleted, "keys_shredded": done.keys_shredded}
    report["manifest"] = {"path": str(manifest_path), "seeded_by_run": seeded, "kept": not seeded or keep}
    report["cleanup"] = cleaned
    return finish(report, out_dir)


def run_orders(
    settings: Settings,
    plan: Plan,
    out_dir: Path,
    *,
    control: Control,
    url: str,
    allow_remote_host: str | None = None,
    triton_url: str | None = None,
    users: int = 2,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """`triton_url`: the system's Triton, whose statistics are diffed over each step (None: none)."""
    from faceharmony.loadtest.orders_target import OrdersTarget
    from faceharmony.loadtest.triton_target import TritonStatistics, model_ready, require_tritonclient

    require_tritonclient()
    out_dir = Path(out_dir)
    private_dir(out_dir)
    steps = len(plan.concurrencies) + len(plan.rates)
    if settings.email_transport != "outbox":
        raise ValueError(
            "the orders target signs up its users on an embedded system: FACEHARMONY_EMAIL_TRANSPORT=outbox"
        )
    target = OrdersTarget.prepare(
        url,
        settings.outbox_dir,
        users_file=out_dir / "users.json",
        users=users,
        timeout_s=timeout_s,
        allow_remote_host=allow_remote_host,
        requests_bound=users + plan.warmup + plan.count * steps,  # a warm-up order per user, then the plan
        stop=control.stop,
    )
    stats = None
    try:
        if triton_url and model_ready(triton_url, settings.triton_model):
            stats = TritonStatistics(triton_url, settings.triton_model, allow_remote_host=allow_remote_host)
        meta = target.meta()
        meta["triton_statistics"] = triton_url if stats else None
        report = run_sweep(target, plan, control=control, meta=meta, stats=stats)
        report["settings"]["image_sizes"] = [f"{w}x{h}" for w, h in sorted(target.image_sizes)]
    finally:
        made = len(target.users)
        deleted = target.close()
        if stats is not None:
            stats.close()
    report["cleanup"] = {
        "accounts_deleted": deleted,
        "accounts_left": made - deleted,
        "users_file": str(out_dir / "users.json") if deleted < made else None,
        "photos_not_deleted": target.photos_not_deleted,
    }
    return finish(report, out_dir)
