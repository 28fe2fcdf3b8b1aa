"""A synthetic results folder with every kind of data the report shows, drawn from a known
Chinchilla law: an isoflop sweep (budgets × sizes) with training curves, a capability task
with a sharp exact-match jump and a smooth log-probability, sample images, a failed trial
whose error and spec hold HTML, run records and emergence flags."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.records import EVALS, TRIALS, Status, stderr_of

TRUTH = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 400.0, "beta": 0.28}
HOSTILE = "<script>window.__injected = 1</script><img src=x onerror=\"window.__injected = 2\">"


def chinchilla(n, d):
    return TRUTH["E"] + TRUTH["A"] / np.power(n, TRUTH["alpha"]) + TRUTH["B"] / np.power(d, TRUTH["beta"])


def png(width: int, height: int, seed: int) -> bytes:
    """A grey-scale PNG written with the standard library."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_results(folder: Path, *, budgets=(1e17, 1e18, 1e19, 1e20), sizes_per_budget=5, noise=0.005,
                 seed=0, capability=True, samples=True) -> Path:
    rng = np.random.default_rng(seed)
    trials, evals = [], []
    for c in budgets:
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.geomspace(1 / 8, 8, sizes_per_budget):
            n = float(round(n))
            d = c / (6 * n)
            tid = f"tfm-n{n:.3g}-c{c:.0e}-s0"
            loss = float(chinchilla(n, d) * (1 + noise * rng.standard_normal()))
            trials.append(_row(tid, n, d, c, loss))
            for k, frac in enumerate(np.geomspace(0.02, 1.0, 6)):
                dk = d * frac
                lk = float(chinchilla(n, dk) * (1 + noise * rng.standard_normal())) if frac < 1 else loss
                step = k + 1
                evals.append((tid, step, dk, 6 * n * dk, "loss", lk))
                if capability:
                    x = np.log10(6 * n * dk)
                    acc = 1 / (1 + np.exp(-(x - 18.5) * 6))  # exact match jumps near C = 3e18
                    evals.append((tid, step, dk, 6 * n * dk, "addition/exact_match", float(acc)))
                    evals.append((tid, step, dk, 6 * n * dk, "addition/logprob", float(-3.0 + 0.4 * (x - 16))))
                    for metric in ("addition/exact_match", "addition/logprob"):  # as the probes record them
                        evals.append((tid, step, dk, 6 * n * dk, stderr_of(metric), 0.01))
    failed = _row("tfm-n9e4-c1e17-s1", 9e4, 1e17 / (6 * 9e4), 1e17, float("nan"))
    failed.update(status="failed", error=f"RuntimeError: boom {HOSTILE}")
    trials.append(failed)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(trials).to_parquet(folder / TRIALS.file, index=False)
    pd.DataFrame(evals, columns=EVALS.names).to_parquet(folder / EVALS.file, index=False)
    (folder / "spec.yaml").write_text(f"name: synthetic\n# note: {HOSTILE}\nmodel: {{sizes: []}}\n")
    (folder / "run.json").write_text(json.dumps({"runs": [
        {"started_at": "2026-11-23T10:00:00+00:00", "wall_s": 120.0, "address": None, "resumed": False,
         "resources": {"CPU": 2.0}}]}))
    if capability:
        (folder / "emergence.json").write_text(json.dumps({"results": [
            {"group": "synthetic", "metric": "addition/exact_match", "axis": "flops", "verdict": "emergent",
             "threshold": {"x": 1.5e18, "low": 1e18, "high": 2.2e18}, "midpoint": 3.2e18}]}))
    if samples:
        for i, row in enumerate(trials[:3]):
            target = folder / "samples" / row["trial_id"]
            target.mkdir(parents=True, exist_ok=True)
            (target / "ddpm samples.png").write_bytes(png(16, 16, i))
    return folder


def _row(tid, n, d, c, loss) -> dict:
    """Some of a trials.parquet row, as the contract names its columns (a report must cope
    with tables that leave columns out)."""
    d_model = int(max(16, round((n / 24) ** 0.5 / 16) * 16))
    return {TRIALS.trial_id: tid, TRIALS.sweep: "synthetic", TRIALS.status: Status.COMPLETED.value,
            TRIALS.error: "", TRIALS.family: "transformer", TRIALS.data_unit: "tokens", TRIALS.n_params: n,
            TRIALS.data_units: float(d), TRIALS.flops: float(c), TRIALS.compute_budget: float(c),
            TRIALS.final_loss: loss, TRIALS.wall_s: 10.0, TRIALS.data_units_per_s: 1e4, TRIALS.workers: 1,
            TRIALS.cpus_per_worker: 1.0, TRIALS.gpus_per_worker: 0.0, TRIALS.zero_stage: 0, TRIALS.precision: "fp32",
            TRIALS.node_id: "abc123", TRIALS.started_at: pd.Timestamp("2026-11-23T10:00:00Z"),
            TRIALS.finished_at: pd.Timestamp("2026-11-23T10:02:00Z"),
            TRIALS.shape("d_model"): d_model, TRIALS.shape("n_layers"): 2}
