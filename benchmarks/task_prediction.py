"""How often task predictions' 95% intervals hold the truth, and the noise check's error rates,
on the simulated ladders of ``analysis/task_simulation.py`` (a known two-step model: task loss
a Chinchilla law of (N, D), accuracy a sigmoid of task loss; binomial accuracy noise over 1,000
items; the target at 10x the ladder's compute).

    python benchmarks/task_prediction.py [--seeds 50] [--bootstrap 400] [--noise-seeds 1000] [--format json]

Prints, per scenario, the coverage of the accuracy's interval at the target (with its 95%
Wilson interval), the median interval width and absolute error, and how often the task was
refused or warned about; then the noise check's refusals on ladders with a real trend and on
pure noise. docs/tasks.md quotes this output at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny arrays: threads only cost
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from analysis.emergence_calibration import wilson  # noqa: E402
from analysis.task_simulation import coverage, refusals  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50, help="ladders per scenario for the coverage")
    parser.add_argument("--bootstrap", type=int, default=400)
    parser.add_argument("--noise-seeds", type=int, default=1000, help="ladders per scenario for the noise check")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    text = args.format == "text"
    out = {"seeds": args.seeds, "bootstrap": args.bootstrap, "coverage": {}, "noise_check": {}}
    for scenario in ("mid", "floor"):
        start = time.perf_counter()
        rows = coverage(scenario, range(args.seeds), bootstrap=args.bootstrap)
        hits = sum(r["covered"] for r in rows)
        out["coverage"][scenario] = {
            "covered": hits / len(rows), "covered_ci": wilson(hits, len(rows)),
            "median_width": float(np.median([r["width"] for r in rows])),
            "median_abs_error": float(np.median([abs(r["error"]) for r in rows])),
            "refused": sum(not r["predictable"] for r in rows) / len(rows),
            "reach_warned": sum(r["reach_warning"] for r in rows) / len(rows),
            "seconds": round(time.perf_counter() - start, 1)}
        if text:
            c = out["coverage"][scenario]
            print(f"{scenario:6} covered {c['covered']:.0%} [{c['covered_ci'][0]:.0%}, {c['covered_ci'][1]:.0%}] of "
                  f"{len(rows)}; median width {c['median_width']:.3f}, median |error| {c['median_abs_error']:.3f}; "
                  f"refused {c['refused']:.0%}, reach warning {c['reach_warned']:.0%} ({c['seconds']} s)", flush=True)
    for scenario in ("mid", "noise_only"):
        n = refusals(scenario, range(args.noise_seeds))
        out["noise_check"][scenario] = {"refused": n / args.noise_seeds, "refused_ci": wilson(n, args.noise_seeds)}
        if text:
            lo, hi = wilson(n, args.noise_seeds)
            print(f"noise check on {scenario}: refused {n}/{args.noise_seeds} [{lo:.2%}, {hi:.2%}]", flush=True)
    if not text:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
