"""Compute-optimal allocation the non-parametric ways (Hoffmann et al. 2022), and the check
that puts the three approaches side by side.

- **IsoFLOP profiles** (Approach 2): for each compute budget, a parabola in log N through
  the final losses (a cubic where every budget has 6+ sizes and AICc prefers it: see
  :func:`profile_degree`); its minimum gives N_opt(C), and D_opt(C) = C / f(N_opt) with f the FLOPs
  per data unit (``analysis.compute``). Power laws through those optima give N_opt ∝ C^a and,
  fitted on their own, D_opt ∝ C^b (a + b = 1 only when f is linear in N).
  Intervals: a residual bootstrap that keeps every budget usable. Each budget keeps its sizes;
  its losses are the fitted profile's plus residuals drawn from every budget's residuals (each
  scaled by √(n/(n − k)) for the profile's k fitted coefficients), and the profiles are
  refitted. A draw is valid when every budget still has a minimum; ``valid_draws`` counts them.
- **Envelope** (Approach 1): the lowest final loss at each compute, from points a schedule
  has finished only (each trial's end point: an annealed cosine run, a wsd branch). An
  intermediate checkpoint of a cosine run sized to a longer budget overstates the loss there
  and biases N_opt upward (Hoffmann et al. 2022, §3.1), so evaluation curves are not used.
  A power law L = A·C^(−α) through the envelope, and N_opt ∝ C^a from the sizes holding it;
  intervals resample whole trials.
- **Approaches side by side** (:func:`compare_approaches`): a and tokens per parameter at the
  largest C of each approach that the table supports, with a warning when two disagree
  beyond their intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.compute import FlopsPerUnit, split_fields, split_intervals
from analysis.errors import UserError
from analysis.points import Points
from analysis.results import FitResult, Interval, interval_warnings, r2_log

_FLAT = 700.0  # |log N_opt| beyond this: a nearly flat profile, its "minimum" is meaningless


def budgets_of(df: pd.DataFrame) -> pd.Series:
    """The isoflop budget of each point: its ``budget`` when the sweep gave it one, else C
    rounded to 0.05 decades (points of a grid rarely share a budget: few groups form)."""
    rounded = 10 ** (np.round(np.log10(df["C"]) / 0.05) * 0.05)
    return df["budget"].fillna(rounded) if "budget" in df else rounded


def _profiles(df: pd.DataFrame, budgets: pd.Series) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(C, log N, loss) of each budget with >= 3 distinct N."""
    out = []
    for c, group in df.groupby(budgets):
        if group["N"].nunique() >= 3:
            out.append((float(c), np.log(group["N"].to_numpy(float)), group["loss"].to_numpy(float)))
    return out


def _minimum(coef: np.ndarray) -> np.ndarray:
    """log N at the profile polynomial's minimum, NaN where it has none (not convex there, or
    nearly flat). ``coef`` [..., 3] = (q2, q1, q0) of a parabola, or [..., 4] = (q3, q2, q1, q0)
    of a cubic, whose minimum is the root of its derivative where the curvature is positive."""
    if coef.shape[-1] == 3:
        q2, q1 = coef[..., 0], coef[..., 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = -q1 / (2 * q2)
        return np.where((q2 > 0) & (np.abs(x) <= _FLAT), x, np.nan)
    q3, q2, q1 = coef[..., 0], coef[..., 1], coef[..., 2]
    disc = q2 * q2 - 3 * q3 * q1  # roots of 3·q3·x² + 2·q2·x + q1
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(np.where(disc >= 0, disc, np.nan))
        # the root where 6·q3·x + 2·q2 > 0, i.e. (−q2 + √disc) / (3·q3), in a form stable as q3 → 0
        x = np.where(q2 > 0, -q1 / (q2 + root), (root - q2) / (3 * q3))
    curvature = 6 * q3 * x + 2 * q2
    return np.where((curvature > 0) & (np.abs(x) <= _FLAT), x, np.nan)


def profile_degree(profiles) -> int:
    """2 (Hoffmann et al.'s parabola) unless every budget has >= 6 sizes and cubics lower the
    pooled AICc: a parabola's minimum is biased where the profile is asymmetric (+1% in N_opt
    over ±0.5 decade of sizes, +4% over ±1 decade, on the law of tests/analysis/test_compute.py)."""
    if any(len(y) < 6 for _, _, y in profiles):
        return 2
    n = sum(len(y) for _, _, y in profiles)

    def aicc(degree):
        rss = sum(float(((np.polyval(np.polyfit(x, y, degree), x) - y) ** 2).sum()) for _, x, y in profiles)
        k = (degree + 1) * len(profiles)
        if n - k - 1 <= 0 or rss <= 0:
            return np.inf if rss > 0 else -np.inf
        return n * np.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)

    return 3 if aicc(3) < aicc(2) else 2


def _power_law(c: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) of log y on log c; rows of ``y`` [K, B] are fitted at once."""
    x = np.log(c)
    ly = np.log(y)
    xm = x.mean()
    slope = ((x - xm) * (ly - ly.mean(axis=-1, keepdims=True))).sum(axis=-1) / ((x - xm) ** 2).sum()
    return slope, ly.mean(axis=-1) - slope * xm


def fit_isoflop(points: Points, *, bootstrap: int = 1000, seed: int = 0,
                predict: list[dict] | None = None) -> FitResult:
    df = points.frame
    flops = points.flops
    budgets = budgets_of(df)
    profiles = _profiles(df, budgets)
    degree = profile_degree(profiles)
    coefs = [np.polyfit(x, y, degree) for _, x, y in profiles]
    usable = [i for i, q in enumerate(coefs) if np.isfinite(_minimum(q))]
    if len(usable) < 2:
        raise UserError(
            f"isoflop: {len(usable)} compute budget(s) with a convex profile over >= 3 sizes; "
            "needs at least 2 (an isoflop sweep: budgets.kind isoflop, 3+ sizes per budget)")
    profiles, coefs = [profiles[i] for i in usable], np.array([coefs[i] for i in usable])
    c = np.array([p[0] for p in profiles])
    x_opt = _minimum(coefs)
    inside = np.array([x.min() <= xo <= x.max() for (_, x, _), xo in zip(profiles, x_opt)])
    n_opt = np.exp(x_opt)
    d_opt = c / flops(n_opt)
    a, log_k = _power_law(c, n_opt)
    b, log_kd = _power_law(c, d_opt)
    draws, n_valid = _residual_draws(profiles, coefs, bootstrap, seed)
    d_draws = None if draws is None else c / flops(draws)
    (a_d, lk_d), (b_d, _) = ((None, None), (None, None)) if draws is None else (
        _power_law(c, draws), _power_law(c, d_draws))
    params = {"a": Interval.from_samples(a, a_d), "b": Interval.from_samples(b, b_d)}
    result = FitResult("isoflop", len(df), points.dropped, params, warnings=list(points.warnings))
    result.r2_log = r2_log(np.log(n_opt), log_k + a * np.log(c))
    # N_opt = exp(log_k)·C^a, D_opt ≈ exp(log_kd)·C^b; each profile is loss = np.polyval(profile, log N).
    result.diagnostics = {
        "log_k": float(log_k), "log_kd": float(log_kd), "compute": flops.to_json(),
        "valid_draws": n_valid, "draws": bootstrap, "profile_degree": degree,
        "budgets": [{"C": float(ci), "N_opt": float(ni), "D_opt": float(di), "D_per_N": float(di / ni),
                     "minimum_inside": bool(ins), "profile": [float(v) for v in q]}
                    for ci, ni, di, ins, q in zip(c, n_opt, d_opt, inside, coefs)],
        "held_out": _held_out_budget(c, n_opt),
    }
    if draws is not None:
        result.samples = {"a": a_d, "b": b_d, "log_k": lk_d}
    for target in predict or []:
        if set(target) == {"C"}:
            result.predictions.append(_isoflop_prediction(result, target["C"], float(c.max())))
    result.warnings += _isoflop_warnings(profiles, inside, n_valid, bootstrap) + flops.warnings()
    result.warnings += interval_warnings(params)
    return result


def _residual_draws(profiles, coefs, k: int, seed: int) -> tuple[np.ndarray | None, int]:
    """[valid draws, budgets] of N_opt from the residual bootstrap, and the count of valid draws."""
    if k <= 0:
        return None, 0
    rng = np.random.default_rng(seed)
    width = coefs.shape[1]  # coefficients per profile: 3 (parabola) or 4 (cubic)
    pool = []
    for (_, x, y), q in zip(profiles, coefs):
        dof = len(y) - width
        if dof > 0:
            pool.append((y - np.polyval(q, x)) * np.sqrt(len(y) / dof))
    pool = np.concatenate(pool) if pool else np.zeros(1)
    minima = []
    for (_, x, _), q in zip(profiles, coefs):
        design = np.vander(x, width)
        y_star = (design @ q)[None, :] + rng.choice(pool, size=(k, len(x)))
        coef_star = np.linalg.lstsq(design, y_star.T, rcond=None)[0].T  # [k, width]
        minima.append(_minimum(coef_star))
    minima = np.stack(minima, axis=1)  # [k, budgets]
    valid = np.isfinite(minima).all(axis=1)
    return (np.exp(minima[valid]) if valid.any() else None), int(valid.sum())


def _isoflop_warnings(profiles, inside, n_valid: int, draws: int) -> list[str]:
    out = []
    if not inside.all():
        out.append(f"{int((~inside).sum())} budget(s) have their minimum outside the sampled "
                   "sizes: those N_opt are extrapolations of a parabola")
    if len(profiles) < 3:
        out.append("only 2 budgets: the exponents rest on two points")
    if draws and all(len(y) <= 3 for _, _, y in profiles):  # (a cubic needs 6 sizes: a parabola here)
        out.append("every budget has exactly 3 sizes: the parabolas leave no residuals to resample, "
                   "so the intervals show no noise at all (use 5 or more sizes per budget)")
    elif draws and n_valid < 0.9 * draws:
        out.append(f"only {n_valid} of {draws} bootstrap draws kept a minimum at every budget: "
                   "some profiles are nearly flat, and the intervals leave those draws out")
    return out


def _held_out_budget(c: np.ndarray, n_opt: np.ndarray) -> dict | None:
    """Refit N_opt ∝ C^a without the largest budget and predict its N_opt."""
    if len(c) < 3:
        return None
    last = int(np.argmax(c))
    keep = np.arange(len(c)) != last
    a, log_k = _power_law(c[keep], n_opt[keep])
    predicted = float(np.exp(log_k) * c[last] ** a)
    return {"C": float(c[last]), "N_opt": float(n_opt[last]), "N_opt_predicted": predicted,
            "rel_error": predicted / float(n_opt[last]) - 1}


def power_law_split(fit: FitResult, c, *, draws: bool = False) -> dict | None:
    """{"N", "D"} at compute ``c`` ([M]) of IsoFLOP's or the envelope's N_opt = k·C^a, with
    D = C / f(N) under the fit's compute convention (exact for any f, where D's own power law
    is only approximate when f is not linear in N); ``draws``: [K, M] per bootstrap draw.
    None when the fit has no a (or no draws of it)."""
    a_iv = fit.estimate("a")
    if a_iv is None:
        return None
    if draws:
        if not fit.samples or "log_k" not in fit.samples or "a" not in fit.samples:
            return None
        a, lk = (np.asarray(fit.samples[k], float)[:, None] for k in ("a", "log_k"))
    else:
        a, lk = a_iv.value, fit.diagnostics["log_k"]
    c = np.asarray(c, float)
    with np.errstate(over="ignore", invalid="ignore"):  # a wild draw is inf, and its band says so
        n = np.exp(lk) * c ** a
        return {"N": n, "D": c / FlopsPerUnit.from_json(fit.diagnostics.get("compute"))(n)}


def _isoflop_prediction(fit: FitResult, c: float, c_max: float) -> dict:
    point = power_law_split(fit, np.array([c]))
    out = {"C": c, "N": float(point["N"][0]), "D": float(point["D"][0])}
    spread = power_law_split(fit, np.array([c]), draws=True)
    out.update(split_fields(out, None if spread is None else {k: v[:, 0] for k, v in spread.items()}))
    out["extrapolation"] = c / c_max
    out["extrapolation_by_axis"] = {"C": c / c_max}
    return out


# --- envelope -------------------------------------------------------------------------------

def frontier(c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices, in order of C, of the points with a lower loss than every point of less
    compute: the compute frontier (the envelope, and the subset the L(C) laws are fitted to)."""
    order = np.argsort(c, kind="stable")
    best = np.minimum.accumulate(loss[order])
    return order[np.r_[True, loss[order][1:] < best[:-1]]]


def end_points(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial's last row (its largest C): the point its schedule has finished."""
    return df.sort_values("C").groupby("trial_id", sort=False).tail(1)


def fit_envelope(points: Points, *, bootstrap: int = 1000, seed: int = 0) -> FitResult:
    df = points.frame
    if "trial_id" not in df:
        raise UserError("envelope: the points carry no trial_id (it resamples whole trials)")
    warnings = list(points.warnings)
    ends = end_points(df)
    if len(ends) < len(df):
        warnings.append(f"envelope: {len(df) - len(ends)} row(s) are earlier checkpoints of a trial: only each "
                        "trial's end point is used (an unfinished schedule overstates the loss)")
    if len(ends) < 3:
        raise UserError(f"envelope: needs the end points of at least 3 trials (has {len(ends)})")
    c_all, loss_all, n_all = (ends[k].to_numpy(float) for k in ("C", "loss", "N"))

    def envelope(rows):
        on = rows[frontier(c_all[rows], loss_all[rows])]
        return c_all[on], loss_all[on], n_all[on]

    def exponents(rows):
        c, loss, n = envelope(rows)
        if len(c) < 2:
            return np.nan, np.nan, np.nan, np.nan, (c, loss, n)
        alpha, log_a = _power_law(c, loss)
        a, log_k = _power_law(c, n) if len(np.unique(n)) >= 3 else (np.nan, np.nan)
        return -float(alpha), float(np.exp(log_a)), float(a), float(log_k), (c, loss, n)

    alpha, coeff, a, log_k, (c, loss, n) = exponents(np.arange(len(ends)))
    if len(c) < 3:
        raise UserError(f"envelope: only {len(c)} point(s) lie on the compute frontier; needs at least 3")
    rng = np.random.default_rng(seed)
    draws = np.array([exponents(rng.choice(len(ends), size=len(ends)))[:4] for _ in range(bootstrap)]) \
        if bootstrap else None
    col = (lambda i: None if draws is None else draws[:, i])
    params = {"A": Interval.from_samples(coeff, col(1)), "alpha": Interval.from_samples(alpha, col(0))}
    derived = {"a": Interval.from_samples(a, col(2))} if np.isfinite(a) else {}
    result = FitResult("envelope", len(ends), points.dropped, params, derived, warnings=warnings)
    if draws is not None:
        result.samples = {"A": draws[:, 1], "alpha": draws[:, 0], "a": draws[:, 2], "log_k": draws[:, 3]}
    result.r2_log = r2_log(np.log(loss), np.log(coeff) - alpha * np.log(c))
    result.diagnostics = {"compute": points.flops.to_json(), "log_k": log_k, "points": "each trial's end point",
                          "envelope": [{"C": float(ci), "loss": float(li), "N": float(ni)}
                                       for ci, li, ni in zip(c, loss, n)]}
    if not np.isfinite(a):
        result.warnings.append("fewer than 3 model sizes hold the envelope: N_opt(C) is not identified")
    result.warnings += interval_warnings(params)
    return result


# --- the approaches side by side ------------------------------------------------------------

APPROACHES = {"envelope": "Approach 1 (envelope)", "isoflop": "Approach 2 (IsoFLOP)",
              "chinchilla": "Approach 3 (parametric L(N, D))"}


def compare_approaches(fits: list[FitResult]) -> dict | None:
    """a (N_opt ∝ C^a) and tokens per parameter at the largest C of the data, by each of
    Hoffmann et al.'s approaches among ``fits``, with a warning for every pair whose 95%
    intervals do not overlap; None when fewer than two approaches give an allocation."""
    by_law = {f.law: f for f in fits if f.law in APPROACHES}
    budgets = by_law["isoflop"].diagnostics["budgets"] if "isoflop" in by_law else []
    c_max = max([float(f.diagnostics.get("C_max") or 0) for f in fits] + [b["C"] for b in budgets])
    rows = {}
    for law, fit in by_law.items():
        row = _allocation_at(fit, c_max)
        if row is not None:
            rows[law] = row
    if len(rows) < 2:
        return None
    warnings = []
    names = list(rows)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for key, what in (("a", "a"), ("D_per_N", "tokens per parameter")):
                x, y = rows[first][key], rows[second][key]
                if x.low == x.high or y.low == y.high:
                    continue  # no intervals (bootstrap off): nothing to compare them by
                if x.high < y.low or y.high < x.low:
                    warnings.append(
                        f"{APPROACHES[first]} and {APPROACHES[second]} disagree on {what}: "
                        f"{x.value:.3g} [{x.low:.3g}, {x.high:.3g}] vs {y.value:.3g} [{y.low:.3g}, {y.high:.3g}]"
                        + (f" at C={c_max:.3g}" if key == "D_per_N" else "")
                        + "; the allocation depends on the method: check the design (budgets, sizes, schedules)")
    checked = any(r["a"].low != r["a"].high for r in rows.values())
    return {"C": c_max, "approaches": rows, "warnings": warnings, "checked": checked}


def _allocation_at(fit: FitResult, c: float) -> dict | None:
    from analysis.laws import split_of

    a = fit.estimate("a")
    if a is None or not np.isfinite(a.value):
        return None
    split = split_of if fit.law == "chinchilla" else power_law_split
    at = np.array([c])
    value, spread = split(fit, at), split(fit, at, draws=True)
    value = {k: float(np.asarray(v)[0]) for k, v in value.items()}
    intervals = split_intervals(value, None if spread is None else {k: np.asarray(v)[:, 0] for k, v in spread.items()})
    if not np.isfinite(intervals["D_per_N"].value):  # no allocation (an exponent <= 0: the fit's own warnings say why)
        return None
    return {"a": a, "D_per_N": intervals["D_per_N"], **value}
