"""WSD ladder against a grid of cosines: the same sizes and budgets trained both ways, in one
run, on the embedded local Ray; then a Chinchilla fit of each.

    python benchmarks/wsd_vs_cosine.py [--budget-unit 65536] [--bootstrap 200] [--format json] [--out DIR]

Prints (or, with ``--format json``, writes to stdout as one JSON document):
- ``compute_ratio``: FLOPs paid by the cosine grid ÷ FLOPs paid by the WSD ladder (trunks,
  cooldowns; both from ``flops_paid`` in trials.parquet), and the wall-time ratio;
- each way's fitted Chinchilla α, β and compute-optimal exponent a (N_opt ∝ C^a), with 95%
  bootstrap intervals, and whether they agree: each estimate inside the other fit's interval;
- the final losses side by side (WSD branch − cosine, per point).
Budgets are 1, 2, 3, 4, 6 and 8 × ``--budget-unit`` tokens (a 20% cooldown on those budgets
pays 0.8·8 + 0.2·24 = 11.2 units per size where cosine pays 24: a ratio of 2.14).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.fit import fit_laws  # noqa: E402
from analysis.records import TRIALS, Role, Status  # noqa: E402
from cluster.sweep import run_sweep  # noqa: E402

SIZES = [{"d_model": d, "n_layers": 2, "n_heads": h} for d, h in ((16, 1), (32, 2), (48, 3), (64, 4))]
MULTIPLES = (1, 2, 3, 4, 6, 8)


def spec(schedule: str, unit: int) -> dict:
    return {
        "name": f"bench-{schedule}",
        "model": {"sizes": SIZES},
        "budgets": {"kind": "grid", "tokens": [float(m * unit) for m in MULTIPLES]},
        "data": {"source": "stdlib"},
        "training": {"lr": 1.0e-3, "batch_size": 8, "seq_len": 64, "warmup_fraction": 0.05, "schedule": schedule,
                     "cooldown_fraction": 0.2, "cooldown_shape": "1-sqrt"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "evaluation": {"validation_tokens": 32768, "points": 4},
    }


def run(schedule: str, unit: int, out: Path, bootstrap: int) -> dict:
    path = out / f"{schedule}.yaml"
    path.write_text(yaml.safe_dump(spec(schedule, unit), sort_keys=False))
    print(f"--- {schedule}", file=sys.stderr, flush=True)
    started = time.monotonic()
    outcome = run_sweep(str(path), storage=str(out / schedule), progress_interval_s=30)
    wall = time.monotonic() - started
    trials = outcome.trials
    fit = fit_laws(trials, laws=["chinchilla"], bootstrap=bootstrap, seed=0, log=lambda m: None)[0]
    estimates = {"alpha": fit.params["alpha"], "beta": fit.params["beta"], "a": fit.derived["a"]}
    points = trials[trials[TRIALS.role].map(lambda r: Role(r).fit_point)]
    return {
        "schedule": schedule,
        "trials": len(trials),
        "completed": int((trials[TRIALS.status] == Status.COMPLETED).sum()),
        "flops_paid": float(trials[TRIALS.flops_paid].sum()),
        "flops_represented": float(points[TRIALS.flops].sum()),
        "wall_s": round(wall, 1),
        "fit": {k: {"value": v.value, "low": v.low, "high": v.high} for k, v in estimates.items()},
        "final_loss": {f"{int(r[TRIALS.n_params])}x{int(r[TRIALS.data_units])}": float(r[TRIALS.final_loss])
                       for r in points.to_dict("records")},
    }


def agree(a: dict, b: dict) -> bool:
    return a["low"] <= b["value"] <= a["high"] and b["low"] <= a["value"] <= b["high"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-unit", type=int, default=65536, help="tokens of the smallest budget")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--out", help="where the two sweeps' results go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scalinglab-wsd-bench-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        cosine = run("cosine", args.budget_unit, out, args.bootstrap)
        wsd = run("wsd", args.budget_unit, out, args.bootstrap)
    diffs = {k: wsd["final_loss"][k] - v for k, v in cosine["final_loss"].items() if k in wsd["final_loss"]}
    doc = {
        "compute_ratio": cosine["flops_paid"] / wsd["flops_paid"],
        "wall_ratio": cosine["wall_s"] / wsd["wall_s"],
        "agree": {k: agree(cosine["fit"][k], wsd["fit"][k]) for k in ("alpha", "beta", "a")},
        "loss_difference_wsd_minus_cosine": {"mean": sum(diffs.values()) / len(diffs),
                                             "min": min(diffs.values()), "max": max(diffs.values())},
        "cosine": cosine,
        "wsd": wsd,
    }
    if args.format == "json":
        print(json.dumps(doc, indent=1))
        return 0
    print(f"compute paid: cosine {cosine['flops_paid']:.4g} FLOPs, wsd {wsd['flops_paid']:.4g} FLOPs "
          f"-> compute_ratio {doc['compute_ratio']:.2f} (wall {cosine['wall_s']:.0f} s vs {wsd['wall_s']:.0f} s, "
          f"ratio {doc['wall_ratio']:.2f})")
    for k in ("alpha", "beta", "a"):
        c, w = cosine["fit"][k], wsd["fit"][k]
        print(f"{k:>5}: cosine {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]  "
              f"wsd {w['value']:.3f} [{w['low']:.3f}, {w['high']:.3f}]  agree: {doc['agree'][k]}")
    d = doc["loss_difference_wsd_minus_cosine"]
    print(f"final loss, wsd - cosine over {len(diffs)} points: mean {d['mean']:+.4f}, "
          f"range [{d['min']:+.4f}, {d['max']:+.4f}] nats/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
