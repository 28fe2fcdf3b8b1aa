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

from analysis.allocation import budgets_of, fit_envelope, fit_isoflop
from analysis.errors import UserError
from analysis.laws import LAWS, fit_lse_law
from analysis.points import Points, load_points, read_table
from analysis.records import TRIALS
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
        ordered = df.sort_values("C")
        frontier = ordered[ordered["loss"] < ordered["loss"].cummin().shift(fill_value=np.inf)]
        return frontier, "the compute frontier (lower loss than every point of less compute)"
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
        if points.evals is None or "trial_id" not in df or df["trial_id"].nunique() < 2:
            return "needs per-evaluation rows of at least 2 completed trials"
        return None
    sub, described = subset_for(law, df)
    var = law.split("_")[-1]
    need = 4 if LAWS[law].with_e else 3
    if sub[var].nunique() < 3 or len(sub) < need:
        return f"needs >= 3 distinct {var} and >= {need} points in {described}"
    return None


def fit_laws(source, *, laws: list[str] | None = None, predict: list[str] | None = None,
             bootstrap: int = 1000, seed: int = 0, n_col: str = TRIALS.n_params, d_col: str = TRIALS.data_units,
             c_col: str = TRIALS.flops, loss_col: str = TRIALS.final_loss, full_grid: bool = False,
             evals: pd.DataFrame | None = None, log=None) -> list[FitResult]:
    """Fit ``laws`` (default: every law the data can identify) to a results folder, a
    CSV/Parquet path or a DataFrame. ``predict`` holds targets like 'N=1e9,D=2e10'.
    ``full_grid`` runs L-BFGS from every grid start (slow), so ``starts_at_best`` counts
    over the whole grid rather than its 32 best starts. ``evals`` gives a DataFrame source its
    per-evaluation rows (a results folder brings its own)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    unknown = [law for law in laws or [] if law not in LAW_NAMES]
    if unknown:
        raise UserError(f"unknown law(s) {unknown}; expected some of {LAW_NAMES}")
    # N and D are required when named explicitly, or when there is no compute column to fit
    # against; a table of published (C, loss) points alone needs neither.
    table, evals = (source, evals) if isinstance(source, pd.DataFrame) else read_table(source)
    has_c = c_col in table.columns
    need = tuple(key for key, col, default in (("N", n_col, TRIALS.n_params), ("D", d_col, TRIALS.data_units))
                 if col != default or not has_c) + ("loss",)
    points = load_points(table, n_col=n_col, d_col=d_col, c_col=c_col, loss_col=loss_col, need=need)
    points.evals = evals
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
        if law in NONPARAMETRIC:
            results.append(NONPARAMETRIC[law](points, bootstrap=bootstrap, seed=seed))
            continue
        spec = LAWS[law]
        missing = [v for v in spec.variables if v not in points.frame]
        if missing:
            raise UserError(f"{law}: the table has no {', '.join(missing)} column")
        frame, subset = subset_for(law, points.frame)
        sub = Points(frame.reset_index(drop=True), points.dropped, list(points.warnings), points.evals)
        usable = [t for t in targets if _can_predict(spec.variables, t, law)]
        result = fit_lse_law(spec, sub, bootstrap=bootstrap, seed=seed, predict=usable,
                             top_k=None if full_grid else 32)
        result.diagnostics["subset"] = subset
        result.warnings += [f"--predict {t} skipped: {law} needs {', '.join(spec.variables)}"
                            for t in targets if t not in usable]
        results.append(result)
    return results


def _can_predict(variables, target, law) -> bool:
    have = set(target) | ({"C"} if {"N", "D"} <= set(target) else set())
    return set(variables) <= have or (law == "chinchilla" and "C" in target)


def summary(results: list[FitResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.law}: {r.n_points} points ({r.dropped} dropped)"
                     + (f", R² (log) {r.r2_log:.4f}" if r.r2_log is not None else ""))
        for name, iv in {**r.params, **r.derived}.items():
            lines.append(f"  {name:>6} = {iv.value:.4g}  [{iv.low:.4g}, {iv.high:.4g}]")
        held = r.diagnostics.get("held_out")
        if held:
            lines.append(f"  held-out: {held['n_held_out']} largest-C point(s) predicted within "
                         f"{held['max_abs_rel_error']:.2%} (refit without them)")
        for p in r.predictions:
            where = ", ".join(f"{k}={p[k]:.3g}" for k in ("N", "D", "C") if k in p)
            loss = p["loss"]
            lines.append(f"  predict {where}: loss {loss.value:.4f} [{loss.low:.4f}, {loss.high:.4f}], "
                         f"{p['extrapolation']:.3g}x beyond the data")
        lines += [f"  warning: {w}" for w in r.warnings]
    return "\n".join(lines)
