"""Error rates of the emergence detector at several levels, on the simulated series of
``analysis/emergence_calibration.py`` (smooth curves that must not be called emergent, steps
of 5 standard errors of the difference that must be, with the true step in the bracket).

    python benchmarks/emergence_calibration.py [--levels 0.005 0.01 0.02 0.05 0.1]
        [--smooth 3000] [--steps 1000] [--seed 1] [--format json]

Prints, for each noise model and level, the false-alarm rate (``emergent`` on smooth
curves) and the detection rate, each with its 95% Wilson interval, and the detection rate by
number of scales. The docs' table (docs/emergence.md) is this output at the defaults.
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

from analysis.emergence import LEVEL  # noqa: E402
from analysis.emergence_calibration import NOISES, rates, wilson  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.005, LEVEL, 0.03, 0.05])
    parser.add_argument("--noises", nargs="+", choices=NOISES, default=list(NOISES))
    parser.add_argument("--smooth", type=int, default=3000, help="smooth curves per noise model and level")
    parser.add_argument("--steps", type=int, default=1000, help="steps per noise model and level")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    rows = []
    if args.format == "text":
        print(f"{'noise':9} {'level':>6}  {'false alarms':>26}  {'detected':>24}  by number of scales (5..12)")
    for noise in args.noises:
        for level in args.levels:
            start = time.perf_counter()
            r = rates(noise, level=level, smooth=args.smooth, steps=args.steps, seed=args.seed)
            fa, det = r["false_alarm"]["all"], r["detection"]["all"]
            row = {"noise": noise, "level": level, "false_alarm": fa[0] / fa[1], "false_alarm_ci": wilson(*fa),
                   "detection": det[0] / det[1], "detection_ci": wilson(*det),
                   "false_alarm_by_family": {k: v[0] / v[1] for k, v in r["false_alarm"].items() if k != "all"},
                   "detection_by_scales": {str(k): v[0] / v[1] for k, v in r["detection"].items() if k != "all"},
                   "counts": r, "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            if args.format == "text":
                lo, hi = row["false_alarm_ci"]
                dlo, dhi = row["detection_ci"]
                by = " ".join(f"{row['detection_by_scales'][str(n)]:.2f}" for n in range(5, 13)
                              if str(n) in row["detection_by_scales"])
                print(f"{noise:9} {level:6g}  {row['false_alarm']:6.2%} [{lo:.2%}, {hi:.2%}] ({fa[0]}/{fa[1]})"
                      f"  {row['detection']:6.1%} [{dlo:.1%}, {dhi:.1%}]  {by}", flush=True)
    if args.format == "json":
        print(json.dumps({"smooth": args.smooth, "steps": args.steps, "seed": args.seed, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
