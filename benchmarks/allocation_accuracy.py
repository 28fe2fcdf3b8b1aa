"""Error rates of the compute-optimal allocation, on the ground truth of
``tests/analysis/test_compute.py``: L = 1.7 + 400/N^0.34 + 400/D^0.28 with FLOPs per token
6N + 2000·N^(2/3) (not 6ND), split at C = 1e22.

    python benchmarks/allocation_accuracy.py [--seeds 20] [--bootstrap 200] [--format json]

For the Chinchilla split (a 6 × 6 grid of N 1e7-1e10 and D 1e9-1e12) and IsoFLOP (5 budgets
1e18-1e22, 9 sizes each over ±1 decade around the optimum), at 0.1%, 0.25% and 1% noise:
the median and worst relative error of N_opt, D_opt and tokens per parameter, how many seeds
land within 3% (N_opt, D_opt) and 6% (tokens per parameter), how many 95% intervals hold the
truth, and the same split under 6ND (what the code did before the compute convention).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.allocation import fit_isoflop  # noqa: E402
from analysis.laws import LAWS, fit_lse_law  # noqa: E402
from analysis.points import load_points  # noqa: E402
from tests.analysis.test_compute import (  # noqa: E402
    TARGET_C,
    _covered,
    _errors,
    grid_table,
    isoflop_table,
    within,
)


def one(approach: str, seed: int, noise: float, bootstrap: int, six_nd: bool = False) -> dict:
    if approach == "chinchilla":
        table = grid_table(seed, noise)
        if six_nd:
            table = table.drop(columns="flops")
        r = fit_lse_law(LAWS["chinchilla"], load_points(table), bootstrap=bootstrap, seed=seed,
                        check_resamples=0, held_out=False, workers=1, predict=[{"C": TARGET_C}])
    else:
        r = fit_isoflop(load_points(isoflop_table(seed, noise)), bootstrap=bootstrap, seed=seed,
                        predict=[{"C": TARGET_C}])
    p = r.predictions[0]
    return {"errors": _errors(p, TARGET_C), "covered": bool(bootstrap) and _covered(p, TARGET_C)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    rows = []
    for approach in ("chinchilla", "isoflop"):
        for noise, six_nd in ((0.001, False), (0.0025, False), (0.01, False), (0.001, True)):
            if six_nd and approach == "isoflop":
                continue
            runs = [one(approach, s, noise, args.bootstrap, six_nd) for s in range(args.seeds)]
            err = np.abs(np.array([r["errors"] for r in runs]))
            rows.append({"approach": approach + (" under 6ND" if six_nd else ""), "noise": noise,
                         "median_error": dict(zip(("N", "D", "D_per_N"), np.median(err, axis=0).round(4).tolist())),
                         "worst_error": dict(zip(("N", "D", "D_per_N"), err.max(axis=0).round(4).tolist())),
                         "within_3_3_6_percent": int(sum(within(r["errors"]) for r in runs)),
                         "intervals_cover": int(sum(r["covered"] for r in runs)), "seeds": args.seeds})
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    print(f"{'approach':<22} {'noise':>6}  {'median |error| N, D, D/N':<26} {'worst':<24} within  covered")
    for r in rows:
        med = ", ".join(f"{v:.1%}" for v in r["median_error"].values())
        worst = ", ".join(f"{v:.1%}" for v in r["worst_error"].values())
        print(f"{r['approach']:<22} {r['noise']:>6.2%}  {med:<26} {worst:<24} {r['within_3_3_6_percent']:>3}/{r['seeds']}"
              f"  {r['intervals_cover']:>3}/{r['seeds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
