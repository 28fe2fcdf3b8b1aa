"""Task-performance prediction: from a ladder's losses to a larger model's accuracy on a task,
in two steps (Bhagia et al. 2024, "Establishing Task Scaling Laws via Compute-Efficient Model
Ladders"):

1. **Task loss as a law of (N, D)**, fitted on each run's final checkpoint by the fitter of
   ``scalinglab fit``: Chinchilla L = E + A/N^α + B/D^β, or on a ladder with fewer than 3
   distinct D the law in N alone. With a general loss (``via``: loss-to-loss, Brandfonbrener
   et al. 2024) the general loss gets that law, and the task loss follows it as a shifted
   power law, task = E_t + K·(L − E)^κ, E the general law's irreducible loss.
2. **Accuracy as a sigmoid of task loss**, acc = floor + height / (1 + exp((L − mid)/scale)):
   the floor at chance when it is known (else fitted, ≥ 0), the ceiling floor + height ≤ 1,
   fitted on every checkpoint of every run after its earliest ``skip_early`` fraction. With
   ``SigmoidAxis.LOG_LOSS`` the sigmoid is of log L instead.

Intervals come from K bootstrap resamples of the runs (a run's checkpoints stay together):
each resample refits both steps, and a prediction's interval holds the 2.5–97.5th percentiles
of its K chained values. The sigmoid and the loss-to-loss curve are fitted by
``analysis.task_models`` (variable projection, vectorised over the resamples).

Two checks say when not to trust a prediction:
- **noise**: the checkpoint-to-checkpoint spread of accuracy in each run's last part (the
  residual sd about a line in D over its last ``TAIL_FRACTION`` of training, with 3 or more
  checkpoints there), against the spread (sd) of the runs' final accuracies across the
  ladder; below ``SNR_MIN`` the
  ladder's accuracies are mostly noise and the task is marked ``predictable: false``
  (the signal-to-noise view of Heineman et al. 2025, "Signal and Noise");
- **reach**: the share of the sigmoid's rise the ladder reaches (the curve at its lowest task
  loss) against the share a target needs, by each bootstrap draw's own curve; where the upper
  end of the difference's 95% interval is above ``REACH_GAP``, the target's accuracy is read
  off a part of the curve no checkpoint constrains, and the prediction says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.compute import SIX_ND, FlopsPerUnit
from analysis.errors import UserError
from analysis.laws import LAWS, fit_lse_law, law_value, resample_weights, split_of
from analysis.points import Points
from analysis.records import Closed
from analysis.results import FitResult, Interval
from analysis.task_models import falling, fit_loss_to_loss, fit_sigmoid, loss_to_loss, sigmoid

SKIP_EARLY = 0.1  # step 2 drops each run's checkpoints before this fraction of its final D
TAIL_FRACTION = 0.3  # the noise check's "last part" of a run: D from (1 - this) x its final D
SNR_MIN = 3.0  # below this, the ladder's spread of accuracy is too close to checkpoint noise
REACH_GAP = 0.3  # a target that may need this much more of the sigmoid's rise than the ladder reaches is warned about
HELD_OUT_SHARE = 0.1  # the held-out check leaves out this share of the runs (at least one), largest C first
SIGMOID = ("floor", "height", "mid", "scale")
LOSS_TO_LOSS = ("E_task", "K", "kappa")


class SigmoidAxis(Closed):
    """What step 2's sigmoid is a function of (``scalinglab task --sigmoid-in``)."""

    LOSS = "loss", "the task loss itself, as Bhagia et al. 2024 (the default)"
    LOG_LOSS = "log-loss", ("the log of the task loss: the curve reaches its ceiling only as the loss goes to 0, "
                            "as exact match does on a task a model masters (docs/tasks.md)")

    def x(self, loss):
        loss = np.asarray(loss, dtype=float)
        return np.log(loss) if self is SigmoidAxis.LOG_LOSS else loss

    @property
    def label(self) -> str:
        return "log(task_loss)" if self is SigmoidAxis.LOG_LOSS else "task_loss"


@dataclass
class Ladder:
    """One task's checkpoints: a frame with columns ``run``, ``step``, ``N``, ``D``, ``C``,
    ``loss`` (the task loss), ``acc``; for loss-to-loss ``general`` (the general loss); and
    where recorded ``stderr``, the accuracy's standard error over the task's items."""

    task: str
    frame: pd.DataFrame
    chance: float | None = None
    flops: FlopsPerUnit = SIX_ND
    dropped: int = 0
    warnings: list[str] = field(default_factory=list)

    def finals(self) -> pd.DataFrame:
        """Each run's final checkpoint: one row per run, sorted by run."""
        f = self.frame.sort_values(["run", "step"]).groupby("run", sort=True).tail(1)
        return f.sort_values("run").reset_index(drop=True)


# --- the two steps together -------------------------------------------------------------------

@dataclass
class TwoStep:
    """Both steps fitted, with their bootstrap draws (None without a bootstrap)."""

    law: FitResult  # the task loss's law, or with ``via`` the general loss's
    sigmoid: np.ndarray  # [4]
    sigmoid_draws: np.ndarray | None  # [K, 4]
    l2l: np.ndarray | None = None  # [3] loss-to-loss, with ``via``
    l2l_draws: np.ndarray | None = None
    axis: SigmoidAxis = SigmoidAxis.LOSS

    def task_loss(self, x: dict, draws: bool = False):
        """Task loss at ``x`` (N, D as the law needs; floats, or [K] arrays of per-draw values
        when ``draws``): a float, or [K] draws."""
        if draws:
            params = {k: np.asarray(v, float) for k, v in self.law.samples.items() if k in self.law.params}
        else:
            params = {k: v.value for k, v in self.law.params.items()}
        value = law_value(self.law.law, params, **x)
        if self.l2l is None:
            return value
        e = params.get("E", 0.0)
        return loss_to_loss(self.l2l_draws if draws else self.l2l, value, e)

    def accuracy(self, task_loss, draws: bool = False):
        """Accuracy at ``task_loss``: by the fitted sigmoid (a float for a float), or with
        ``draws`` by each draw's own at its own loss ([K] losses)."""
        if draws:
            return sigmoid(self.sigmoid_draws, self.axis.x(task_loss))
        value = sigmoid(self.sigmoid, self.axis.x(task_loss))
        return float(value) if np.ndim(value) == 0 else value


def law_for(finals: pd.DataFrame) -> tuple[str | None, str]:
    """(the step-1 law, why) for a ladder's final checkpoints: Chinchilla with >= 3 distinct N
    and D, else the law in N (or D) alone, else None."""
    n, d = finals["N"].nunique(), finals["D"].nunique()
    if n >= 3 and d >= 3:
        return "chinchilla", "L(N, D) on each run's final checkpoint"
    if n >= 3:
        return "power_N", f"only {d} distinct D: L(N) at the ladder's D, which a target's D cannot move"
    if d >= 3:
        return "power_D", f"only {n} distinct N: L(D) at the ladder's N, which a target's N cannot move"
    return None, f"needs >= 3 distinct N or D among the runs (has {n} N and {d} D)"


def fit_two_steps(ladder: Ladder, runs: np.ndarray, *, law: str, via: bool, bootstrap: int, seed: int,
                  skip_early: float, check_resamples: int = 4, axis: SigmoidAxis = SigmoidAxis.LOSS) -> TwoStep:
    """Both steps on the runs ``runs`` (indices into ``ladder.finals()``), with ``bootstrap``
    resamples of those runs shared by the two steps."""
    finals = ladder.finals().iloc[runs].reset_index(drop=True)
    rows = _step2_rows(ladder, skip_early)
    rows = rows[rows["run"].isin(finals["run"])]
    run_index = pd.Index(finals["run"]).get_indexer(rows["run"])  # checkpoint -> its run's position
    pts = Points(pd.DataFrame({"N": finals["N"], "D": finals["D"], "C": finals["C"],
                               "loss": finals["general" if via else "loss"]}), flops=ladder.flops)
    # one resample of the runs per draw, for both steps: [K, runs] copies of each run
    w_runs = resample_weights(np.arange(len(finals)), bootstrap, seed) if bootstrap else None
    fit = fit_lse_law(LAWS[law], pts, bootstrap=bootstrap, seed=seed, held_out=False,
                      check_resamples=check_resamples, weights=w_runs)
    x, acc = axis.x(rows["loss"]), rows["acc"].to_numpy(float)
    sig = fit_sigmoid(x, acc, np.ones((1, len(rows))), ladder.chance)[0]
    sig_draws = None if w_runs is None else fit_sigmoid(x, acc, w_runs[:, run_index], ladder.chance)
    out = TwoStep(fit, sig, sig_draws, axis=axis)
    if via:
        general, task = finals["general"].to_numpy(float), finals["loss"].to_numpy(float)
        e = fit.params["E"].value if "E" in fit.params else 0.0
        out.l2l = fit_loss_to_loss(general, task, np.array([e]), np.ones((1, len(finals))))[0]
        if w_runs is not None:
            e_draws = np.asarray(fit.samples["E"], float) if "E" in fit.params else np.zeros(bootstrap)
            out.l2l_draws = fit_loss_to_loss(general, task, e_draws, w_runs)
    return out


def _step2_rows(ladder: Ladder, skip_early: float) -> pd.DataFrame:
    f = ladder.frame
    final_d = f.groupby("run")["D"].transform("max")
    return f[f["D"] >= skip_early * final_d].reset_index(drop=True)


# --- the checks ----------------------------------------------------------------------------

def noise_check(ladder: Ladder) -> dict:
    """Checkpoint noise against the ladder's spread (module docstring). Runs with fewer than 3
    checkpoints in their last part (a sweep's log-spaced evaluation points) cannot show it;
    when none can, the checkpoints' recorded item standard error (``stderr``) stands in."""
    ss, dof, measured = 0.0, 0, 0
    for _, run in ladder.frame.sort_values("step").groupby("run"):
        tail = run[run["D"] >= (1 - TAIL_FRACTION) * run["D"].max()]
        if len(tail) < 3 or tail["D"].nunique() < 2:
            continue
        x, y = tail["D"].to_numpy(float), tail["acc"].to_numpy(float)
        resid = y - np.polyval(np.polyfit(x / x.max(), y, 1), x / x.max())
        ss, dof, measured = ss + float(resid @ resid), dof + len(tail) - 2, measured + 1
    finals = ladder.finals()
    spread = float(np.std(finals["acc"], ddof=1)) if len(finals) > 1 else float("nan")
    out = {"checkpoint_sd": None, "source": None, "ladder_sd": spread, "snr": None, "snr_min": SNR_MIN,
           "runs_measured": measured, "tail_fraction": TAIL_FRACTION}
    if dof > 0:
        out.update(checkpoint_sd=math.sqrt(ss / dof), source="checkpoint-to-checkpoint residuals about a line in D "
                   f"over each run's last {TAIL_FRACTION:.0%} of training")
    elif "stderr" in finals and finals["stderr"].notna().any():
        out.update(checkpoint_sd=float(np.sqrt(np.nanmean(finals["stderr"] ** 2))),
                   source=f"the items' standard error at the final checkpoints (no run has 3 checkpoints in its last "
                   f"{TAIL_FRACTION:.0%} of training; checkpoint-to-checkpoint noise can only be larger)")
    if out["checkpoint_sd"] is not None:
        out["snr"] = spread / out["checkpoint_sd"] if out["checkpoint_sd"] > 0 else float("inf")
    return out


def _reach(two: TwoStep, ladder_loss: float, target_loss: float, target_draws: np.ndarray | None) -> dict:
    """The share of the sigmoid's rise at the ladder's lowest task loss and at the target's (by
    the fitted curve), and the upper end (97.5th percentile over the draws, each its own curve
    and target loss) of how much more of the rise the target needs."""
    x_ladder, x_target = two.axis.x(ladder_loss), two.axis.x(target_loss)
    _, _, mid, scale = two.sigmoid
    ladder, target = float(falling(x_ladder, mid, scale)), float(falling(x_target, mid, scale))
    gap_high = target - ladder
    if target_draws is not None:
        m, s = two.sigmoid_draws[:, 2], two.sigmoid_draws[:, 3]
        gap_high = float(np.nanpercentile(falling(two.axis.x(target_draws), m, s) - falling(x_ladder, m, s), 97.5))
    return {"ladder": ladder, "target": target, "gap_high": gap_high}


# --- one task, start to end ----------------------------------------------------------------

def predict_task(ladder: Ladder, targets: list[dict], *, via: bool = False, bootstrap: int = 1000, seed: int = 0,
                 skip_early: float = SKIP_EARLY, held_out: bool = True, check_resamples: int = 4,
                 sigmoid_in: SigmoidAxis | str = SigmoidAxis.LOSS) -> dict:
    """Fit both steps to ``ladder`` and predict ``targets`` ({"N", "D"} or {"C"}): the task's
    JSON document (docs/tasks.md). ``check_resamples``: step 1's check of its warm-started
    bootstrap refits against cold grid fits (``analysis.laws``; about 1 s each)."""
    if not 0 <= skip_early < 1:
        raise UserError(f"--skip-early {skip_early}: expected a fraction in [0, 1)")
    finals = ladder.finals()
    doc = {"task": ladder.task, "n_runs": int(len(finals)), "n_checkpoints": int(len(ladder.frame)),
           "dropped": ladder.dropped, "chance": ladder.chance, "step1": None, "step2": None,
           "noise": noise_check(ladder), "predictable": True, "reasons": [], "warnings": list(ladder.warnings),
           "predictions": [], "held_out": None}
    law, why = law_for(finals)
    if law is None or len(finals) < len(LAWS[law].param_names) + 1:
        doc["predictable"] = False
        doc["reasons"].append(f"step 1 cannot be fitted: {why if law is None else f'{len(finals)} runs'}")
        return doc
    noise = doc["noise"]
    if noise["snr"] is None:
        doc["warnings"].append(f"noise not checked: no run has 3 checkpoints in its last {TAIL_FRACTION:.0%} of "
                               "training, and the table records no standard error")
    elif noise["snr"] < SNR_MIN:
        doc["predictable"] = False
        doc["reasons"].append(
            f"too noisy: the runs' final accuracies spread by {noise['ladder_sd']:.3g} (sd), only "
            f"{noise['snr']:.2f}x the checkpoint-to-checkpoint noise {noise['checkpoint_sd']:.3g} (needs {SNR_MIN:g}x)")
    axis = SigmoidAxis(sigmoid_in)
    two = fit_two_steps(ladder, np.arange(len(finals)), law=law, via=via, bootstrap=bootstrap, seed=seed,
                        skip_early=skip_early, check_resamples=check_resamples, axis=axis)
    rows = _step2_rows(ladder, skip_early)
    doc["step1"] = _step1_doc(two, law, why, finals, via)
    fitted = two.accuracy(rows["loss"].to_numpy(float))
    acc = rows["acc"].to_numpy(float)
    doc["step2"] = {
        "form": f"floor + height / (1 + exp(({axis.label} - mid) / scale))", "sigmoid_in": axis.value,
        "params": {k: Interval.from_samples(two.sigmoid[i], None if two.sigmoid_draws is None
                                            else two.sigmoid_draws[:, i]).to_json() for i, k in enumerate(SIGMOID)},
        "floor_fixed": ladder.chance is not None, "checkpoints": int(len(rows)), "skip_early": skip_early,
        "r2": _r2(acc, fitted), "task_loss_range": [float(rows["loss"].min()), float(rows["loss"].max())],
        "accuracy_range": [float(acc.min()), float(acc.max())],
    }
    for target in targets:
        doc["predictions"].append(_prediction(two, law, via, target, ladder, finals, doc["warnings"]))
    doc["step2"]["curve"] = _curve(two, rows["loss"].to_numpy(float), doc["predictions"])
    if held_out:
        doc["held_out"] = _held_out(ladder, finals, law=law, via=via, skip_early=skip_early, axis=axis)
    return doc


def _step1_doc(two: TwoStep, law: str, why: str, finals: pd.DataFrame, via: bool) -> dict:
    fit = two.law
    out = {"law": law, "fitted_on": why, "params": {k: v.to_json() for k, v in fit.params.items()},
           "r2_log": fit.r2_log, "warnings": fit.warnings}
    if via:
        task = finals["loss"].to_numpy(float)
        pred = two.task_loss({v: finals[v].to_numpy(float) for v in LAWS[law].variables})
        out = {"law": "loss_to_loss", "form": "task_loss = E_task + K * (general_loss - E)^kappa",
               "params": {k: Interval.from_samples(two.l2l[i], None if two.l2l_draws is None
                                                   else two.l2l_draws[:, i]).to_json()
                          for i, k in enumerate(LOSS_TO_LOSS)},
               "r2_log": _r2(np.log(task), np.log(pred)), "warnings": [], "general": out}
    return out


def _prediction(two: TwoStep, law: str, via: bool, target: dict, ladder: Ladder, finals: pd.DataFrame,
                warnings: list[str]) -> dict:
    point: dict = {}
    if {"N", "D"} <= set(target):
        point = {"N": target["N"], "D": target["D"], "C": float(ladder.flops(target["N"])) * target["D"]}
        x = {v: point[v] for v in LAWS[law].variables}
        x_draws = x
    elif "C" in target and law == "chinchilla":  # split compute-optimally, each draw by its own law
        c = np.array([target["C"]])
        split = split_of(two.law, c)
        point = {"N": float(split["N"][0]), "D": float(split["D"][0]), "C": float(target["C"])}
        x = {"N": point["N"], "D": point["D"]}
        drawn = split_of(two.law, c, draws=True)
        x_draws = x if drawn is None else {"N": drawn["N"][:, 0], "D": drawn["D"][:, 0]}
    else:
        asked = ",".join(f"{k}={v:g}" for k, v in target.items())
        raise UserError(f"--predict {asked}: give N and D (a C alone is split by step 1's Chinchilla law; "
                        f"{ladder.task}'s step 1 is {law})")
    loss = float(two.task_loss(x))
    acc = two.accuracy(loss)
    out = {**point, "task_loss": Interval.from_samples(loss, None), "accuracy": Interval.from_samples(acc, None)}
    if two.sigmoid_draws is not None:
        loss_draws = two.task_loss(x_draws, draws=True)
        out["task_loss"] = Interval.from_samples(loss, loss_draws)
        out["accuracy"] = Interval.from_samples(acc, two.accuracy(loss_draws, draws=True))
    reach = {v: point[v] / float(finals[v].max()) for v in ("N", "D", "C")}
    out["extrapolation"] = max(reach.values())
    out["extrapolation_by_axis"] = reach
    share = _reach(two, float(ladder.frame["loss"].min()), loss, None if two.sigmoid_draws is None else loss_draws)
    out["sigmoid_share"] = share
    if share["gap_high"] > REACH_GAP:
        warnings.append(
            f"target N={point['N']:.3g}, D={point['D']:.3g}: it may need up to {share['gap_high']:.0%} more of the "
            f"sigmoid's rise than the ladder reaches (fitted: {share['target']:.0%} against {share['ladder']:.0%}): "
            "the accuracy is read off a part of the curve no checkpoint constrains (its interval says how little "
            "the ladder pins it)")
    if law != "chinchilla":
        fixed = "D" if law == "power_N" else "N"
        if not np.isclose(point[fixed], finals[fixed].max(), rtol=0.05):
            warnings.append(f"target {fixed}={point[fixed]:.3g}: the ladder has one {fixed} "
                            f"({finals[fixed].max():.3g}); step 1's {law} law cannot say what another {fixed} does")
    return {k: v.to_json() if isinstance(v, Interval) else v for k, v in out.items()}


def _curve(two: TwoStep, loss: np.ndarray, predictions: list[dict]) -> dict:
    """The sigmoid over the ladder's task losses and the predictions', with its 95% band."""
    lows = [p["task_loss"]["low"] for p in predictions if p["task_loss"]["low"] is not None]
    grid = np.linspace(min([float(loss.min())] + lows), float(loss.max()), 60)
    if two.axis is SigmoidAxis.LOG_LOSS:
        grid = np.geomspace(grid[0], grid[-1], len(grid))
    out = {"task_loss": grid.tolist(), "accuracy": two.accuracy(grid).tolist(), "low": None, "high": None}
    if two.sigmoid_draws is not None:
        low, high = np.percentile(sigmoid(two.sigmoid_draws[:, None, :], two.axis.x(grid)), [2.5, 97.5], axis=0)
        out.update(low=low.tolist(), high=high.tolist())
    return out


def _held_out(ladder: Ladder, finals: pd.DataFrame, *, law: str, via: bool, skip_early: float,
              axis: SigmoidAxis) -> dict | None:
    """Refit both steps without the largest-compute runs and predict their final task loss and
    accuracy at their own (N, D)."""
    order = np.argsort(finals["C"].to_numpy(float), kind="stable")
    n_out = max(1, int(len(finals) * HELD_OUT_SHARE))
    train, test = order[:-n_out], order[-n_out:]
    train_finals = finals.iloc[train]
    if law_for(train_finals)[0] != law or len(train) < len(LAWS[law].param_names) + 2:
        return None
    two = fit_two_steps(ladder, train, law=law, via=via, bootstrap=0, seed=0, skip_early=skip_early,
                        check_resamples=0, axis=axis)
    held = finals.iloc[test]
    loss = np.atleast_1d(two.task_loss({v: held[v].to_numpy(float) for v in LAWS[law].variables}))
    acc = two.accuracy(loss)
    return {"n_held_out": int(n_out), "min_C_held_out": float(held["C"].min()),
            "task_loss_max_abs_rel_error": float(np.max(np.abs(loss / held["loss"].to_numpy(float) - 1))),
            "accuracy_max_abs_error": float(np.max(np.abs(acc - held["acc"].to_numpy(float)))),
            "accuracy_mean_abs_error": float(np.mean(np.abs(acc - held["acc"].to_numpy(float))))}


def _r2(y: np.ndarray, fitted: np.ndarray) -> float | None:
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - fitted) ** 2).sum()) / ss if ss > 0 else None
