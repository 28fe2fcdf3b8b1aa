"""Throughput and model FLOPs utilization of a ~100M-parameter transformer trained under the
platform (a one-trial sweep: embedded Ray, Tune trial, DeepSpeed engine, bf16) on one GPU.

    python benchmarks/gpu_mfu.py                 # on a CUDA machine
    python benchmarks/gpu_mfu.py --tiny          # the same path on CPU with a tiny model (a smoke run)

MFU = (training FLOPs per token × tokens/s) / peak, where FLOPs per token is the model
family's analytic count (6N + attention + head, the trials table's ``flops_per_unit``),
tokens/s is the trial's training throughput (evaluation excluded) and the peak is measured in
this same run: the best of several large bf16 matmuls (fp32 with --tiny). Target: MFU ≥ 40%
on an H100. Prints a line per figure; ``--format json`` prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPEC = """\
name: gpu-mfu
model:
  sizes: [{{d_model: {d}, n_layers: {layers}, n_heads: {heads}}}]
budgets: {{tokens: [{tokens}]}}
data: {{source: synthetic, synthetic: {{vocab: 256, train_tokens: {data_tokens}}}}}
training: {{batch_size: {batch}, seq_len: {seq}, lr: 3.0e-4, warmup_fraction: 0.02}}
deepspeed: {{zero_stage: 1, precision: {precision}}}
resources: {{workers: 1, cpus_per_worker: {cpus}, gpus_per_worker: {gpus}}}
evaluation: {{validation_tokens: {val}, points: 2}}
"""


def matmul_peak(device: str, dtype, n: int, repeats: int = 20) -> float:
    """FLOP/s of the best of ``repeats`` n×n @ n×n products (2n³ FLOPs each)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU: checks the path, not a figure")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    import torch

    from analysis.records import TRIALS, Status
    from cluster.sweep import run_sweep

    gpu = torch.cuda.is_available() and not args.tiny
    if not gpu and not args.tiny:
        print("gpu_mfu: no CUDA GPU here; run it on a GPU machine, or pass --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    # ~100M non-embedding parameters: 12·L·d² with d=768, L=14 -> 99M (byte vocabulary).
    d, layers, heads, seq, batch = (768, 14, 12, 1024, 32) if gpu else (64, 2, 4, 64, 8)
    tokens = args.steps * batch * seq
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(SPEC.format(d=d, layers=layers, heads=heads, tokens=tokens, data_tokens=min(tokens, 4_000_000),
                                    batch=batch, seq=seq, precision="bf16" if gpu else "fp32", gpus=1 if gpu else 0, cpus=4 if gpu else 1,
                                    val=4 * seq * batch if gpu else 1024))
        outcome = run_sweep(str(spec), storage=str(Path(tmp) / "out"), progress_interval_s=30)
        row = outcome.trials.iloc[0]
    if row[TRIALS.status] != Status.COMPLETED:
        print(f"gpu_mfu: the trial {row[TRIALS.status]}: {row[TRIALS.error]}", file=sys.stderr)
        return 1
    peak = matmul_peak("cuda" if gpu else "cpu", torch.bfloat16 if gpu else torch.float32, 8192 if gpu else 1024)
    achieved = float(row[TRIALS.flops_per_unit]) * float(row[TRIALS.data_units_per_s])
    result = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (--tiny smoke run)",
        "n_params": int(row[TRIALS.n_params]), "total_params": int(row[TRIALS.total_params]),
        "tokens": int(row[TRIALS.data_units]), "steps": int(row[TRIALS.steps]), "precision": row[TRIALS.precision],
        "tokens_per_s": round(float(row[TRIALS.data_units_per_s]), 1),
        "flops_per_token": float(row[TRIALS.flops_per_unit]),
        "achieved_tflops": round(achieved / 1e12, 2), "peak_tflops_measured": round(peak / 1e12, 2),
        "mfu": round(achieved / peak, 4), "trial_wall_s": round(float(row[TRIALS.wall_s]), 1),
    }
    if args.format == "json":
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
