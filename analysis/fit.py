"""One call for every law: what ``scalinglab fit`` and the report use.

    from analysis.fit import fit_laws
    results = fit_laws("results/quickstart", predict=["N=1e7,D=1e8", "C=1e15"], bootstrap=200)
    for r in results:
        print(r.law, {k: (v.value, v.low, v.high) for k, v in r.params.items()})

Single-variable laws describe one variable at a time, so on a grid they are fitted to the
series that isolates it: L(N) to the points at the largest D, L(D) to those at the largest
N, L(C) to the compute frontier (points with a lower loss than every point of less compute).
``diagnostics.subset`` says which. The Chinchilla law uses every point.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from analysis.allocation import (
    APPROACHES,
    budgets_of,
    compare_approaches,
    end_points,
    fit_envelope,
    fit_isoflop,
    frontier,
)
from analysis.compute import FlopsPerUnit
from analysis.errors import UserError
from analysis.laws import LAWS, fit_lse_law
from analysis.points import Points, load_points, read_table
from analysis.records import TRIALS, NCount
from analysis.results import FitResult

NONPARAMETRIC = {"isoflop": fit_isoflop, "envelope": fit_envelope}  # Hoffmann et al.'s approaches 2 and 1
LAW_NAMES = (*LAWS, *NONPARAMETRIC)  # every law, in the order they are fitted and reported


def parse_target(text: str) -> dict[str, float]:
    """'N=1e9,D=2e10' or 'C=1e21' -> {'N': 1e9, 'D': 2e10}."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().upper()
        if not sep or key not in ("N", "D", "C"):
            raise UserError(f"--predict {text!r}: expected comma-separated N=…, D=…, C=… (e.g. N=1e9,D=2e10)")
        try:
            out[key] = float(value)
        except ValueError:
            raise UserError(f"--predict {text!r}: {value!r} is not a number") from None
        if not out[key] > 0:
            raise UserError(f"--predict {text!r}: {key} must be positive")
    return out


def subset_for(law: str, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    var = law.split("_")[-1] if "_" in law else None
    if var == "N" and df["D"].nunique() > 1:
        d = df["D"].max()
        return df[np.isclose(df["D"], d, rtol=1e-6)], f"points at the largest D ({d:.3g})"
    if var == "D" and df["N"].nunique() > 1:
        n = df["N"].max()
        return df[np.isclose(df["N"], n, rtol=1e-6)], f"points at the largest N ({n:.3g})"
    if var == "C":
        on = frontier(df["C"].to_numpy(float), df["loss"].to_numpy(float))
        return df.iloc[on], "the compute frontier (lower loss than every point of less compute)"
    return df, "all points"


def identifiable(law: str, points: Points) -> str | None:
    """None when the data can identify ``law``, else why not."""
    df = points.frame
    needs = {"chinchilla": ("N", "D"), "isoflop": ("N", "C"), "envelope": ("N",)}.get(law, (law[-1],))
    absent = [v for v in needs if v not in df]
    if absent:
        return f"needs column(s) for {', '.join(absent)}"
    if law == "chinchilla":
        if df["N"].nunique() < 3 or df["D"].nunique() < 3:
            return f"needs >= 3 distinct N and D (has {df['N'].nunique()} and {df['D'].nunique()})"
        return None
    if law == "isoflop":
        groups = df.groupby(budgets_of(df))["N"].nunique()
        return None if (groups >= 3).sum() >= 2 else "needs >= 2 compute budgets with >= 3 sizes each"
    if law == "envelope":
        if "trial_id" not in df:
            return "needs a trial_id column (it resamples whole trials)"
        ends = end_points(df)  # what the envelope is made of: each trial's finished point
        on = len(frontier(ends["C"].to_numpy(float), ends["loss"].to_numpy(float)))
        return None if on >= 3 else f"needs >= 3 trials' end points on the compute frontier (has {on})"
    sub, described = subset_for(law, df)
    var = law.split("_")[-1]
    need = 4 if LAWS[law].with_e else 3
    if sub[var].nunique() < 3 or len(sub) < need:
        return f"needs >= 3 distinct {var} and >= {need} points in {described}"
    return None


def fit_laws(source, *, laws: list[str] | None = None, predict: list[str] | None = None,
             bootstrap: int = 1000, seed: int = 0, n_col: str = TRIALS.n_params, d_col: str = TRIALS.data_units,
             c_col: str = TRIALS.flops, loss_col: str = TRIALS.final_loss, full_grid: bool = False,
             n_count: NCount = NCount.SCALING, jobs: int | None = None, log=None) -> list[FitResult]:
    """Fit ``laws`` (default: every law the data can identify) to a results folder, a
    CSV/Parquet path or a DataFrame. ``predict`` holds targets like 'N=1e9,D=2e10'.
    ``full_grid`` runs L-BFGS from every grid start (slow), so ``starts_at_best`` counts
    over the whole grid rather than its 32 best starts. ``n_count`` chooses N: the family's
    scaling count (``n_params``) or every parameter (``total_params``); an explicit ``n_col``
    wins over it. ``jobs`` processes run the bootstrap (default: one per core)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: expected a number of processes >= 1 (default: one per core)")
    unknown = [law for law in laws or [] if law not in LAW_NAMES]
    if unknown:
        raise UserError(f"unknown law(s) {unknown}; expected some of {LAW_NAMES}")
    # N and D are required when named explicitly, or when there is no compute column to fit
    # against; a table of published (C, loss) points alone needs neither.
    table = source if isinstance(source, pd.DataFrame) else read_table(source)[0]
    n_count = NCount(n_count)
    if n_count is NCount.TOTAL and n_col == TRIALS.n_params:
        n_col = TRIALS.total_params
    has_c = c_col in table.columns
    need = tuple(key for key, col, default in (("N", n_col, TRIALS.n_params), ("D", d_col, TRIALS.data_units))
                 if col != default or not has_c) + ("loss",)
    points = load_points(table, n_col=n_col, d_col=d_col, c_col=c_col, loss_col=loss_col, need=need)
    for w in points.warnings:
        log(f"warning: {w}")
    targets = [parse_target(t) for t in predict or []]
    chosen = laws or [law for law in LAW_NAMES if identifiable(law, points) is None]
    if not chosen:
        raise UserError(f"no law can be identified from {len(points.frame)} usable point(s): "
                            + "; ".join(f"{law}: {identifiable(law, points)}" for law in LAW_NAMES[:4]))
    results = []
    for law in chosen:
        log(f"fitting {law} ...")
        if law == "isoflop":
            results.append(fit_isoflop(points, bootstrap=bootstrap, seed=seed, predict=targets))
            continue
        if law == "envelope":
            results.append(fit_envelope(points, bootstrap=bootstrap, seed=seed))
            continue
        spec = LAWS[law]
        missing = [v for v in spec.variables if v not in points.frame]
        if missing:
            raise UserError(f"{law}: the table has no {', '.join(missing)} column")
        frame, subset = subset_for(law, points.frame)
        sub = Points(frame.reset_index(drop=True), points.dropped, list(points.warnings), flops=points.flops)
        usable = [t for t in targets if _can_predict(spec.variables, t, law)]
        result = fit_lse_law(spec, sub, bootstrap=bootstrap, seed=seed, predict=usable,
                             top_k=None if full_grid else 32, workers=jobs)
        result.diagnostics["subset"] = subset
        result.warnings += [f"--predict {t} skipped: {law} needs {', '.join(spec.variables)}"
                            for t in targets if t not in usable]
        results.append(result)
    for result in results:
        result.diagnostics["n_column"] = n_col
    return results


def _can_predict(variables, target, law) -> bool:
    have = set(target) | ({"C"} if {"N", "D"} <= set(target) else set())
    return set(variables) <= have or (law == "chinchilla" and "C" in target)


def summary(results: list[FitResult]) -> str:
    lines = []
    if results:
        first = results[0].diagnostics
        lines.append(f"compute: {FlopsPerUnit.from_json(first.get('compute')).describe()}")
        if first.get("n_column"):
            lines.append(f"N: column {first['n_column']!r}")
    for r in results:
        lines.append(f"{r.law}: {r.n_points} points ({r.dropped} dropped)"
                     + (f", R² (log) {r.r2_log:.4f}" if r.r2_log is not None else ""))
        for name, iv in {**r.params, **r.derived}.items():
            lines.append(f"  {name:>6} = {iv.value:.4g}  [{iv.low:.4g}, {iv.high:.4g}]")
        spread = r.diagnostics.get("seed_spread")
        if spread:
            lines.append(f"  run-to-run spread: {spread['rel_std']:.2%} of the loss (std over seeds; "
                         f"{spread['runs']} runs at {spread['points_with_seeds']} points), beside the intervals above")
        held = held_out_text(r)
        if held:
            lines.append(f"  held-out: {held}")
        lines += [f"  predict {prediction_text(p)}" for p in r.predictions]
        lines += [f"  warning: {w}" for w in r.warnings]
    side_by_side = compare_approaches(results)
    if side_by_side:
        lines.append(f"allocation at C={side_by_side['C']:.3g}, by each approach (95% intervals):")
        for law, row in side_by_side["approaches"].items():
            lines.append(f"  {APPROACHES[law]:<32} a = {row['a'].text('.3f')}, "
                         f"{row['D_per_N'].text('.3g')} data units per parameter")
        lines += [f"  warning: {w}" for w in side_by_side["warnings"]]
    return "\n".join(lines)


def held_out_text(fit: FitResult) -> str | None:
    """The held-out check in words (what the summary and the report's fit table show)."""
    held = fit.diagnostics.get("held_out")
    if not held:
        return None
    if "N_opt" in held:  # IsoFLOP: the largest budget left out
        return (f"refit without the largest budget, its N_opt is predicted {held['rel_error']:+.1%} off "
                f"({held['N_opt_predicted']:.3g} vs {held['N_opt']:.3g})")
    return (f"{held['n_held_out']} largest-C point(s) predicted within {held['max_abs_rel_error']:.2%} "
            "(refit without them)")


def prediction_text(p: dict) -> str:
    """'N=…, D=…, C=…: loss … [low, high], …x beyond the data' of one prediction."""
    loss = f": loss {p['loss'].text('.4f')}" if "loss" in p else ""
    return f"{_where(p)}{loss}, {p['extrapolation']:.3g}x beyond the data"


def _where(p: dict) -> str:
    """'N=…, D=…, C=…' of a prediction; a compute-optimal split's N and D with their intervals."""
    parts = []
    for k in ("N", "D", "C"):
        if k in p:
            iv = p.get(f"{k}_interval")
            parts.append(f"{k}={p[k]:.3g}" + (f" [{iv.low:.3g}, {iv.high:.3g}]" if iv is not None else ""))
    if "D_per_N" in p:
        parts.append(f"{p['D_per_N']:.3g} per parameter")
    return ", ".join(parts)
