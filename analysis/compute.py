"""The compute convention, in one place: what C means, and the compute-optimal split under it.

**C is the FLOPs the trials really cost**: the table's FLOPs column (the planner's count:
the family's FLOPs per data unit × D). Only a table without one falls back to C = 6·N·D
(Kaplan et al. 2020), and every fit says which (``diagnostics.compute.convention``).

The allocation needs FLOPs per data unit as a function of N beyond the data, so it is fitted
from the table in the form

    f(N) = k·N + c·N^p        (k, c ≥ 0; 0 ≤ p ≤ 2)

6·N is the 6ND count (k = 6, c = 0). The correction c·N^p takes what does not grow like N:
with p < 1 what grows more slowly (a transformer's attention and unembedding, which scale
with width), with p > 1 what grows faster (a GAN, whose N counts the generator only while
its cost includes the discriminator's, on the quickstart's width ladder). For each p on a
grid the relative least-squares (k, c) is a non-negative linear problem; the best p is kept,
and ``max_rel_error`` says how well the form reproduces the table (a warning above
:data:`FLOPS_FORM_TOLERANCE`). With fewer than 3 distinct N, or when k·N alone reproduces the
table, c = 0.

The compute-optimal (N, D) for a budget C minimises the fitted L(N, D) subject to
f(N)·D = C. With c = 0 that is Chinchilla's closed form with k for 6; otherwise a golden-section
search in log N (the objective is convex in log N: a sum of exponentials of convex functions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar, nnls

from analysis.records import Closed
from analysis.results import Interval

FLOPS_FORM_TOLERANCE = 0.05  # relative: a form that misses the table by more than this warns
P_MAX = 2.0
_P_GRID = np.round(np.arange(0.0, P_MAX + 0.001, 0.05), 2)
_GOLDEN = (math.sqrt(5) - 1) / 2
_SEARCH_HALF_WIDTH = 12.0  # natural-log units around the closed-form guess: ±5.2 decades of N
_SEARCH_STEPS = 70  # 24 · 0.618^70 ≈ 6e-14 in log N


class Convention(Closed):
    """What C is (``diagnostics.compute.convention`` of every fit)."""

    TABLE = "flops column", "the FLOPs the trials really cost (the planner's count, or the table's FLOPs column)"
    SIX_ND = "6ND", "the table has no FLOPs column: C = 6·N·D, the stated fallback"


@dataclass(frozen=True)
class FlopsPerUnit:
    """FLOPs per data unit as a function of N: ``k·N + c·N^p``."""

    k: float = 6.0
    c: float = 0.0
    p: float = 0.0
    convention: Convention = Convention.SIX_ND
    max_rel_error: float = 0.0  # of the form on the table's points (0 for 6ND)
    n_range: tuple[float, float] | None = None  # the N the form was fitted on

    def __call__(self, n):
        n = np.asarray(n, dtype=float)
        return self.k * n + self.c * n ** self.p

    @property
    def linear(self) -> bool:
        return self.c == 0.0

    def describe(self) -> str:
        if self.convention is Convention.SIX_ND:
            return "C = 6·N·D (the table has no FLOPs column: the stated fallback)"
        form = f"{self.k:.4g}·N" + (f" + {self.c:.4g}·N^{self.p:.2f}" if not self.linear else "")
        return (f"C = the FLOPs the trials cost; FLOPs per data unit ≈ {form} "
                f"(reproduces the table within {self.max_rel_error:.2%})")

    def to_json(self) -> dict:
        out = asdict(self)
        out["convention"] = self.convention.value
        out["n_range"] = None if self.n_range is None else list(self.n_range)
        return out

    @classmethod
    def from_json(cls, doc: dict | None) -> "FlopsPerUnit":
        if not doc:
            return cls()
        n_range = doc.get("n_range")
        return cls(float(doc["k"]), float(doc["c"]), float(doc["p"]), Convention(doc["convention"]),
                   float(doc.get("max_rel_error") or 0.0), None if n_range is None else tuple(n_range))

    def warnings(self) -> list[str]:
        if self.max_rel_error > FLOPS_FORM_TOLERANCE:
            return [f"FLOPs per data unit: the form k·N + c·N^p misses the table by up to {self.max_rel_error:.1%}; "
                    "the compute-optimal split uses it beyond the data"]
        return []


SIX_ND = FlopsPerUnit()


def fit_flops_per_unit(n: np.ndarray, c: np.ndarray | None, d: np.ndarray) -> FlopsPerUnit:
    """The form f(N) fitted to the points' FLOPs per data unit C / D (``c`` None: no FLOPs
    column, the 6ND fallback)."""
    if c is None:
        return SIX_ND
    n, per_unit = np.asarray(n, float), np.asarray(c, float) / np.asarray(d, float)
    ok = np.isfinite(n) & np.isfinite(per_unit) & (n > 0) & (per_unit > 0)
    n, per_unit = n[ok], per_unit[ok]
    if not len(n):
        return SIX_ND
    sizes = np.unique(n)
    target = np.array([np.median(per_unit[n == s]) for s in sizes])  # one value per N
    n_range = (float(sizes.min()), float(sizes.max()))
    if np.allclose(target, 6 * sizes, rtol=1e-9, atol=0):
        return FlopsPerUnit(6.0, 0.0, 0.0, Convention.TABLE, _worst(6 * n, per_unit), n_range)
    k_only = float(np.median(target / sizes))
    best = (_worst(k_only * sizes, target), k_only, 0.0, 0.0)
    if len(sizes) >= 3:
        for p in _P_GRID:
            err, k, c = _nnls_form(sizes, target, p)
            if k > 0 and err < best[0] - 1e-9:
                best = (err, float(k), float(c), float(p))
    if best[3] > 0 or best[2] > 0:  # polish p between the grid's neighbours of the best
        res = minimize_scalar(lambda q: _nnls_form(sizes, target, q)[0], method="bounded",
                              bounds=(max(0.0, best[3] - 0.05), min(P_MAX, best[3] + 0.05)))
        err, k, c = _nnls_form(sizes, target, float(res.x))
        if k > 0 and err < best[0]:
            best = (err, k, c, float(res.x))
    _, k, c, p = best
    form = FlopsPerUnit(k, c, p, Convention.TABLE, 0.0, n_range)
    return FlopsPerUnit(k, c, p, Convention.TABLE, _worst(form(n), per_unit), n_range)


def _nnls_form(sizes: np.ndarray, target: np.ndarray, p: float) -> tuple[float, float, float]:
    """(worst relative error, k, c) of the relative least-squares k, c ≥ 0 at exponent p."""
    design = np.stack([sizes / target, sizes ** p / target], axis=1)  # relative residuals
    (k, c), _ = nnls(design, np.ones(len(sizes)))
    return _worst(k * sizes + c * sizes ** p, target), float(k), float(c)


def _worst(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(pred / actual - 1))) if len(actual) else 0.0


def closed_form_split(a, b, g, k: float, c) -> dict:
    """Chinchilla's closed form for f(N) = k·N: N_opt = G·(C/k)^a, D_opt = (C/k)^b / G
    (floats or arrays that broadcast)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a degenerate draw: inf or NaN
        return {"N": g * (c / k) ** a, "D": (c / k) ** b / g}


def allocation_constants(alpha, beta, log_a, log_b):
    """(a, b, G) of the closed form from the law's exponents and log-coefficients:
    a = β/(α+β), b = α/(α+β), G = (αA/(βB))^(1/(α+β)); G is NaN where an exponent is ≤ 0."""
    alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
    s = alpha + beta
    with np.errstate(divide="ignore", invalid="ignore"):
        log_g = (np.log(alpha) + log_a - np.log(beta) - log_b) / s  # in log space: A, B can be huge
        g = np.where((alpha > 0) & (beta > 0), np.exp(np.clip(log_g, -700, 700)), np.nan)
    return beta / s, alpha / s, g


def optimal_split(law: dict, flops: FlopsPerUnit, c) -> dict:
    """The compute-optimal {"N", "D"} of the Chinchilla law ``law`` (E, A, alpha, B, beta:
    floats, or arrays of bootstrap draws shaped [K, 1]) for compute ``c`` (float or [M]),
    under ``flops``. The one place the split is computed."""
    p = {k: np.asarray(law[k], dtype=float) for k in ("A", "alpha", "B", "beta")}
    c = np.asarray(c, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_a, log_b = np.log(p["A"]), np.log(p["B"])
    a, b, g = allocation_constants(p["alpha"], p["beta"], log_a, log_b)
    guess = closed_form_split(a, b, g, flops.k, c)
    if flops.linear:
        return guess
    # Refine the guess's k to the form's slope there, then search ±5 decades around it.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        k_local = flops(guess["N"]) / guess["N"]
        centre = np.log(closed_form_split(a, b, g, k_local, c)["N"])
    centre = np.where(np.isfinite(centre), centre, 0.0)
    lo, hi = centre - _SEARCH_HALF_WIDTH, centre + _SEARCH_HALF_WIDTH
    log_c = np.log(c)

    def objective(x):  # the reducible loss at N = e^x, D = C / f(N); E is a constant here
        with np.errstate(over="ignore", invalid="ignore"):
            log_f = np.log(flops(np.exp(x)))
            return np.exp(log_a - p["alpha"] * x) + np.exp(log_b - p["beta"] * (log_c - log_f))

    x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    f1, f2 = objective(x1), objective(x2)
    for _ in range(_SEARCH_STEPS):
        left = f1 < f2  # the minimum lies in [lo, x2]
        lo, hi = np.where(left, lo, x1), np.where(left, x2, hi)
        x1, x2 = np.where(left, hi - _GOLDEN * (hi - lo), x2), np.where(left, x1, lo + _GOLDEN * (hi - lo))
        f_new = objective(np.where(left, x1, x2))
        f1, f2 = np.where(left, f_new, f2), np.where(left, f1, f_new)
    x = (lo + hi) / 2
    bad = ~np.isfinite(g)
    with np.errstate(over="ignore"):  # a degenerate draw's split: inf, said by its interval
        n_opt = np.where(bad, np.nan, np.exp(x))
    with np.errstate(invalid="ignore"):
        return {"N": n_opt, "D": c / flops(n_opt)}


def split_intervals(value: dict, draws: dict | None) -> dict[str, Interval]:
    """N, D and D_per_N (tokens per parameter) of a split as Intervals: ``value`` holds the
    point estimate's N and D (floats), ``draws`` each bootstrap draw's (1-D arrays), or None."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a degenerate split: NaN or inf, quietly
        ratio = float(np.float64(value["D"]) / value["N"])
        ratio_draws = None if draws is None else np.asarray(draws["D"]) / np.asarray(draws["N"])
    return {"N": Interval.from_samples(value["N"], None if draws is None else draws["N"]),
            "D": Interval.from_samples(value["D"], None if draws is None else draws["D"]),
            "D_per_N": Interval.from_samples(ratio, ratio_draws)}


def split_fields(value: dict, draws: dict | None) -> dict:
    """A prediction's compute-optimal split fields: ``D_per_N`` beside N and D, and with
    bootstrap ``draws`` the intervals ``N_interval``, ``D_interval``, ``D_per_N_interval``."""
    intervals = split_intervals(value, draws)
    out = {"D_per_N": intervals["D_per_N"].value}
    if draws is not None:
        out.update({f"{key}_interval": iv for key, iv in intervals.items()})
    return out
