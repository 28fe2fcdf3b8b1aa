"""Emergence detection: does a capability metric switch on sharply with scale?

Pure functions over DataFrames (no Ray, no torch). :func:`detect` takes one row per model
(or checkpoint) with a scale column and one or more metric columns and returns one
:class:`Emergence` per (group, metric) with a verdict:

- ``not_enough_data``: fewer than ``MIN_POINTS`` distinct scales;
- ``non_monotone``: a significant rise that falls back to near where it started;
- ``emergent``: a plateau near chance over at least two scales, then a jump that is
  significant given the per-point standard errors, with the values after it significantly
  above chance, and sharp: one step carries at least ``SHARP_FRACTION`` of the whole rise, or
  a sigmoid in log-scale beats every smooth model (below);
- ``smooth``: a significant trend that is not emergent;
- ``flat``: no significant change over the range.

Standard errors come from a column (``stderr``), from a binomial with ``n_items`` trials
(p smoothed as (k + ½)/(n + 1), so that a 0% point still has an error), or, with neither,
from the series' own scatter (the robust scale of its second differences, a caveat says so).
"Near chance" is within ``max(3·se, 10% of the jump)``: binomial errors near zero are tiny.

Scores (all in ``scores``):
- BIG-bench (Srivastava et al. 2022, sec. 3.4) on the series sorted by scale, with
  I(y) = sign(argmax y − argmin y)·(max y − min y) and Δᵢ = y_{i+1} − y_i:
  ``linearity`` = I(y) / RootMeanSquare(Δ) and ``breakthroughness`` = I(y) / RootMedianSquare(Δ)
  (null where the denominator is zero);
- model comparison in u = log10(scale): ``linear`` (a + b·u), ``power`` (c + A·10^{αu}),
  ``sigmoid`` (floor + height / (1 + exp(−(u − m)/s))) and, with at least 7 points, a
  one-break ``bnsl`` (Caballero et al. 2022: a + b·x^{c0}·(1 + (x/d)^{1/f})^{c1·f}), scored by
  AICc on the χ² of the fit; ``best_model`` names the winner and ``aicc`` holds all. A
  transition counts as sharp when the sigmoid beats both smooth models by 2 and its 10–90%
  width is under 40% of the axis range;
- the sigmoid's midpoint (the scale of half-way between floor and ceiling) with a parametric
  bootstrap interval (``midpoint_low``/``midpoint_high``), its width in decades (10% to 90%
  of the rise), and its onset (10% of the rise; ``onset_fit`` with ``onset_fit_low``/``_high``).

``threshold`` (the onset, when emergent) is bracketed by the data: ``low`` is the last
plateau point, ``high`` the first point clearly above it, ``x`` their geometric mean (their
mean on a loss axis). ``midpoint`` is the fitted sigmoid's when a sharp sigmoid wins the
comparison, else where the data cross half-way between the plateau and the highest value
after the jump (interpolated in log scale).

The loss-threshold view (Du et al. 2024) is the same detector with the model's held-out loss
as the axis (``loss_axis=True``): lower loss is more scale, the axis is linear, and the onset
is the loss value at which the capability turns on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from analysis.errors import UserError
from analysis.records import capability_name, capability_task

MIN_POINTS = 4  # distinct scales below which the verdict is not_enough_data
Z = 3.0  # standard errors for a difference to count as significant
NEAR_FRACTION = 0.10  # "near chance": within this fraction of the jump (or Z standard errors)
SHARP_FRACTION = 0.5  # a single step holding this share of the rise is sharp
AICC_MARGIN = 2.0  # the transition model must beat the smooth ones by this much
SHARP_WIDTH_FRACTION = 0.4  # a fitted transition is sharp when its 10-90% width is under this share of the range
DISCONTINUOUS = ("exact_match", "em", "acc", "accuracy")
VERDICTS = ("emergent", "smooth", "flat", "non_monotone", "not_enough_data")


@dataclass
class Emergence:
    group: str
    metric: str
    axis: str
    n_points: int
    verdict: str
    threshold: dict | None = None  # {"x", "low", "high"}: the onset, when emergent
    midpoint: float | None = None
    width_decades: float | None = None
    scores: dict = field(default_factory=dict)
    caveats: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"group": self.group, "metric": self.metric, "axis": self.axis, "n_points": self.n_points,
                "verdict": self.verdict, "threshold": self.threshold, "midpoint": self.midpoint,
                "width_decades": self.width_decades, "scores": self.scores, "caveats": self.caveats}


@dataclass(frozen=True)
class MetricSpec:
    """How to read one metric column."""

    column: str
    stderr_column: str | None = None
    n_items: float | None = None
    chance: float | None = None
    kind: str | None = None  # discontinuous | continuous; None: from the name

    @property
    def discontinuous(self) -> bool:
        if self.kind is not None:
            return self.kind == "discontinuous"
        return capability_name(self.column).lower() in DISCONTINUOUS


def big_bench_scores(y: np.ndarray) -> dict[str, float | None]:
    """Linearity and breakthroughness of a series sorted by scale (see the module docstring)."""
    y = np.asarray(y, dtype=float)
    if len(y) < 2:
        return {"linearity": None, "breakthroughness": None}
    improvement = float(np.sign(np.argmax(y) - np.argmin(y)) * (y.max() - y.min()))
    steps = np.diff(y) ** 2
    rms, rmeds = math.sqrt(steps.mean()), math.sqrt(float(np.median(steps)))
    return {"linearity": improvement / rms if rms > 0 else (0.0 if improvement == 0 else None),
            "breakthroughness": improvement / rmeds if rmeds > 0 else (0.0 if improvement == 0 else None)}


# --- the smooth and the transition models, in u = log10(x) --------------------------------

def _linear(u, a, b):
    return a + b * u


def _power(u, c, amp, alpha):
    return c + amp * np.power(10.0, np.clip(alpha * u, -50, 50))


def _sigmoid(u, floor, height, mid, scale):
    return floor + height / (1 + np.exp(-np.clip((u - mid) / scale, -50, 50)))


def _bnsl(u, a, b, c0, c1, log_d, f):
    x = np.power(10.0, u)
    d = 10.0 ** log_d
    return a + b * np.power(x / d, c0) * np.power(1 + np.power(x / d, 1 / f), c1 * f)


def _fit(model: str, u: np.ndarray, y: np.ndarray, se: np.ndarray,
         start: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """(parameters, χ²) of the best of a few starts (or of ``start`` alone), or None when
    nothing converges."""
    lo, hi, span = float(u.min()), float(u.max()), float(np.ptp(u)) or 1.0
    y_lo, y_span = float(y.min()), float(np.ptp(y)) or 1.0
    if model == "linear":
        f, starts, bounds = _linear, [(y_lo, 0.0)], (-np.inf, np.inf)
    elif model == "power":
        f = _power
        starts = [(y_lo, y_span * 10 ** (-a * hi), a) for a in (0.3 / span, 1.0 / span, 3.0 / span)]
        bounds = (-np.inf, np.inf)
    elif model == "sigmoid":
        f = _sigmoid
        starts = [(y_lo, y_span, m, s * span) for m in np.linspace(lo, hi, 5)[1:-1] for s in (0.05, 0.2)]
        bounds = ([-np.inf, -np.inf, lo - span, 1e-3 * span], [np.inf, np.inf, hi + span, 2 * span])
    else:  # bnsl
        f = _bnsl
        starts = [(y_lo, y_span * 1e-3, 0.0, c1, d, 0.3) for c1 in (0.5, 2.0) for d in np.linspace(lo, hi, 4)[1:-1]]
        bounds = ([-np.inf, -np.inf, -5, -5, lo - span, 1e-2], [np.inf, np.inf, 5, 5, hi + span, 10])
    if start is not None:
        starts = [tuple(np.clip(start, np.asarray(bounds[0]) + 1e-9, np.asarray(bounds[1]) - 1e-9))
                  if isinstance(bounds[0], list) else tuple(start)]
    best = None
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(f, u, y, p0=p0, sigma=se, absolute_sigma=True, bounds=bounds, maxfev=4000)
        except (RuntimeError, ValueError):
            continue
        chi2 = float(np.sum(((f(u, *params) - y) / se) ** 2))
        if math.isfinite(chi2) and (best is None or chi2 < best[1]):
            best = (params, chi2)
    return best


def _aicc(chi2: float, k: int, n: int) -> float | None:
    if n - k - 1 <= 0:
        return None
    return chi2 + 2 * k + 2 * k * (k + 1) / (n - k - 1)


_MODELS = {"linear": 2, "power": 3, "sigmoid": 4, "bnsl": 6}


def compare_models(u: np.ndarray, y: np.ndarray, se: np.ndarray) -> dict:
    """{"aicc": {model: value}, "best_model": name, "sigmoid": params or None}."""
    fits, aicc = {}, {}
    for name, k in _MODELS.items():
        if len(u) - k - 1 <= 0 or (name == "bnsl" and len(u) < 7):
            continue
        fitted = _fit(name, u, y, se)
        if fitted is not None:
            fits[name] = fitted
            aicc[name] = _aicc(fitted[1], k, len(u))
    best = min(aicc, key=aicc.get) if aicc else None
    return {"aicc": {k: round(v, 3) for k, v in aicc.items()}, "best_model": best,
            "sigmoid": fits.get("sigmoid", (None,))[0], "chi2": {k: f[1] for k, f in fits.items()}}


def _transition_wins(cmp: dict, u: np.ndarray) -> bool:
    """A sharp transition is preferred: the sigmoid beats both smooth models by AICC_MARGIN
    and rises from 10% to 90% within SHARP_WIDTH_FRACTION of the axis range. (The broken
    power law is reported in ``aicc`` but decides nothing: it also fits smooth curvature.)"""
    aicc = cmp["aicc"]
    smooth = min((aicc[m] for m in ("linear", "power") if m in aicc), default=None)
    if "sigmoid" not in aicc or smooth is None or aicc["sigmoid"] >= smooth - AICC_MARGIN:
        return False
    width = 2 * math.log(9) * cmp["sigmoid"][3]
    return bool(width <= SHARP_WIDTH_FRACTION * float(np.ptp(u)))


# --- one series -------------------------------------------------------------------------------

def _standard_errors(y: np.ndarray, spec: MetricSpec, se_col: np.ndarray | None,
                     caveats: list[str], ties: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    if se_col is not None:
        if np.any(~np.isfinite(se_col)) or np.any(se_col < 0):
            raise UserError(f"{spec.stderr_column}: standard errors must be finite and >= 0")
        se = se_col.astype(float)
    elif spec.n_items is not None:
        if np.any((y < 0) | (y > 1)):
            raise UserError(f"{spec.column}: --n-items gives binomial errors of accuracies in [0, 1]; "
                                f"values run from {y.min():g} to {y.max():g}")
        p = (y * spec.n_items + 0.5) / (spec.n_items + 1)
        se = np.sqrt(p * (1 - p) / spec.n_items)
    elif ties is not None:  # several rows at some scales: their pooled spread, per mean
        counts, pooled_sd = ties
        se = pooled_sd / np.sqrt(counts)
        caveats.append("no standard errors given (--stderr-col or --n-items): they were estimated "
                       "from the spread of rows that share a scale")
    else:
        second = np.diff(y, 2)
        sigma = 1.4826 * float(np.median(np.abs(second))) / math.sqrt(6) if len(second) else 0.0
        se = np.full_like(y, sigma, dtype=float)
        caveats.append("no standard errors given (--stderr-col or --n-items): they were estimated "
                       "from the series' own scatter")
    floor = 1e-6 * max(1.0, float(np.abs(y).max()))
    return np.maximum(se, floor)


def analyse_series(x: np.ndarray, y: np.ndarray, spec: MetricSpec, *, group: str = "", axis: str = "x",
                   se: np.ndarray | None = None, loss_axis: bool = False, bootstrap: int = 200,
                   seed: int = 0) -> Emergence:
    """The verdict for one metric against one scale axis (see the module docstring)."""
    caveats: list[str] = []
    frame = pd.DataFrame({"x": x, "y": y, "se": se if se is not None else np.nan})
    frame = frame[np.isfinite(frame["y"])]
    if not loss_axis:
        bad = ~(np.isfinite(frame["x"]) & (frame["x"] > 0))
        if bad.any():
            caveats.append(f"{int(bad.sum())} row(s) with a missing or non-positive {axis} dropped (log axis)")
            frame = frame[~bad]
    else:
        frame = frame[np.isfinite(frame["x"])]
    # ties: one point per scale, the mean (standard error of the mean of the tied values)
    agg = frame.groupby("x", sort=True).agg(y=("y", "mean"), se2=("se", lambda s: float(np.sum(s**2)) / len(s)**2),
                                            k=("y", "size"), ss=("y", lambda s: float(np.sum((s - s.mean()) ** 2))))
    if (agg["k"] > 1).any():
        caveats.append(f"{int((agg['k'] > 1).sum())} scale(s) with several rows: their mean is used")
    xs = agg.index.to_numpy(dtype=float)
    ys = agg["y"].to_numpy(dtype=float)
    if loss_axis:  # lower loss is more scale: order by decreasing loss
        xs, ys, agg = xs[::-1], ys[::-1], agg.iloc[::-1]
    n = len(xs)
    result = Emergence(group=group, metric=spec.column, axis=axis, n_points=n, verdict="not_enough_data",
                       caveats=caveats)
    result.scores.update(big_bench_scores(ys))
    if n < MIN_POINTS:
        caveats.append(f"{n} distinct scale(s): at least {MIN_POINTS} are needed for a verdict")
        return result
    se_col = np.sqrt(agg["se2"].to_numpy()) if se is not None and np.isfinite(agg["se2"]).all() else None
    dof = int((agg["k"] - 1).sum())
    ties = (agg["k"].to_numpy(float), math.sqrt(float(agg["ss"].sum()) / dof)) if dof >= 2 else None
    ses = _standard_errors(ys, spec, se_col, caveats, ties)
    u = xs if loss_axis else np.log10(xs)
    u_fit = -u if loss_axis else u  # models are fitted with scale increasing to the right
    chance = spec.chance

    if np.ptp(ys) == 0:
        result.verdict = "flat"
        return result

    cmp = compare_models(u_fit, ys, ses)
    result.scores.update(aicc=cmp["aicc"], best_model=cmp["best_model"])

    # non-monotone: a significant rise that falls back to near its earlier level
    peak = int(np.argmax(ys))
    start_level = float(np.min(ys[: peak + 1])) if peak > 0 else float(ys[0])
    rise = ys[peak] - start_level
    after = ys[peak + 1:]
    if len(after) and rise > Z * math.hypot(ses[peak], ses[int(np.argmin(ys[: peak + 1]))]):
        low_after = int(np.argmin(after)) + peak + 1
        decline = ys[peak] - ys[low_after]
        significant_decline = decline > Z * math.hypot(ses[peak], ses[low_after])
        if significant_decline and ys[low_after] - start_level < 0.5 * rise:
            result.verdict = "non_monotone"
            caveats.append(f"rises to {ys[peak]:.4g} at {xs[peak]:.4g}, then falls back to {ys[low_after]:.4g}")
            return result

    step = _find_jump(xs, ys, ses, chance)
    sharp_by_fit = _transition_wins(cmp, u_fit)
    if step is not None and (step["fraction"] >= SHARP_FRACTION or sharp_by_fit):
        k = step["index"]
        result.verdict = "emergent"
        low, high = sorted((float(xs[k - 1]), float(xs[k])))
        result.threshold = {"x": math.sqrt(low * high) if not loss_axis else (low + high) / 2,
                            "low": low, "high": high}
        floor, ceiling = step["plateau"], float(np.max(ys[k:]))
        result.midpoint = _crossing(xs, ys, (floor + ceiling) / 2, loss_axis)
        if step["partial_decline"]:
            caveats.append("the metric declines after the jump but stays well above the plateau")
        if sharp_by_fit and cmp["sigmoid"] is not None:
            _sigmoid_location(result, u_fit, ys, ses, cmp["sigmoid"], loss_axis, bootstrap, seed)
        result.scores["jump_fraction"] = round(float(step["fraction"]), 4)
        result.scores["jump_z"] = round(float(step["z"]), 2)
        return result

    trend = _trend_significant(u_fit, ys, ses, cmp["chi2"])
    result.verdict = "smooth" if trend else "flat"
    if result.verdict == "smooth" and sharp_by_fit and cmp["sigmoid"] is not None:
        caveats.append("a sigmoid fits better than a smooth trend, but the curve has no plateau near "
                       "chance over two scales followed by a significant jump")
    return result


def _find_jump(xs, ys, ses, chance) -> dict | None:
    """The first step k (plateau = points 0…k−1, at least 2) that satisfies every criterion."""
    n = len(ys)
    rise_total = float(np.max(ys) - np.min(ys[:2]))
    for k in range(2, n):
        plateau = ys[:k]
        level = float(chance) if chance is not None else float(np.mean(plateau))
        after = ys[k:]
        height = float(np.max(after)) - level
        if height <= 0:
            continue
        tol = np.maximum(Z * ses[:k], NEAR_FRACTION * height)
        if np.any(np.abs(plateau - level) > tol):
            break  # the series has left its plateau before this step: no later step qualifies
        jump = ys[k] - ys[k - 1]
        z = jump / math.hypot(ses[k], ses[k - 1])
        if z < Z:
            continue
        if chance is not None and np.mean(after) - chance <= Z * float(np.sqrt(np.mean(ses[k:] ** 2)) / math.sqrt(len(after))):
            continue
        if ys[k] - level <= Z * ses[k]:
            continue
        peak_after = float(np.max(after))
        partial = bool(after[-1] < peak_after - Z * ses[k:].max() and after[-1] - level >= 0.5 * (peak_after - level))
        return {"index": k, "plateau": float(np.mean(plateau)), "fraction": jump / rise_total if rise_total > 0 else 0.0,
                "z": z, "partial_decline": partial}
    return None


def _trend_significant(u, ys, ses, model_chi2: dict[str, float]) -> bool:
    """A change with scale: a weighted linear trend in u with |slope| > Z standard errors, or
    a power law or sigmoid that improves on a constant by more than chance would at the
    Z-sigma level (likelihood-ratio test, Δχ² against χ² with the extra parameters). A lone
    outlier fails both: no smooth curve through the other points passes through it."""
    from scipy.stats import chi2

    w = 1 / ses**2
    mean = np.sum(w * ys) / np.sum(w)
    ubar = np.sum(w * u) / np.sum(w)
    sxx = np.sum(w * (u - ubar) ** 2)
    if sxx > 0:
        slope = np.sum(w * (u - ubar) * (ys - mean)) / sxx
        if abs(slope) * math.sqrt(sxx) > Z:
            return True
    constant = float(np.sum(w * (ys - mean) ** 2))
    alpha = math.erfc(Z / math.sqrt(2))  # two-sided Z-sigma: 0.0027 at Z = 3
    return any(constant - model_chi2[m] > chi2.isf(alpha, _MODELS[m] - 1)
               for m in ("power", "sigmoid") if m in model_chi2)


def _crossing(xs, ys, level: float, loss_axis: bool) -> float | None:
    """The first scale where the series crosses ``level``, interpolated (in log x, or in x
    on a loss axis)."""
    for i in range(1, len(ys)):
        if ys[i - 1] < level <= ys[i]:
            t = (level - ys[i - 1]) / (ys[i] - ys[i - 1])
            if loss_axis:
                return float(xs[i - 1] + t * (xs[i] - xs[i - 1]))
            return float(10 ** (math.log10(xs[i - 1]) + t * (math.log10(xs[i]) - math.log10(xs[i - 1]))))
    return None


def _sigmoid_location(result: Emergence, u, ys, ses, params, loss_axis: bool, bootstrap: int, seed: int) -> None:
    """Midpoint, width and onset from the fitted sigmoid, with parametric bootstrap intervals."""
    def to_x(v: float) -> float:
        return float(-v) if loss_axis else float(10**v)

    floor, height, mid, scale = params
    onset = mid - math.log(9) * scale  # 10% of the rise
    result.width_decades = None if loss_axis else round(2 * math.log(9) * scale, 4)
    result.midpoint = to_x(mid)
    rng = np.random.default_rng(seed)
    mids, onsets = [], []
    for _ in range(bootstrap):
        fitted = _fit("sigmoid", u, ys + rng.normal(0, ses), ses, start=params)
        if fitted is not None:
            _, _, m, s = fitted[0]
            mids.append(m)
            onsets.append(m - math.log(9) * s)
    if len(mids) >= max(10, bootstrap // 2):
        lo_m, hi_m = np.percentile(mids, [2.5, 97.5])
        lo_o, hi_o = np.percentile(onsets, [2.5, 97.5])
        result.scores["midpoint_low"], result.scores["midpoint_high"] = sorted((to_x(lo_m), to_x(hi_m)))
        result.scores["onset_fit"] = to_x(onset)
        result.scores["onset_fit_low"], result.scores["onset_fit_high"] = sorted((to_x(lo_o), to_x(hi_o)))
    else:
        result.caveats.append("the sigmoid's bootstrap refits failed too often for an interval on its midpoint")


# --- tables ---------------------------------------------------------------------------------------

def detect(table: pd.DataFrame, x_col: str, metrics: list[MetricSpec], *, group_col: str | None = None,
           loss_axis: bool = False, bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str]]:
    """(one result per group and metric, warnings). Bad tables raise UserError."""
    needed = [x_col] + [m.column for m in metrics] + [m.stderr_column for m in metrics if m.stderr_column]
    needed += [group_col] if group_col else []
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UserError(f"column(s) {missing} not in the table (columns: {list(table.columns)})")
    for col in set(needed) - {group_col}:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any():
            raise UserError(f"column {col!r} holds non-numeric values (e.g. {table[col][bad].iloc[0]!r}); "
                                "expected numbers")
    groups = table.groupby(group_col, sort=True) if group_col else [("all", table)]
    results: list[Emergence] = []
    warn: list[str] = []
    for name, rows in groups:
        mine = []
        for spec in metrics:
            se = pd.to_numeric(rows[spec.stderr_column]).to_numpy(float) if spec.stderr_column else None
            r = analyse_series(pd.to_numeric(rows[x_col]).to_numpy(float), pd.to_numeric(rows[spec.column]).to_numpy(float),
                               spec, group=str(name), axis=x_col, se=se, loss_axis=loss_axis,
                               bootstrap=bootstrap, seed=seed)
            mine.append((spec, r))
            warn += [f"{name}/{spec.column}: {c}" for c in r.caveats if "dropped" in c]
        _cross_metric_caveats(mine)
        results += [r for _, r in mine]
    return results, warn


def _task(column: str) -> str:
    return capability_task(column)


def _cross_metric_caveats(pairs: list[tuple[MetricSpec, Emergence]]) -> None:
    emergent = [(s, r) for s, r in pairs if r.verdict == "emergent"]
    for spec, r in emergent:
        if spec.discontinuous:
            smooth = [s.column for s, o in pairs if not s.discontinuous and o.verdict == "smooth"
                      and _task(s.column) == _task(spec.column)]
            if smooth:
                r.caveats.append(f"metric-induced? the discontinuous {spec.column} jumps while the continuous "
                                 f"{', '.join(smooth)} of the same task improve(s) smoothly (Schaeffer et al. 2023)")
            else:
                r.caveats.append(f"the call rests on a discontinuous (exact-match) metric, {spec.column}")
    if len(pairs) >= 2 and len(emergent) == len(pairs):
        for _, r in emergent:
            r.caveats.append("every metric given jumps at these runs: generic learning, not a task-specific capability?")

