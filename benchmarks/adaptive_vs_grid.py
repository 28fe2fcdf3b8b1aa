"""Adaptive design against fixed grids and random designs, on a known law (docs/adaptive.md).

    python benchmarks/adaptive_vs_grid.py [--seeds 20] [--noise 0.005] [--stop-width 0.05 0.03]
                                          [--target C=1e21] [--format json]

Ground truth: the published Chinchilla fit, L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28 (Hoffmann
et al. 2022), observed with log-normal run-to-run noise of ``--noise`` (relative), each run
costing C = 6·N·D. The candidate region is a ladder of 5 sizes (N 1e7-1e9) × 8 data budgets
(D 2e8-2e10, log-spaced); the target lies beyond it (default: the loss at the compute-optimal
split of C = 1e21, 8x the largest candidate). Every design is fitted by the same fitter
(``analysis.design.Design.fit``: the Chinchilla law, bootstrap intervals) and, per seed, sees
the same noise at the same candidate.

- ``adaptive``: ``analysis.design`` with its default seed design, one run per decision, until
  the target's 95% interval is narrower than ``--stop-width`` (or ``--max-trials``); each
  width given is a separate run of the designs on the same noise.
- ``grid``: every sizes-subset × D-subset grid of the region (3, 4 or 5 sizes; 3 to 8 data
  budgets up to the 6th, 7th or 8th); for each, the median width over seeds. The grid a
  design "needs" for a width is the cheapest grid whose median width is at most that width.
- ``random``: the adaptive design's seed points, then candidates drawn uniformly at random,
  under the same stopping rule.

Prints a table per width, and as its last line (with ``--format json``) a JSON document whose
top level is the first width's: ``compute_ratio`` (median over seeds of: the compute of the
grid needed to reach that seed's adaptive final width ÷ the compute the adaptive design spent;
where no grid of the region reaches it, the full grid's compute stands in, a lower bound
counted in ``censored``) and ``coverage`` (design name -> the fraction of seeds whose final
95% interval holds the true value; for ``grid``, the grid needed for the adaptive design's
median width); ``by_stop_width`` holds every width's.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.compute import FlopsPerUnit  # noqa: E402
from analysis.design import Design, natural, target_values  # noqa: E402
from analysis.fit import parse_target  # noqa: E402
from analysis.laws import law_value  # noqa: E402
from analysis.adaptive_spec import AdaptiveSpec, Target  # noqa: E402

TRUTH = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
SIZES = np.geomspace(1e7, 1e9, 5)
BUDGETS = np.geomspace(2e8, 2e10, 8)
SIX_ND = FlopsPerUnit()


def candidates() -> pd.DataFrame:
    rows = [(f"n{i}-d{j}", n, d) for (i, n), (j, d) in itertools.product(enumerate(SIZES), enumerate(BUDGETS))]
    frame = pd.DataFrame(rows, columns=["key", "N", "D"])
    frame["C"] = 6 * frame["N"] * frame["D"]
    frame["cost"] = frame["C"]
    return frame


def grids() -> list[tuple[str, list[str]]]:
    """(name, candidate keys) of every fixed grid the comparison may pick."""
    out = []
    for sizes in ([0, 2, 4], [0, 1, 3, 4], [0, 1, 2, 3, 4]):
        for top in (5, 6, 7):
            for k in range(3, top + 2):
                budgets = sorted({int(round(x)) for x in np.linspace(0, top, k)})
                out.append((f"{len(sizes)}x{len(budgets)} (D to #{top + 1})",
                            [f"n{i}-d{j}" for i in sizes for j in budgets]))
    return out


def true_value(target: Target) -> float:
    return float(natural(target, target_values(target, TRUTH, SIX_ND, float(candidates()["C"].max()))))


def observations(seed: int, noise: float) -> dict[str, float]:
    frame = candidates()
    rng = np.random.default_rng(seed)
    loss = law_value("chinchilla", TRUTH, N=frame["N"].to_numpy(), D=frame["D"].to_numpy())
    return dict(zip(frame["key"], loss * np.exp(noise * rng.standard_normal(len(frame)))))


def run_design(design: Design, observed: dict[str, float], choose) -> dict:
    """Seed design, then ``choose(design)`` runs one at a time until a stopping rule holds."""
    for key in design.seed_design():
        design.observe(key, observed[key])
    while True:
        picked = choose(design)
        if not picked:
            break
        for key in picked:
            design.observe(key, observed[key])
    est = design.last
    return {"spent": design.spent, "runs": len(design.chosen), "width": est.width, "low": est.low,
            "high": est.high, "stopped": str(design.stopped)}


def random_choice(seed: int):
    rng = np.random.default_rng(10_000 + seed)

    def choose(design: Design) -> list[str]:
        if design.check() is None:
            return []
        free = np.flatnonzero(design.open_candidates())
        key = design.candidates["key"][int(rng.choice(free))]
        design.chosen.append(key)
        return [key]

    return choose


def one_seed(job) -> dict:
    """One seed's noise: every grid fitted once, the adaptive and random designs run to each
    of ``widths``."""
    seed, settings, widths, noise = job
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        observed = observations(seed, noise)
        out = {"seed": seed, "grids": {}, "widths": {}}
        for width in widths:
            at = dataclasses.replace(settings, stop_width=width)
            out["widths"][width] = {
                name: run_design(Design(candidates(), at, SIX_ND), observed, choose)
                for name, choose in (("adaptive", lambda d: d.decide()), ("random", random_choice(seed)))}
        for name, keys in grids():
            design = Design(candidates(), settings, SIX_ND)
            design.chosen = list(keys)
            for key in keys:
                design.observe(key, observed[key])
            est = design.fit()[0]
            out["grids"][name] = {"spent": design.spent, "width": est.width, "low": est.low, "high": est.high}
    return out


def summarise(results: list[dict], width: float, truth: float) -> dict:
    """The figures at one stopping width (module docstring). Where no grid of the region
    reaches a seed's adaptive width, the full grid's compute stands in: a lower bound on
    what a grid needs (counted in ``censored``)."""
    runs = [{**r["widths"][width], "grids": r["grids"]} for r in results]
    covered = {name: float(np.mean([r[name]["low"] <= truth <= r[name]["high"] for r in runs]))
               for name in ("adaptive", "random")}
    grid_names = list(results[0]["grids"])
    grid_width = {g: float(np.median([r["grids"][g]["width"] for r in results])) for g in grid_names}
    grid_cost = {g: results[0]["grids"][g]["spent"] for g in grid_names}
    by_cost = sorted(grid_names, key=grid_cost.get)
    full = grid_cost[by_cost[-1]]

    def needed(w: float) -> str | None:
        return next((g for g in by_cost if grid_width[g] <= w), None)

    ratios = [grid_cost.get(needed(r["adaptive"]["width"]), full) / r["adaptive"]["spent"] for r in runs]
    censored = sum(needed(r["adaptive"]["width"]) is None for r in runs)
    g_med = needed(float(np.median([r["adaptive"]["width"] for r in runs]))) or by_cost[-1]
    covered["grid"] = float(np.mean([r["grids"][g_med]["low"] <= truth <= r["grids"][g_med]["high"] for r in runs]))
    return {
        "stop_width": width, "compute_ratio": float(np.median(ratios)), "censored": censored, "coverage": covered,
        "adaptive": _stats(runs, "adaptive", full), "random": _stats(runs, "random", full),
        "grid_needed": {"grid": g_med, "spent": grid_cost[g_med], "median_width": grid_width[g_med]},
        "full_grid": {"spent": full, "median_width": grid_width[by_cost[-1]]},
    }


def _stats(results: list[dict], name: str, full: float) -> dict:
    rows = [r[name] for r in results]
    return {"median_spent": float(np.median([r["spent"] for r in rows])),
            "median_spent_of_full_grid": float(np.median([r["spent"] for r in rows]) / full),
            "median_runs": float(np.median([r["runs"] for r in rows])),
            "median_width": float(np.median([r["width"] for r in rows])),
            "stopped": {s: sum(r["stopped"] == s for r in rows) for s in sorted({r["stopped"] for r in rows})}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.005, help="run-to-run noise, relative (log-normal)")
    parser.add_argument("--target", default="C=1e21", help="N=…,D=…, C=…, or a (the allocation exponent)")
    parser.add_argument("--stop-width", type=float, nargs="+", default=[0.05, 0.03],
                        help="one or more widths; the JSON's top level is the first's (3%% is about what the "
                             "full grid itself reaches: a ratio there is mostly a lower bound)")
    parser.add_argument("--max-trials", type=int, default=40)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    target = Target(allocation=True) if args.target == "a" else Target(**parse_target(args.target))
    settings = AdaptiveSpec(target=target, max_trials=args.max_trials, bootstrap=args.bootstrap)
    started = time.monotonic()
    jobs = [(seed, settings, args.stop_width, args.noise) for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(one_seed, jobs))
    truth = true_value(target)
    by_width = [summarise(results, w, truth) for w in args.stop_width]
    wall = round(time.monotonic() - started, 1)
    print(f"target: {target.describe()} (true value {truth:.5g}); noise {args.noise:.2%}; {args.seeds} seeds; "
          f"{wall} s")
    for out in by_width:
        _print(out)
    if args.format == "json":
        print(json.dumps({"target": target.describe(), "noise": args.noise, "seeds": args.seeds, "truth": truth,
                          **by_width[0], "by_stop_width": by_width, "wall_s": wall}))
    return 0


def _print(out: dict) -> None:
    a, r, g = out["adaptive"], out["random"], out["grid_needed"]
    print(f"\nstop at width {out['stop_width']:.2%}:")
    print(f"{'design':<10} {'median FLOPs':>13} {'of full grid':>13} {'runs':>5} {'width':>8} {'coverage':>9}")
    for name, row in (("adaptive", a), ("random", r)):
        print(f"{name:<10} {row['median_spent']:>13.3g} {row['median_spent_of_full_grid']:>13.1%} "
              f"{row['median_runs']:>5g} {row['median_width']:>8.2%} {out['coverage'][name]:>9.0%}")
    print(f"{'grid':<10} {g['spent']:>13.3g} {g['spent'] / out['full_grid']['spent']:>13.1%} "
          f"{'':>5} {g['median_width']:>8.2%} {out['coverage']['grid']:>9.0%}  ({g['grid']}: the grid needed "
          "for the adaptive median width)")
    print(f"compute_ratio (grid needed / adaptive, median over seeds): {out['compute_ratio']:.3g}"
          + (f"; for {out['censored']} seed(s) no grid of the region reaches the adaptive width, and the full "
             "grid's compute stands in (a lower bound)" if out["censored"] else ""))
    print(f"stopped by: adaptive {a['stopped']}, random {r['stopped']}")


if __name__ == "__main__":
    sys.exit(main())
