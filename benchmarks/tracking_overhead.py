"""What a tracker costs a sweep: the same small sweep through the CLI with no tracker, with
each tracker alone and with all three, in one run (the untracked sweep is the baseline).

    python benchmarks/tracking_overhead.py [--trials 4] [--format json]

Each configuration is a fresh ``scalinglab sweep --no-fit --no-report`` process on the embedded
local Ray (MLflow to an sqlite store in the results folder, W&B offline). Prints each one's wall
time, its ratio to the untracked sweep, its extra seconds per trial, and whether its final
losses equal the untracked ones (tracking must not change training); with ``--format json``
the JSON document is the last line of output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"none": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "wandb": ["wandb"],
           "all": ["mlflow", "tensorboard", "wandb"]}


def spec(trials: int) -> dict:
    sizes = [{"d_model": 16 * (k + 1), "n_layers": 1, "n_heads": k + 1} for k in range((trials + 1) // 2)]
    return {"name": "tracking-bench", "model": {"sizes": sizes}, "budgets": {"tokens": [4096, 8192][:max(1, trials // len(sizes))]},
            "training": {"batch_size": 4, "seq_len": 32}, "evaluation": {"validation_tokens": 1024, "points": 3}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "DS_ACCELERATOR": "cpu"}
    scalinglab = Path(sys.executable).parent / "scalinglab"
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec(args.trials)))
        rows = {}
        for name, trackers in CONFIGS.items():
            out = Path(tmp) / name
            flags = sum((["--tracking", t] for t in trackers), [])
            started = time.monotonic()
            run = subprocess.run([str(scalinglab), "sweep", str(spec_path), "--storage", str(out), "--no-fit",
                                  "--no-report", *flags], env=env, capture_output=True, text=True, cwd=ROOT)
            wall = time.monotonic() - started
            if run.returncode != 0:
                sys.exit(f"{name}: exit {run.returncode}\n{run.stderr[-3000:]}")
            losses = pd.read_parquet(out / "trials.parquet").set_index("trial_id")["final_loss"]
            rows[name] = {"wall_s": round(wall, 1), "losses": losses}
            print(f"{name:>12}: {wall:6.1f} s", file=sys.stderr, flush=True)
    base = rows["none"]
    n = len(base["losses"])
    result = {name: {"wall_s": r["wall_s"], "ratio": round(r["wall_s"] / base["wall_s"], 2),
                     "extra_s_per_trial": round((r["wall_s"] - base["wall_s"]) / n, 1),
                     "same_losses": bool((r["losses"] - base["losses"]).abs().max() == 0)} for name, r in rows.items()}
    document = {"trials": n, "configs": result}
    if args.format == "json":
        print(json.dumps(document))
        return
    print(f"{n} trials, wall time of `scalinglab sweep --no-fit --no-report` against no tracker (same run):")
    for name, r in result.items():
        print(f"{name:>12}: {r['wall_s']:6.1f} s  {r['ratio']:.2f}x  {r['extra_s_per_trial']:+.1f} s/trial  "
              f"losses {'identical' if r['same_losses'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
