"""Chinchilla-fit speed: 240 points (the size of Epoch AI's replication data), the full grid
of initial values (4,500 starts), and 1,000 bootstrap refits with the full check, against a
straightforward reference measured in the same run: scipy's L-BFGS-B called once per grid
point (default options), same grid, same data.

    python benchmarks/fit_speed.py [--points 240] [--bootstrap 1000] [--jobs N] [--format json]

Prints the seconds of each part, the point-fit speed-up, whether both reach the same optimum
(objective equal within 1e-6 relative), and the whole job's time on an idle machine and with
another process keeping one core busy (``loaded_ratio``: the second over the first; the
median of 3 runs each, after a first run that starts the bootstrap's worker pool).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import lse_fit  # noqa: E402
from analysis.laws import LAWS, fit_lse_law  # noqa: E402
from analysis.points import load_points  # noqa: E402


def synthetic(points: int, seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = 10
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, sizes), np.geomspace(1e9, 1e12, points // sizes)))
    loss = (1.7 + 400 / n ** 0.34 + 400 / d ** 0.28) * np.exp(rng.normal(0, noise, n.size))
    return pd.DataFrame({"n_params": n, "data_units": d, "final_loss": loss})


def reference(logx: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    """The straightforward way: L-BFGS-B from every grid point, scipy defaults."""
    t0 = time.perf_counter()
    best = np.inf
    for start in lse_fit.grid(2, True):
        res = minimize(lse_fit.objective, start, args=(logx, logy, True), jac=True, method="L-BFGS-B")
        best = min(best, res.fun)
    return time.perf_counter() - t0, float(best)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=240)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--jobs", type=int, help="bootstrap processes (default: one per core)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    df = synthetic(args.points)
    points = load_points(df)
    logx = np.log(df[["n_params", "data_units"]].to_numpy())
    logy = np.log(df["final_loss"].to_numpy())

    t0 = time.perf_counter()
    ours = lse_fit.fit_from_grid(logx, logy, True)
    point_s = time.perf_counter() - t0
    ref_s, ref_obj = reference(logx, logy)

    def whole_job():
        t0 = time.perf_counter()
        result = fit_lse_law(LAWS["chinchilla"], points, bootstrap=args.bootstrap, seed=0, workers=args.jobs)
        return time.perf_counter() - t0, result

    first_s, result = whole_job()  # starts the pool
    whole_s = statistics.median(whole_job()[0] for _ in range(3))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another process on one core
    try:
        time.sleep(0.5)
        loaded_s = statistics.median(whole_job()[0] for _ in range(3))
    finally:
        busy.kill()
        busy.wait()

    same = abs(ours.best.objective - ref_obj) <= 1e-6 * abs(ref_obj)
    out = {
        "points": len(df), "grid_starts": ours.starts_total, "starts_optimized": ours.starts_optimized,
        "starts_at_best": ours.starts_at_best, "point_fit_s": point_s, "reference_s": ref_s,
        "speedup": ref_s / point_s, "objective": ours.best.objective, "reference_objective": ref_obj,
        "same_optimum": bool(same), "bootstrap": args.bootstrap,
        "first_job_s": first_s, "whole_job_s": whole_s, "loaded_job_s": loaded_s, "loaded_ratio": loaded_s / whole_s,
        "bootstrap_check": result.diagnostics.get("bootstrap_check"),
        "alpha": result.params["alpha"].to_json(), "beta": result.params["beta"].to_json(),
    }
    if args.format == "json":
        print(json.dumps(out))
        return 0
    print(f"{len(df)} points, grid of {ours.starts_total} starts, best {ours.starts_optimized} optimized "
          f"({ours.starts_at_best} reached the best optimum)")
    print(f"point fit        {point_s:7.2f} s   objective {ours.best.objective:.10g}")
    print(f"reference        {ref_s:7.2f} s   objective {ref_obj:.10g}   (L-BFGS-B from every grid point)")
    print(f"speed-up         {ref_s / point_s:7.1f}x  (target >= 10x); same optimum: {same}")
    print(f"whole job        {whole_s:7.2f} s   (point fit + {args.bootstrap} bootstrap refits + checks; target <= 5 s; "
          f"{first_s:.2f} s the first time, which starts the worker pool)")
    print(f"one core busy    {loaded_s:7.2f} s   {loaded_s / whole_s:.2f}x idle (target <= 2x)")
    print(f"bootstrap check  {result.diagnostics.get('bootstrap_check')}  (warm starts vs full grid on resamples)")
    a, b = result.params["alpha"], result.params["beta"]
    print(f"alpha {a.value:.4f} [{a.low:.4f}, {a.high:.4f}]  beta {b.value:.4f} [{b.low:.4f}, {b.high:.4f}]  (true 0.34, 0.28)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
