"""Compute-optimal allocation the non-parametric ways (Hoffmann et al. 2022):

- **IsoFLOP profiles** (Approach 2): for each compute budget, a parabola in log N through
  the final losses; its minimum gives N_opt(C), and D_opt(C) = C / (6·N_opt). Power laws
  through those optima give N_opt ∝ C^a and D_opt ∝ C^b.
- **Training-curve envelope** (Approach 1): from the per-evaluation rows, the lowest loss
  any trial reached at each compute amount; a power law L = A·C^(−α) through it, and
  N_opt ∝ C^a from which model size holds the envelope where.

Both bootstrap for intervals: IsoFLOP resamples points within each budget, the envelope
resamples whole trials.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.errors import UserError
from analysis.points import Points
from analysis.results import FitResult, Interval, interval_warnings, r2_log


def budgets_of(df: pd.DataFrame) -> pd.Series:
    """The isoflop budget of each point: the ``budget`` column when the sweep had one, else
    C rounded to 0.05 decades (points of a grid rarely share a budget: few groups form)."""
    if "budget" in df and df["budget"].notna().all():
        return df["budget"]
    return 10 ** (np.round(np.log10(df["C"]) / 0.05) * 0.05)


def _parabola_minima(df: pd.DataFrame, budgets: pd.Series) -> list[tuple[float, float, bool, tuple]]:
    """(C, N_opt, inside the sampled N range, parabola coefficients in log N) for each budget
    with >= 3 distinct N."""
    out = []
    for c, group in df.groupby(budgets):
        if group["N"].nunique() < 3:
            continue
        x = np.log(group["N"].to_numpy(float))
        curv, slope, const = np.polyfit(x, group["loss"].to_numpy(float), 2)
        if curv <= 0:
            continue  # no minimum: the profile is not convex
        x_opt = -slope / (2 * curv)
        if abs(x_opt) > 700:  # a nearly flat profile: its "minimum" is meaningless (and overflows)
            continue
        out.append((float(c), float(np.exp(x_opt)), bool(x.min() <= x_opt <= x.max()),
                    (float(curv), float(slope), float(const))))
    return out


def _exponent(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(c), np.log(y), 1)
    return float(slope), float(intercept)


def fit_isoflop(points: Points, *, bootstrap: int = 1000, seed: int = 0) -> FitResult:
    df = points.frame
    budgets = budgets_of(df)
    minima = _parabola_minima(df, budgets)
    if len(minima) < 2:
        raise UserError(
            f"isoflop: {len(minima)} compute budget(s) with a convex profile over >= 3 sizes; "
            "needs at least 2 (an isoflop sweep: budgets.kind isoflop, 3+ sizes per budget)")
    c, n_opt, inside = (np.array(v) for v in list(zip(*minima))[:3])
    parabolas = [m[3] for m in minima]
    d_opt = c / (6 * n_opt)
    a, log_k = _exponent(c, n_opt)
    b, _ = _exponent(c, d_opt)
    draws = []
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(budgets.to_numpy() == bgt) for bgt in np.unique(budgets)]
    for _ in range(bootstrap):
        idx = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        m = _parabola_minima(df.iloc[idx].reset_index(drop=True), budgets.iloc[idx].reset_index(drop=True))
        if len(m) >= 2:
            cc, nn = (np.array(v) for v in list(zip(*m))[:2])
            draws.append((_exponent(cc, nn)[0], _exponent(cc, cc / (6 * nn))[0]))
    draws = np.array(draws) if draws else None
    params = {"a": Interval.from_samples(a, None if draws is None else draws[:, 0]),
              "b": Interval.from_samples(b, None if draws is None else draws[:, 1])}
    result = FitResult("isoflop", len(df), points.dropped, params, warnings=list(points.warnings))
    result.r2_log = r2_log(np.log(n_opt), log_k + a * np.log(c))
    # N_opt = exp(log_k)·C^a; each parabola is loss = q2·(log N)² + q1·log N + q0.
    result.diagnostics = {"log_k": log_k,
                          "budgets": [{"C": float(ci), "N_opt": float(ni), "D_opt": float(di),
                                       "D_per_N": float(di / ni), "minimum_inside": bool(ins),
                                       "parabola": list(q)}
                                      for ci, ni, di, ins, q in zip(c, n_opt, d_opt, inside, parabolas)]}
    if draws is not None:
        result.samples = {"a": draws[:, 0], "b": draws[:, 1]}
    if not inside.all():
        result.warnings.append(f"{int((~inside).sum())} budget(s) have their minimum outside the sampled "
                               "sizes: those N_opt are extrapolations of a parabola")
    if len(minima) < 3:
        result.warnings.append("only 2 budgets: the exponents rest on two points")
    result.warnings += interval_warnings(params)
    return result


def fit_envelope(points: Points, *, bootstrap: int = 1000, seed: int = 0, bins: int = 24) -> FitResult:
    evals = points.evals
    if evals is None or "metric" not in evals:
        raise UserError("envelope: needs the per-evaluation rows (evals.parquet of a results folder)")
    curves = evals[evals["metric"] == "loss"][["trial_id", "flops", "value"]]
    curves = curves[(curves["flops"] > 0) & (curves["value"] > 0) & np.isfinite(curves["value"])]
    trial_n = _trial_sizes(points)
    curves = curves[curves["trial_id"].isin(trial_n.index)]
    ids = curves["trial_id"].unique()
    if len(ids) < 2:
        raise UserError("envelope: needs the evaluation curves of at least 2 trials")
    grid = np.geomspace(curves["flops"].min(), curves["flops"].max(), bins)
    # Each trial's log-loss curve on the log-C grid, once (inf outside its range): a
    # bootstrap resample of trials is then a minimum over rows, not a new interpolation.
    log_grid = np.log(grid)
    log_curves = np.full((len(ids), len(grid)), np.inf)
    for row, (tid, cur) in enumerate(curves.groupby("trial_id", sort=False)):
        cur = cur.sort_values("flops")
        x, y = np.log(cur["flops"].to_numpy()), np.log(cur["value"].to_numpy())
        inside = (log_grid >= x.min()) & (log_grid <= x.max())
        log_curves[row, inside] = np.interp(log_grid[inside], x, y)
    sizes = trial_n.loc[ids].to_numpy(float)

    def envelope(rows):
        sub = log_curves[rows]
        first_best = sub.argmin(axis=0)  # the first trial at the minimum, as a scan would keep
        best = sub[first_best, np.arange(len(grid))]
        ok = np.isfinite(best)
        return grid[ok], np.exp(best[ok]), sizes[rows][first_best][ok]

    def exponents(rows):
        c, loss, n = envelope(rows)
        alpha, log_a = _exponent(c, loss)
        a = _exponent(c, n)[0] if len(np.unique(n)) >= 3 else np.nan
        return -alpha, np.exp(log_a), a, (c, loss, n)

    alpha, coeff, a, (c, loss, n) = exponents(np.arange(len(ids)))
    rng = np.random.default_rng(seed)
    draws = np.array([exponents(rng.choice(len(ids), size=len(ids)))[:3] for _ in range(bootstrap)]) if bootstrap else None
    col = (lambda i: None if draws is None else draws[:, i])
    params = {"A": Interval.from_samples(coeff, col(1)), "alpha": Interval.from_samples(alpha, col(0))}
    derived = {}
    if np.isfinite(a):
        derived = {"a": Interval.from_samples(a, col(2)), "b": Interval.from_samples(1 - a, None if draws is None else 1 - draws[:, 2])}
    result = FitResult("envelope", len(ids), points.dropped, params, derived, warnings=list(points.warnings))
    if draws is not None:
        result.samples = {"A": draws[:, 1], "alpha": draws[:, 0]}
    result.r2_log = r2_log(np.log(loss), np.log(coeff) - alpha * np.log(c))
    result.diagnostics = {"envelope": [{"C": float(ci), "loss": float(li), "N": float(ni)} for ci, li, ni in zip(c, loss, n)]}
    if not np.isfinite(a):
        result.warnings.append("fewer than 3 model sizes hold the envelope: N_opt(C) is not identified")
    result.warnings += interval_warnings(params)
    return result


def _trial_sizes(points: Points) -> pd.Series:
    frame = points.frame
    if "trial_id" not in frame:
        raise UserError("envelope: the points carry no trial_id to join the evaluation rows on")
    return frame.set_index("trial_id")["N"]
