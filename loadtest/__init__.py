"""The ops load tester, `faceharmony-loadtest`: drives Triton's gRPC directly or the whole order path over the API.

An operator tool like `faceharmony-admin`: it depends on `faceharmony.core` (settings, keyring, blob store, the
adapter format) and the API's generated stubs through the Python SDK, never on the server, trainer or order
worker. One module per idea:

* `address.py`: where load may go (loopback, or the one host `--allow-remote-host` names);
* `seed.py`: synthetic user models for the Triton target (LoRA adapters sealed under fresh data keys), the
  manifest that records them, and their cleanup;
* `triton_target.py` / `orders_target.py`: one request of each target, checked (each image opened with its
  key), and Triton's statistics;
* `arrivals.py`: the closed-loop (fixed concurrency) and open-loop (Poisson arrivals) drivers;
* `report.py`: outcomes to figures (images/s, latency percentiles, errors by reason, Triton's queue and
  compute time, batch sizes), the JSON report and the table;
* `plots.py`: the PNG plots (matplotlib, Agg backend);
* `perf_analyzer_input.py`: an input-data file for NVIDIA's perf_analyzer with a seeded manifest's real ids;
* `main.py`: the command line (typer), thin.
"""
