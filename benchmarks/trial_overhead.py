"""Fixed cost of small trials: one sweep of 20 trials of ~1 s of training each, run twice in one
run on the embedded local Ray: with each trial in a fresh process (Tune's default), and with a
finished trial's process running the next (scalinglab's default, Tune's ``reuse_actors``).

    python benchmarks/trial_overhead.py [--trials 20] [--tokens 32768] [--format json]

Each way runs as its own command (a new Python, a new Ray), and everything is read back from
its trials.parquet. Prints, for each way, the medians over the trials after the first in
their slot (those that started after another had finished) of each part of a trial's fixed
cost:

- ``wait_s``: from the previous trial's end in the slot to this one's start (Tune);
- ``process_s``: from the trial's start to the loop's start (actor, imports, Ray Train);
- ``setup_s``: the loop's start-up to its first step (data, engine): ``startup_s``;
- ``evaluate_s``: the trial's time after its first step that is not training (evaluation
  points, checkpoints, reports);

their sum ``fixed_s`` (target ≤ 1 s with reuse), the command's start-up from launch to the
first trial's first step ``startup_s`` (target ≤ 8 s), the sweep's wall time and the ratio of
the two ways' fixed costs. With ``--format json`` the JSON document is the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.records import TRIALS, Status  # noqa: E402

# the command each way runs: a sweep in a new Python (its imports and Ray start count)
COMMAND = ("import sys; from cluster.sweep import run_sweep; "
           "sys.exit(0 if run_sweep(sys.argv[1], storage=sys.argv[2], reuse_processes=sys.argv[3] == 'reuse').ok else 1)")


def spec(trials: int, tokens: int) -> dict:
    return {
        "name": "trial-overhead",
        "model": {"sizes": [{"d_model": 16, "n_layers": 1, "n_heads": 1}]},
        "budgets": {"kind": "grid", "tokens": [float(tokens)]},
        "data": {"source": "stdlib"},
        "training": {"batch_size": 4, "seq_len": 32, "seeds": trials},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "evaluation": {"validation_tokens": 1024, "points": 2},
    }


def run(way: str, spec_path: Path, out: Path) -> dict:
    print(f"--- {way}", file=sys.stderr, flush=True)
    launched = pd.Timestamp.now(tz="UTC")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", COMMAND, str(spec_path), str(out), way], cwd=ROOT, check=True)
    wall = time.monotonic() - t0
    trials = pd.read_parquet(out / TRIALS.file)
    assert (trials[TRIALS.status] == Status.COMPLETED).all(), trials[TRIALS.error].tolist()
    return parts(trials, launched, wall)


def parts(trials: pd.DataFrame, launched: pd.Timestamp, wall: float) -> dict:
    t = trials.sort_values(TRIALS.started_at)
    start, end = t[TRIALS.started_at], t[TRIALS.finished_at]
    first_step = end - pd.to_timedelta(t[TRIALS.wall_s], unit="s")
    train = t[TRIALS.data_units] / t[TRIALS.data_units_per_s]
    rows = []
    for i in range(len(t)):
        before = end[end <= start.iloc[i]]
        if before.empty:  # the first round: no slot freed yet
            continue
        rows.append({
            "wait_s": (start.iloc[i] - before.max()).total_seconds(),
            "process_s": (first_step.iloc[i] - start.iloc[i]).total_seconds() - t[TRIALS.startup_s].iloc[i],
            "setup_s": t[TRIALS.startup_s].iloc[i],
            "evaluate_s": t[TRIALS.wall_s].iloc[i] - train.iloc[i],
        })
    frame = pd.DataFrame(rows)
    medians = {k: float(frame[k].median()) for k in frame.columns}
    return {**medians, "fixed_s": sum(medians.values()), "trials_measured": len(frame),
            "train_s": float(train.median()), "startup_s": (first_step.min() - launched).total_seconds(),
            "wall_s": wall, "reused_processes": int((t[TRIALS.process_trials] > 0).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32768, help="per trial (~1 s of training here)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trial-overhead-") as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(args.trials, args.tokens), sort_keys=False))
        ways = {way: run(way, path, Path(tmp) / way) for way in ("fresh", "reuse")}
    result = {**ways, "fixed_ratio": ways["fresh"]["fixed_s"] / ways["reuse"]["fixed_s"]}
    if args.format == "json":
        print(json.dumps(result))
        return 0
    keys = ("wait_s", "process_s", "setup_s", "evaluate_s", "fixed_s", "train_s", "startup_s", "wall_s")
    print(f"{args.trials} trials of {args.tokens} tokens, 2 at a time; medians over the trials after the first in "
          "their slot (s)")
    print(f"{'':8}" + "".join(f"{k:>12}" for k in keys))
    for way, r in ways.items():
        print(f"{way:8}" + "".join(f"{r[k]:12.2f}" for k in keys))
    print(f"fixed cost per trial: {ways['fresh']['fixed_s']:.2f} s fresh, {ways['reuse']['fixed_s']:.2f} s reused "
          f"({result['fixed_ratio']:.1f}x less; target <= 1 s); start-up to the first step "
          f"{ways['reuse']['startup_s']:.2f} s (target <= 8 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
