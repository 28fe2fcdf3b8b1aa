"""Emergence detection: does a capability metric switch on sharply with scale?

Pure functions (no Ray, no torch). :func:`analyse_series` takes one metric against one scale
axis, one value per model (or checkpoint), and returns an :class:`Emergence` with a
:class:`~analysis.records.Verdict`, tested in this order:

- ``not_enough_data``: fewer than ``MIN_POINTS`` distinct scales;
- ``flat``: a constant series;
- ``non_monotone``: a significant rise that falls back to below half of it;
- ``emergent``: a step at the k-th scale such that
  1. the points before it (at least two) are a plateau: consistent with a constant
     (χ² test at ``PLATEAU_P``) or all within ``FLAT_FRACTION`` of the rise after them, and
     near chance when a chance level is known (within max(3 standard errors of the level,
     10% of the rise));
  2. the first two points from the step on are each significant above the plateau at the
     test level, and at least ``Z`` standard errors (of their difference from it) above it;
  3. no smooth trend explains it: adding the step to the best linear, power-law and
     wide-sigmoid fit (``analysis.emergence_models``) lowers χ² by more than the one-sided
     likelihood-ratio critical value with one degree of freedom, against every one of them
     (an intersection-union test). Or a sharp sigmoid (10–90% within ``SHARP_WIDTH`` of the
     range) beats every one of them by as much: a transition caught mid-rise, whose
     evidence points need only rule 2's significance. The level is divided among the step
     places (at least one), plus one for the sigmoid (Bonferroni). This is the sharpness
     test: a smooth curve's prediction is the reference, not the share of the rise;
- ``late_jump``: no such step, but the points before the last are a plateau and the last is
  above it (rules 1 and 2): one point of evidence, which a steep smooth trend explains as
  well as a step;
- ``smooth``: a linear, power or sigmoid trend beats a constant by a likelihood-ratio test
  at ``TREND_P``;
- ``flat``: otherwise.

The level is per series. ``analysis.emergence_tables.detect`` divides it by the number of
series it tests at once (metrics × groups, and axes on a sweep folder): Bonferroni, so the
chance of one false ``emergent`` among them all stays at most the level.

Standard errors come from a column, from a binomial with ``n_items`` trials (at the accuracy
a fitted sigmoid predicts, p smoothed as (k + ½)/(n + 1), so that a 0% point still has an
error), from the spread of rows that share a scale, or, with none of those, from the
residuals of a sigmoid of any width (a sharp one is a step, so a jump cannot inflate them).
Given errors that no line, power law or sigmoid comes near are scaled up to the scatter
(model-to-model scatter that item counts do not cover; a caveat says so).
With estimated errors the calls are less reliable (docs/emergence.md has the rates).

Scores (``scores``): BIG-bench's linearity and breakthroughness (:func:`big_bench_scores`);
the AICc of the linear, power and sigmoid fits and ``best_model``; for an emergent call the
step's χ² drop (``step_chi2``), its critical value, the smooth model hardest to beat
(``step_against``) and the evidence points' z (``jump_z``); a sharp sigmoid's midpoint with a
parametric-bootstrap interval, its width in decades and onset; ``level``, the per-series level.

``threshold`` (when emergent) is bracketed by the data: ``low`` is the last plateau point,
``high`` the first point of the step, ``x`` their geometric mean (their mean on a loss axis).

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
from scipy import stats
from scipy.optimize import curve_fit

from analysis import emergence_models as em
from analysis.errors import UserError
from analysis.records import Verdict, capability_name

MIN_POINTS = 4  # distinct scales below which the verdict is not_enough_data
LEVEL = 0.015  # default level of the step test, per series (before dividing it among several series)
PLATEAU_P = 0.01  # points before a step are a plateau unless a constant is rejected at this level
OVERDISPERSED_P = 0.001  # given errors are too small when even a sigmoid's χ² is rejected at this level
TREND_P = 0.0027  # a trend is significant at 3 sigma (two-sided)
Z = 3.0  # standard errors of the descriptive tolerances: "near chance", a decline
NEAR_FRACTION = 0.10  # "near chance": within this fraction of the jump (or Z standard errors)
FLAT_FRACTION = 0.05  # points all within this fraction of the rise after them are flat next to it
SHARP_WIDTH = 0.5  # a sigmoid rising 10%→90% within this share of the axis range is a sharp transition
AICC_MARGIN = 2.0  # a sharp sigmoid must beat the smooth models by this much to describe the transition
DISCONTINUOUS = ("exact_match", "em", "acc", "accuracy")


@dataclass
class Emergence:
    group: str
    metric: str
    axis: str
    n_points: int
    verdict: Verdict
    subset: str = "all rows"
    threshold: dict | None = None  # {"x", "low", "high"}: the onset, when emergent
    midpoint: float | None = None
    width_decades: float | None = None
    scores: dict = field(default_factory=dict)
    caveats: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"group": self.group, "metric": self.metric, "axis": self.axis, "subset": self.subset,
                "n_points": self.n_points, "verdict": str(self.verdict), "threshold": self.threshold,
                "midpoint": self.midpoint, "width_decades": self.width_decades, "scores": self.scores,
                "caveats": self.caveats}


@dataclass(frozen=True)
class MetricSpec:
    """How to read one metric column."""

    column: str
    stderr_column: str | None = None
    n_items: float | None = None
    chance: float | None = None
    kind: str | None = None  # discontinuous | continuous; None: from the name
    answer_tokens: float | None = None  # tokens per answer, for the exact-match mirage check

    @property
    def discontinuous(self) -> bool:
        if self.kind is not None:
            return self.kind == "discontinuous"
        return capability_name(self.column).lower() in DISCONTINUOUS


def big_bench_scores(y: np.ndarray, se: np.ndarray | None = None) -> dict[str, float | None]:
    """BIG-bench's linearity and breakthroughness (Srivastava et al. 2022, sec. 3.4) of a
    series sorted by scale: with I = sign(argmax − argmin)·(max − min) and Δᵢ = y_{i+1} − y_i,
    linearity = I / RootMeanSquare(Δ) and breakthroughness = I / RootMedianSquare(Δ).

    Each denominator is floored at the size a step has from noise alone, √2·median(se), and
    at 1e-3·(max − min), so that both are defined on every series: a step series whose other
    steps are all exactly zero gets a large finite breakthroughness instead of none."""
    y = np.asarray(y, dtype=float)
    if len(y) < 2:
        return {"linearity": None, "breakthroughness": None}
    spread = float(y.max() - y.min())
    if spread == 0:
        return {"linearity": 0.0, "breakthroughness": 0.0}
    improvement = float(np.sign(np.argmax(y) - np.argmin(y))) * spread
    floor = max(1e-3 * spread, math.sqrt(2) * float(np.median(se)) if se is not None else 0.0)
    steps = np.diff(y) ** 2
    return {"linearity": improvement / max(math.sqrt(steps.mean()), floor),
            "breakthroughness": improvement / max(math.sqrt(float(np.median(steps))), floor)}


def _chi2_crit(q: int, alpha: float) -> float:
    """The χ² (or drop in χ², for q extra parameters) that chance exceeds with probability alpha."""
    return float(stats.chi2.isf(alpha, q))


# --- the points and their errors ----------------------------------------------------------------

def _points(x, y, se, axis: str, loss_axis: bool, caveats: list[str]) -> pd.DataFrame:
    """One row per distinct scale, in increasing scale order: x, y (the mean of tied rows),
    se2 (the squared standard error of that mean, from given errors), k (tied rows), ss
    (their sum of squared deviations)."""
    frame = pd.DataFrame({"x": x, "y": y, "se": se if se is not None else np.nan})
    frame = frame[np.isfinite(frame["y"])]
    if loss_axis:
        frame = frame[np.isfinite(frame["x"])]
    else:
        bad = ~(np.isfinite(frame["x"]) & (frame["x"] > 0))
        if bad.any():
            caveats.append(f"{int(bad.sum())} row(s) with a missing or non-positive {axis} dropped (log axis)")
            frame = frame[~bad]
    agg = frame.groupby("x", sort=True).agg(y=("y", "mean"), se2=("se", lambda s: float(np.sum(s**2)) / len(s)**2),
                                            k=("y", "size"), ss=("y", lambda s: float(np.sum((s - s.mean()) ** 2))))
    if (agg["k"] > 1).any():
        caveats.append(f"{int((agg['k'] > 1).sum())} scale(s) with several rows: their mean is used")
    agg = agg.reset_index()
    return agg.iloc[::-1].reset_index(drop=True) if loss_axis else agg  # lower loss is more scale


def _errors(u: np.ndarray, agg: pd.DataFrame, spec: MetricSpec, given: bool, caveats: list[str]) -> np.ndarray:
    """Each point's standard error (module docstring); a caveat says how they were estimated
    when none were given."""
    y = agg["y"].to_numpy(float)
    floor = 1e-6 * max(1.0, float(np.abs(y).max()))
    dof_ties = int((agg["k"] - 1).sum())
    if given and np.isfinite(agg["se2"]).all():
        se = np.sqrt(agg["se2"].to_numpy(float))
    elif spec.n_items is not None:
        if np.any((y < 0) | (y > 1)):
            raise UserError(f"{spec.column}: --n-items gives binomial errors of accuracies in [0, 1]; "
                            f"values run from {y.min():g} to {y.max():g}")
        se = _binomial_errors(u, y, spec.n_items)
    elif dof_ties >= 2:  # several rows at some scales: their pooled spread, per mean
        se = math.sqrt(float(agg["ss"].sum()) / dof_ties) / np.sqrt(agg["k"].to_numpy(float))
        caveats.append(f"no standard errors given (--stderr-col or --n-items): they were estimated from the "
                       f"spread of rows that share a scale ({dof_ties} degrees of freedom)")
    else:
        sigma, dof, name = _residual_scale(u, y)
        se = np.full_like(y, max(sigma, 1e-4 * float(np.ptp(y))))
        caveats.append(f"no standard errors given (--stderr-col or --n-items): σ = {sigma:.3g} was estimated from "
                       f"the residuals of a {name} fitted to the series ({dof} degrees of freedom), which a jump "
                       "cannot inflate; the calls are less reliable than with given errors (docs/emergence.md)")
    return np.maximum(se, floor)


def _binomial_errors(u: np.ndarray, y: np.ndarray, items: float) -> np.ndarray:
    """Binomial standard errors at the accuracy a sigmoid of any width fitted to the series
    predicts (not at each observed value: a point that is low by chance would get a small
    error and weigh too much), p smoothed as (k + ½)/(n + 1)."""
    def se(p):
        p = (np.clip(p, 0, 1) * items + 0.5) / (items + 1)
        return np.sqrt(p * (1 - p) / items)

    smooth = em.predict(em.fit("sigmoid", u, y, 1 / se(y) ** 2), u)
    return se(smooth)


def _residual_scale(u: np.ndarray, y: np.ndarray) -> tuple[float, int, str]:
    """(σ, degrees of freedom, curve): the residual scale of a sigmoid of any width fitted to
    the series, which a jump cannot inflate (a sharp sigmoid is a step), and which no choice
    among curves biases low; a straight line where 4 points leave a sigmoid no freedom."""
    model = "sigmoid" if len(y) > em.PARAMETERS["sigmoid"] else "linear"
    f = em.fit(model, u, y, np.ones_like(y))
    dof = len(y) - f.parameters
    return math.sqrt(f.chi2 / dof), dof, model


# --- the verdict on one series ----------------------------------------------------------------------

def analyse_series(x: np.ndarray, y: np.ndarray, spec: MetricSpec, *, group: str = "", axis: str = "x",
                   se: np.ndarray | None = None, loss_axis: bool = False, level: float = LEVEL, tests: int = 1,
                   subset: str = "all rows", bootstrap: int = 200, seed: int = 0) -> Emergence:
    """The verdict for one metric against one scale axis (see the module docstring); the
    step test runs at ``level / tests``."""
    if se is not None and np.any(np.asarray(se, float) < 0):  # squared into the tied means' errors below
        raise UserError(f"{spec.stderr_column}: standard errors must be finite and >= 0")
    caveats: list[str] = []
    agg = _points(x, y, se, axis, loss_axis, caveats)
    xs, ys = agg["x"].to_numpy(float), agg["y"].to_numpy(float)
    n = len(xs)
    result = Emergence(group=group, metric=spec.column, axis=axis, n_points=n, verdict=Verdict.NOT_ENOUGH_DATA,
                       subset=subset, caveats=caveats)
    if n < MIN_POINTS:
        result.scores.update(big_bench_scores(ys))
        caveats.append(f"{n} distinct scale(s): at least {MIN_POINTS} are needed for a verdict")
        return result
    u = -xs if loss_axis else np.log10(xs)  # increasing scale to the right
    ses = _errors(u, agg, spec, se is not None, caveats)
    alpha = level / max(tests, 1)
    result.scores.update(big_bench_scores(ys, ses), level=alpha)
    if np.ptp(ys) == 0:
        result.verdict = Verdict.FLAT
        return result
    if _non_monotone(xs, ys, ses, caveats):
        result.verdict = Verdict.NON_MONOTONE
        return result
    peak = int(np.argmax(ys))  # a partial decline after the peak, on the errors as given
    declines = bool(ys[-1] < ys[peak] - Z * float(ses[peak:].max()) and ys[-1] - ys.min() >= 0.5 * np.ptp(ys))
    fits = _fits(u, ys, ses)
    phi = _overdispersion(fits, n, caveats)  # after the non-monotone test: no sigmoid fits a bump
    if phi > 1:
        ses = ses * math.sqrt(phi)
        fits = _fits(u, ys, ses)
    aicc = {m: em.aicc(fits[m].chi2, em.PARAMETERS[m], n) for m in ("linear", "power", "sigmoid")}
    aicc = {m: round(v, 3) for m, v in aicc.items() if v is not None}
    result.scores.update(aicc=aicc, best_model=min(aicc, key=aicc.get) if aicc else None)
    step = _find_step(u, ys, ses, fits, spec.chance, alpha)
    if step is not None:
        _describe_step(result, step, xs, ys, u, ses, fits, loss_axis, bootstrap, seed)
        if declines:
            caveats.append("the metric declines after the jump but stays well above the plateau")
        if spec.chance is None:
            caveats.append(f"no chance level given (--chance): the plateau's own level, {step['plateau']:.4g}, "
                           "was taken as chance")
        return result
    const = fits["constant"].chi2
    trend = any(const - fits[m].chi2 > _chi2_crit(em.PARAMETERS[m] - 1, TREND_P)
                for m in ("linear", "power", "sigmoid"))
    result.verdict = Verdict.SMOOTH if trend else Verdict.FLAT
    return result


def _fits(u: np.ndarray, ys: np.ndarray, ses: np.ndarray) -> dict[str, em.Fitted]:
    """Every curve the verdict compares, fitted with weights 1/se²."""
    return {m: em.fit(m, u, ys, 1 / ses**2) for m in ("constant", "linear", "power", "wide_sigmoid", "sigmoid")}


def _overdispersion(fits: dict[str, em.Fitted], n: int, caveats: list[str]) -> float:
    """φ, the factor by which the points scatter more than their errors say in variance: 1
    when some line, power law or sigmoid of any width comes near them, else χ²/dof of the
    best of them (each one's χ² rejected at ``OVERDISPERSED_P``). Item counts give the
    sampling error of each score, not the model-to-model scatter of published curves
    (quasi-likelihood)."""
    best = None  # (φ, model, χ², dof) of the curve that fits best
    for model in ("linear", "power", "sigmoid"):
        dof = n - em.PARAMETERS[model]
        if dof >= 1:
            chi2 = fits[model].chi2
            if chi2 <= _chi2_crit(dof, OVERDISPERSED_P):
                return 1.0  # one curve fits within the errors
            if best is None or chi2 / dof < best[0]:
                best = (chi2 / dof, model, chi2, dof)
    if best is None:
        return 1.0
    phi, model, chi2, dof = best
    caveats.append(f"the points scatter {math.sqrt(phi):.3g}× more than their standard errors say (no line, power "
                   f"law or sigmoid fits them; the best, a {model}, has χ² = {chi2:.3g} on {dof} degrees of freedom); "
                   "the errors were scaled up to match")
    return phi


def _non_monotone(xs, ys, ses, caveats: list[str]) -> bool:
    """A significant rise that falls back to below half of it."""
    peak = int(np.argmax(ys))
    if peak == len(ys) - 1:
        return False
    low_before = int(np.argmin(ys[: peak + 1]))
    rise = ys[peak] - ys[low_before]
    if rise <= Z * math.hypot(ses[peak], ses[low_before]):
        return False
    low_after = int(np.argmin(ys[peak + 1:])) + peak + 1
    decline = ys[peak] - ys[low_after]
    if decline > Z * math.hypot(ses[peak], ses[low_after]) and ys[low_after] - ys[low_before] < 0.5 * rise:
        caveats.append(f"rises to {ys[peak]:.4g} at {xs[peak]:.4g}, then falls back to {ys[low_after]:.4g}")
        return True
    return False


def _plateau(before: np.ndarray, se: np.ndarray, rest: np.ndarray, chance: float | None) -> tuple[float, float] | None:
    """(level, its standard error) of a plateau of the points ``before`` a step, or None when
    they are not one. A plateau is consistent with a constant (χ² test at ``PLATEAU_P``), or
    flat next to the rise after it: every point within FLAT_FRACTION of that rise of the
    level (model-to-model scatter that item counts do not cover, as in published curves).
    With a chance level, the level must be near it: within max(Z standard errors,
    NEAR_FRACTION of the rise)."""
    w = 1 / se**2
    mean = float(np.sum(w * before) / np.sum(w))
    se_mean = float(1 / math.sqrt(np.sum(w)))
    height = float(np.max(rest)) - (mean if chance is None else chance)
    if height <= 0:
        return None
    constant = np.sum(w * (before - mean) ** 2) <= _chi2_crit(len(before) - 1, PLATEAU_P)
    if not constant and np.max(np.abs(before - mean)) > FLAT_FRACTION * height:
        return None
    if chance is not None and abs(mean - chance) > max(Z * se_mean, NEAR_FRACTION * height):
        return None
    return mean, se_mean


def _find_step(u, ys, se: np.ndarray, fits: dict, chance: float | None, alpha: float) -> dict | None:
    """The step the module docstring's ``emergent`` (or ``late_jump``) describes, or None.

    A place k has a plateau before it and its first two points (one, at the last place) above
    the plateau at the test level. A step at k also needs them at least ``Z`` standard errors
    above it, and must be needed by every smooth trend; among such steps, the one the trends
    explain least wins. A sharp sigmoid that beats every trend instead puts the onset at the
    place with the steepest step (in standard errors). The level is divided among the step places (at least one),
    plus one for the sigmoid (Bonferroni; the calibration suite measures the resulting rates)."""
    n = len(ys)
    places = []
    for k in range(2, n):  # at least two plateau points before; n - 1: the last point alone
        plateau = _plateau(ys[:k], se[:k], ys[k:], chance)
        if plateau is not None:
            level, se_level = plateau
            evidence = slice(k, min(k + 2, n))
            z = float(np.min((ys[evidence] - level) / np.hypot(se[evidence], se_level)))
            if z > stats.norm.isf(alpha):
                places.append({"index": k, "plateau": level, "z": z})
    inner = [p for p in places if p["index"] < n - 1]
    steps = [p for p in inner if p["z"] > Z]
    # one-sided (only a rise counts): a drop in χ² that chance exceeds with probability 2·alpha
    # does so upwards with probability alpha
    crit = _chi2_crit(1, 2 * alpha / (max(len(steps), 1) + 1))
    sigmoid = fits["sigmoid"]
    if inner and sigmoid.coef[1] > 0 and em.sigmoid_shape(sigmoid)[1] < SHARP_WIDTH * float(np.ptp(u)):
        drops = {m: fits[m].chi2 - sigmoid.chi2 for m in em.SMOOTH}
        against = min(drops, key=drops.get)
        if drops[against] > crit:
            steepest = max(inner, key=lambda p: (ys[p["index"]] - ys[p["index"] - 1])
                           / math.hypot(se[p["index"]], se[p["index"] - 1]))
            return {**steepest, "lone": False, "chi2": drops[against], "critical": crit, "against": against,
                    "shape": "sigmoid"}
    w = 1 / se**2
    found = None
    for place in steps:
        drops = {}
        for model in em.SMOOTH:
            stepped = em.fit(model, u, ys, w, step=place["index"])
            drops[model] = fits[model].chi2 - stepped.chi2 if stepped.jump > 0 else 0.0
        against = min(drops, key=drops.get)
        if drops[against] > crit and (found is None or drops[against] > found["chi2"]):
            found = {**place, "lone": False, "chi2": drops[against], "critical": crit, "against": against,
                     "shape": "step"}
    if found is None and not steps and places and places[-1]["index"] == n - 1 and places[-1]["z"] > Z:
        return {**places[-1], "lone": True}  # the last point alone: no test tells a step from a steep trend
    return found


def _describe_step(result: Emergence, step: dict, xs, ys, u, se: np.ndarray, fits: dict, loss_axis: bool,
                   bootstrap: int, seed: int) -> None:
    """Verdict, threshold, midpoint and scores of a step that ``_find_step`` found."""
    k = step["index"]
    result.verdict = Verdict.LATE_JUMP if step["lone"] else Verdict.EMERGENT
    low, high = sorted((float(xs[k - 1]), float(xs[k])))
    result.threshold = {"x": (low + high) / 2 if loss_axis else math.sqrt(low * high), "low": low, "high": high}
    result.scores["jump_z"] = round(step["z"], 2)
    if step["lone"]:
        result.caveats.append(f"only the last scale ({xs[-1]:.4g}) is above the plateau of the others: one point "
                              "of evidence, which a steep smooth trend explains as well as a step; a step needs two "
                              "points after it to be called emergent")
    else:
        result.scores.update(transition=step["shape"], step_chi2=round(step["chi2"], 3),
                             step_critical=round(step["critical"], 3), step_against=step["against"])
    peak_after = float(np.max(ys[k:]))
    result.midpoint = _crossing(xs, ys, (step["plateau"] + peak_after) / 2, loss_axis)
    sig = fits["sigmoid"]
    smooth = min(em.aicc(fits[m].chi2, em.PARAMETERS[m], len(u)) or math.inf for m in ("linear", "power"))
    sharp = em.sigmoid_shape(sig)[1] < SHARP_WIDTH * float(np.ptp(u))
    sig_aicc = em.aicc(sig.chi2, em.PARAMETERS["sigmoid"], len(u))
    if sharp and sig_aicc is not None and sig_aicc < smooth - AICC_MARGIN:
        _sigmoid_location(result, u, ys, se, sig, loss_axis, bootstrap, seed)


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


def _polish(u, ys, se, start) -> np.ndarray | None:
    """The 4-parameter sigmoid refined from ``start`` (floor, height, mid, scale), or None."""
    span = float(np.ptp(u))
    lo = [-np.inf, -np.inf, u.min() - span, 1e-4 * span]
    hi = [np.inf, np.inf, u.max() + span, 3 * span]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(em.logistic, u, ys, p0=np.clip(start, np.add(lo, 1e-9), np.subtract(hi, 1e-9)),
                                  sigma=se, absolute_sigma=True, bounds=(lo, hi), maxfev=4000)
    except (RuntimeError, ValueError):
        return None
    return params


def _sigmoid_location(result: Emergence, u, ys, se, sig: em.Fitted, loss_axis: bool, bootstrap: int,
                      seed: int) -> None:
    """Midpoint, width and onset of the sharp sigmoid, with parametric-bootstrap intervals."""
    def to_x(v: float) -> float:
        return float(-v) if loss_axis else float(10**v)

    start = np.array([sig.coef[0], sig.coef[1], *sig.theta])
    params = _polish(u, ys, se, start)
    params = start if params is None else params
    _, _, mid, scale = params
    result.width_decades = None if loss_axis else round(em.LN81 * scale, 4)
    result.midpoint = to_x(mid)
    result.scores["onset_fit"] = to_x(mid - math.log(9) * scale)  # 10% of the rise
    rng = np.random.default_rng(seed)
    mids, onsets = [], []
    for _ in range(bootstrap):
        refit = _polish(u, ys + rng.normal(0, se), se, params)
        if refit is not None:
            mids.append(refit[2])
            onsets.append(refit[2] - math.log(9) * refit[3])
    if len(mids) >= max(10, bootstrap // 2):
        result.scores["midpoint_low"], result.scores["midpoint_high"] = sorted(map(to_x, np.percentile(mids, [2.5, 97.5])))
        result.scores["onset_fit_low"], result.scores["onset_fit_high"] = sorted(map(to_x, np.percentile(onsets, [2.5, 97.5])))
    elif bootstrap:
        result.caveats.append("the sigmoid's bootstrap refits failed too often for an interval on its midpoint")
