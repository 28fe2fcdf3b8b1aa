"""Adaptive ladders: choose the next runs that most shrink the target's interval per FLOP.

A design starts from a candidate region (every (N, D) run it may choose, each with its cost in
FLOPs) and a *target*: one number the fitted Chinchilla law gives, the loss at (N, D), the loss
at the compute-optimal point of a budget C, or the allocation exponent a. It runs a small
seed design spread over the region, then, after each result, decides what to run next:

1. refit L(N, D) = E + A/N^α + B/D^β to the results so far (``analysis.laws.fit_lse_law``,
   K bootstrap draws θ_1..θ_K), which gives the target's 95% interval (the draws' 2.5th and
   97.5th percentiles) and the stopping rules' width;
2. score each candidate x by the variance of the target it is expected to remove, per FLOP:

       score(x) = Cov(g, f_x)² / (Var(f_x) + σ²) / cost(x)

   where g(θ) is the target (its log, for a loss), f_x(θ) the law's log-loss at x, the
   variances and covariance are taken over the bootstrap draws, and σ² is the fit's residual
   variance of log-loss (the run-to-run noise a new observation carries);
3. pick the best, update the draws' covariance as if it had been observed, and repeat for a
   batch. Runs already started but not finished are accounted for the same way first.

Why that score: to first order the draws are a Gaussian ensemble over the law's parameters
(the bootstrap's picture of its uncertainty). Observing y_x = f_x(θ) + ε, ε ~ N(0, σ²), then
leaves Var(g | y_x) = Var(g) − Cov(g, f_x)²/(Var(f_x) + σ²) whatever value y_x takes, so the
fraction is the expected reduction of the target's variance: the c-optimal design criterion
for a linear model, with the linearisation read off the bootstrap draws rather than
differentiated. The same Gaussian update, applied to the covariance matrix of all the
candidates' predictions, gives what a batch leaves (``_pick``). Assumptions: the Chinchilla
form holds over the region and the target; the noise is independent, of one size in log-loss
everywhere; the bootstrap draws describe the law's uncertainty (with few points they
describe it poorly, which is why the design starts from a seed design, not from the
criterion). The width a decision expects after its runs (``width_expected``) follows from the
same update: width × sqrt(Var after / Var before).

Stopping rules, checked before every decision: the target's relative 95% interval width
((high − low)/|value|) at most ``stop_width`` on a fit of every chosen run, ``max_flops``
spent (runs that would exceed it are not candidates), or ``max_trials`` runs.
``benchmarks/adaptive_vs_grid.py`` measures the
design against fixed grids and random designs on a known law (docs/adaptive.md).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analysis.compute import FlopsPerUnit, fit_flops_per_unit, optimal_split
from analysis.laws import LAWS, fit_lse_law, law_value
from analysis.points import Points
from analysis.adaptive_spec import AdaptiveSpec, Target
from analysis.records import DECISIONS, StopReason

LAW = LAWS["chinchilla"]


def widen(n: int) -> float:
    """How much the bootstrap interval of a fit to ``n`` points is widened (around the
    estimate): sqrt(n/(n − p)), as a bootstrap over n points underestimates the spread of a
    p-parameter fit about as RSS/n does σ², times t(0.975, n − p)/z(0.975), as the noise is
    estimated from n − p degrees of freedom: 4.1x at 7 points, 1.9x at 10, 1.3x at 20, 1.1x at 40."""
    p = len(LAW.param_names)
    return math.sqrt(n / (n - p)) * float(stats.t.ppf(0.975, n - p) / stats.norm.ppf(0.975))


def target_values(target: Target, law: dict, flops: FlopsPerUnit, c_ref: float) -> np.ndarray:
    """The target under ``law`` (E, A, alpha, B, beta: floats or [K] draws), on the scale the
    design works in: log-loss, or a itself (under a FLOPs form that is not linear in N, the
    local exponent at compute ``c_ref``)."""
    p = {k: np.asarray(v, float) for k, v in law.items()}
    with np.errstate(all="ignore"):
        if target.allocation:
            if flops.linear:
                return p["beta"] / (p["alpha"] + p["beta"])
            step = 1.01
            split = optimal_split({k: v[..., None] for k, v in p.items()}, flops, np.array([1.0, step]) * c_ref)
            return np.diff(np.log(split["N"]), axis=-1)[..., 0] / math.log(step)
        if target.C is not None:
            split = optimal_split({k: v[..., None] for k, v in p.items()}, flops, np.array([target.C]))
            n, d = split["N"][..., 0], split["D"][..., 0]
        else:
            n, d = target.N, target.D
        return np.log(law_value(LAW.name, p, N=n, D=d))


def natural(target: Target, x):
    """A value on the design's scale back in the target's own units."""
    return x if target.allocation else np.exp(x)


def reach(target: Target, candidates: pd.DataFrame) -> float | None:
    """How far the target lies beyond the candidate region: the largest ratio of its N, D or
    C to the region's largest (None for the allocation exponent)."""
    if target.allocation:
        return None
    if target.C is not None:
        return target.C / float(candidates["C"].max())
    return max(target.N / float(candidates["N"].max()), target.D / float(candidates["D"].max()))


@dataclass(frozen=True)
class Estimate:
    """The target's fit after some runs: point value, 95% interval and its relative width."""

    value: float
    low: float
    high: float
    n_points: int

    @property
    def width(self) -> float:
        """(high − low) / |value|; inf when the fit gives no finite interval."""
        width = (self.high - self.low) / abs(self.value) if self.value else math.inf
        return width if math.isfinite(width) else math.inf


@dataclass
class Design:
    """The state of one adaptive design: the candidates (a frame with columns ``key``, ``N``,
    ``D``, ``C``, ``cost``, and optionally ``group`` and ``group_cost``: a wsd branch's trunk and
    what it costs, paid by the first run of the group chosen), what was chosen, what was
    observed, the decisions made."""

    candidates: pd.DataFrame
    settings: AdaptiveSpec  # its target, seed design, batch and stopping rules
    flops: FlopsPerUnit = field(default_factory=FlopsPerUnit)
    chosen: list[str] = field(default_factory=list)  # in the order they were chosen
    observed: dict[str, float] = field(default_factory=dict)  # key -> final loss (NaN: the run failed)
    decisions: list[dict] = field(default_factory=list)  # rows of DECISIONS
    stopped: StopReason | None = None
    last: Estimate | None = None  # the target's latest estimate
    rounds: int = 0  # decisions made (each chooses up to ``batch`` runs)

    def __post_init__(self) -> None:
        self.candidates = self.candidates.reset_index(drop=True)
        if "group" not in self.candidates:
            self.candidates["group"], self.candidates["group_cost"] = "", 0.0
        self._index = {k: i for i, k in enumerate(self.candidates["key"])}

    @classmethod
    def for_candidates(cls, candidates: pd.DataFrame, settings: AdaptiveSpec) -> "Design":
        """A design over ``candidates`` whose C is the FLOPs they really cost: the form f(N) of
        FLOPs per data unit is fitted to them (``analysis.compute``), for a target C's split."""
        c = candidates
        flops = fit_flops_per_unit(c["N"].to_numpy(float), c["C"].to_numpy(float), c["D"].to_numpy(float))
        return cls(candidates, settings, flops)

    def costs(self, also: list[int] = ()) -> np.ndarray:
        """[M] what each candidate would cost now: its own cost, plus its group's when no run of
        the group is chosen yet (nor among ``also``)."""
        paid = set(self.candidates["group"].iloc[[self._index[k] for k in self.chosen] + list(also)])
        unpaid = ~self.candidates["group"].isin(paid) & (self.candidates["group"] != "")
        return self.candidates["cost"].to_numpy(float) + np.where(unpaid, self.candidates["group_cost"], 0.0)

    @property
    def spent(self) -> float:
        """FLOPs of every chosen run (finished or not), a group's cost once."""
        rows = self.candidates.iloc[[self._index[k] for k in self.chosen]]
        groups = rows[rows["group"] != ""].drop_duplicates("group")
        return float(rows["cost"].sum() + groups["group_cost"].sum())

    def seed_design(self) -> list[str]:
        """The first runs: ``seed_points`` candidates spread over the region's cheaper half
        (cost at most the geometric middle of the cheapest and the dearest, when that half
        holds 3 sizes and 3 data budgets). From the cheapest candidate, each next one is the
        farthest from those picked (log N × log D scaled to the unit square), a new N and a new
        D first: so the first picks form a Latin design, and the law's N and D terms are both
        identified. The cheaper half spans the whole range of N and of D (small N at large D,
        large N at small D), which is what the exponents need; the dear corner is left to the
        criterion."""
        return self._spread(self.settings.seed_points)

    def _spread(self, count: int) -> list[str]:
        """Choose ``count`` more candidates by the seed design's rule (``seed_design``)."""
        cost = self.candidates["cost"].to_numpy(float)
        levels = np.log(self.candidates[["N", "D"]].to_numpy(float))
        span = np.ptp(levels, axis=0)
        xy = (levels - levels.min(axis=0)) / np.where(span > 0, span, 1.0)
        allowed = cost <= math.sqrt(cost.min() * cost.max()) * (1 + 1e-9)
        if min(len(np.unique(levels[allowed, k])) for k in (0, 1)) < 3:
            allowed[:] = True
        picked = [self._index[k] for k in self.chosen]
        allowed &= self.open_candidates()
        if not allowed.any():
            allowed = self.open_candidates()
        new_picks: list[int] = []
        while len(new_picks) < count and allowed.any():
            if not picked:
                j = int(np.argmin(np.where(allowed, cost, np.inf)))
            else:
                dist = np.min(np.linalg.norm(xy[:, None, :] - xy[None, picked, :], axis=2), axis=1)
                new = sum((~np.isin(levels[:, k], levels[picked, k])).astype(float) for k in (0, 1))
                j = int(np.argmax(np.where(allowed, dist + 2.0 * new, -1.0)))  # dist <= sqrt(2): a new level wins
            picked.append(j)
            new_picks.append(j)
            allowed[j] = False
        keys = [self.candidates["key"][i] for i in new_picks]
        self.chosen += keys
        return keys

    def observe(self, key: str, loss: float) -> None:
        self.observed[key] = float(loss)

    def decide(self) -> list[str]:
        """The next runs (up to ``batch``), or [] with ``stopped`` set when a rule holds, or []
        when the results so far cannot be fitted yet (wait for more)."""
        fit = self.check()
        if fit is None:
            return self._unfitted()
        estimate, draws, cand_draws, sigma2 = fit
        free = self.open_candidates()
        room = self.settings.max_trials - len(self.chosen)
        picks, scores, ratio = _pick(draws, cand_draws, sigma2, self.costs, free, self._pending(),
                                     min(self.settings.batch, room))
        self.rounds += 1
        keys = []
        for i in picks:
            keys.append(self.candidates["key"][i])
            cost = float(self.costs()[i])
            self.chosen.append(keys[-1])
            self.decisions.append(self._row(i, cost, scores, free, estimate, ratio))
        return keys

    def check(self) -> tuple[Estimate, np.ndarray, np.ndarray, float] | None:
        """Refit and apply the stopping rules: the fit (as ``fit``) when the design may choose
        more, else None, with ``stopped`` set when a rule holds (unset: wait for results). The
        width rule is applied only to a fit of every chosen run: while some still run, a
        narrow enough interval waits for them rather than choosing more."""
        if self.stopped is not None:
            return None
        fit = self.fit()
        if fit is None:
            return None
        self.last = fit[0]
        if fit[0].width <= self.settings.stop_width:
            if self._pending():  # narrow enough on what is in: stop only once every chosen run is
                return None
            self.stopped = StopReason.WIDTH
        elif len(self.chosen) >= self.settings.max_trials:
            self.stopped = StopReason.MAX_TRIALS
        elif not self.open_candidates().any():
            self.stopped = StopReason.MAX_FLOPS if self.spent > 0 else StopReason.NO_CANDIDATES
        return None if self.stopped else fit

    def refresh(self) -> None:
        """Refit with every result in, without deciding: the final estimate of a design that
        stopped while chosen runs were still going (``stopped`` and the decisions stay)."""
        fit = self.fit()
        if fit is not None:
            self.last = fit[0]

    def _unfitted(self) -> list[str]:
        """No fit yet: wait for the runs going; with none going (a seed run failed), one more
        seed point; with none left to choose, stop."""
        if self.stopped is not None or self._pending():
            return []
        more = self._spread(1) if len(self.chosen) < self.settings.max_trials else []
        if not more:
            self.stopped = StopReason.UNFITTABLE
        return more

    def fit(self) -> tuple[Estimate, np.ndarray, np.ndarray, float] | None:
        """(the target's estimate, its draws [K], the candidates' log-loss draws [K, M], the
        residual variance) from the runs observed so far; None when they cannot be fitted."""
        done = [k for k, v in self.observed.items() if np.isfinite(v) and v > 0]
        rows = self.candidates.iloc[[self._index[k] for k in done]]
        frame = pd.DataFrame({"N": rows["N"].to_numpy(float), "D": rows["D"].to_numpy(float),
                              "C": rows["C"].to_numpy(float), "loss": [self.observed[k] for k in done]})
        if len(frame) < len(LAW.param_names) + 1 or frame["N"].nunique() < 3 or frame["D"].nunique() < 3:
            return None
        result = fit_lse_law(LAW, Points(frame, flops=self.flops), bootstrap=self.settings.bootstrap,
                             seed=self.settings.seed + self.rounds, check_resamples=0, workers=1,
                             held_out=False)
        best = {k: result.params[k].value for k in LAW.param_names}
        c_ref = float(self.candidates["C"].max())
        value = float(target_values(self.settings.target, best, self.flops, c_ref))
        draws = target_values(self.settings.target, result.samples, self.flops, c_ref)
        params = {k: np.asarray(result.samples[k], float)[:, None] for k in LAW.param_names}
        with np.errstate(all="ignore"):
            cand = np.log(law_value(LAW.name, params, N=self.candidates["N"].to_numpy(float)[None, :],
                                    D=self.candidates["D"].to_numpy(float)[None, :]))
        ok = np.isfinite(draws) & np.isfinite(cand).all(axis=1)
        low, high = np.percentile(draws[ok], [2.5, 97.5]) if ok.sum() > 1 else (-math.inf, math.inf)
        low, high = value - widen(len(frame)) * (value - low), value + widen(len(frame)) * (high - value)
        nat = functools.partial(natural, self.settings.target)
        residuals = np.asarray(result.diagnostics["residuals_log"])
        sigma2 = float(residuals @ residuals / max(1, len(residuals) - len(LAW.param_names)))
        estimate = Estimate(float(nat(value)), float(nat(low)), float(nat(high)), len(frame))
        return estimate, draws[ok], cand[ok], max(sigma2, 1e-8)

    def open_candidates(self) -> np.ndarray:
        """[M] bool: the candidates not chosen yet whose cost fits in what is left of max_flops."""
        taken = np.zeros(len(self.candidates), bool)
        taken[[self._index[k] for k in self.chosen]] = True
        left = (self.settings.max_flops or math.inf) - self.spent
        return ~taken & (self.costs() <= left)

    def _pending(self) -> list[int]:
        return [self._index[k] for k in self.chosen if k not in self.observed]

    def _row(self, i: int, cost: float, scores: np.ndarray, free: np.ndarray, est: Estimate, ratio: float) -> dict:
        c = self.candidates.iloc[i]
        return {DECISIONS.round: self.rounds, DECISIONS.chosen: c["key"], DECISIONS.n_params: float(c["N"]),
                DECISIONS.data_units: float(c["D"]), DECISIONS.cost: cost,
                DECISIONS.criterion: float(scores[i]), DECISIONS.candidates_scored: int(free.sum()),
                DECISIONS.points: est.n_points, DECISIONS.spent_flops: self.spent,
                DECISIONS.value: est.value, DECISIONS.low: est.low, DECISIONS.high: est.high,
                DECISIONS.width: est.width, DECISIONS.width_expected: est.width * ratio}

    def frame(self) -> pd.DataFrame:
        """The decisions as ``decisions.parquet`` holds them."""
        return DECISIONS.frame(self.decisions)

    def state(self) -> dict:
        """What ``adaptive.json`` holds: the target, the latest estimate, why it stopped."""
        est = self.last
        return {"target": self.settings.target.describe(), "stop_width": self.settings.stop_width,
                "stopped": None if self.stopped is None else self.stopped.value,
                "stopped_because": None if self.stopped is None else self.stopped.meaning,
                "chosen": list(self.chosen), "finished": len(self.observed), "rounds": self.rounds,
                "spent_flops": self.spent, "reach": reach(self.settings.target, self.candidates),
                "estimate": None if est is None else {"value": est.value, "low": est.low, "high": est.high,
                                                      "width": est.width, "points": est.n_points}}

    def progress(self) -> str:
        """The design in one line (the sweep's progress line)."""
        est = self.last
        if est is None:
            where = "not fitted yet"
        elif not math.isfinite(est.width):
            where = f"the fit gives no finite interval yet ({est.n_points} runs)"
        else:
            where = (f"{est.value:.4g} [{est.low:.4g}, {est.high:.4g}], width {est.width:.2%} "
                     f"(stop at {self.settings.stop_width:.2%})")
        end = f"; stopped: {self.stopped.meaning}" if self.stopped is not None else ""
        return (f"adaptive: {self.settings.target.describe()}: {where}; {len(self.chosen)} runs chosen, "
                f"{self.spent:.3g} FLOPs{end}")


def _pick(draws: np.ndarray, cand: np.ndarray, sigma2: float, cost, free: np.ndarray,
          pending: list[int], batch: int) -> tuple[list[int], np.ndarray, float]:
    """(the chosen candidates' indices, each candidate's score at the first pick, sqrt of the
    target's variance after ÷ before). The covariance of [g, f_1..f_M] over the draws is
    updated by the Gaussian rule for every pending run, then for each pick in turn;
    ``cost(picks)`` is each candidate's cost once ``picks`` are chosen too."""
    z = np.column_stack([draws, cand])
    s = np.cov(z, rowvar=False) if len(z) > 2 else np.zeros((z.shape[1], z.shape[1]))

    def observe(s, j):  # Var(· | y_j): the rank-one Gaussian update
        col = s[:, j + 1]
        return s - np.outer(col, col) / (s[j + 1, j + 1] + sigma2)

    for j in pending:
        s = observe(s, j)
    before = s[0, 0]
    picks, first = [], None
    for _ in range(batch):
        gain = s[0, 1:] ** 2 / (np.diag(s)[1:] + sigma2)
        score = np.where(free, gain / cost(picks), -np.inf)
        score[picks] = -np.inf
        first = score if first is None else first
        j = int(np.argmax(score))
        if not np.isfinite(score[j]):
            break
        picks.append(j)
        s = observe(s, j)
    ratio = math.sqrt(max(s[0, 0], 0.0) / before) if before > 0 else 1.0
    return picks, first, ratio
