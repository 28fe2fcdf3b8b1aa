"""Emergence on tables: many series at once (:func:`detect`: each group and metric, sharing
the level, with the caveats that compare a task's metrics), a sweep's results folder or any
CSV/Parquet table of model results, and the detector's output (the JSON document and the
text summary). The verdict on one series is ``analysis.emergence``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.allocation import frontier
from analysis.emergence import LEVEL, MIN_POINTS, Emergence, MetricSpec, analyse_series
from analysis.errors import UserError
from analysis.points import read_table
from analysis.records import (
    EVALS,
    TRIALS,
    ProbeMetric,
    Status,
    Verdict,
    answer_tokens_of,
    capability_name,
    capability_task,
    chance_of,
    is_capability,
    is_probe_metric,
    stderr_of,
)

# the scales a sweep's capabilities are tested against (a loss axis: lower is more scale)
SWEEP_AXES = ((TRIALS.n_params, False), (TRIALS.data_units, False), (TRIALS.flops, False), (TRIALS.final_loss, True))
CORRECTION = "Bonferroni: each series' step test runs at level / tests"
EMERGENCE_FILE = "emergence.json"  # the detector's document, beside the tables (the report draws it)


def _per_metric(values: list | None, metrics: list[str], name: str) -> list:
    """A flag given once applies to every metric; given k times, one per metric in order."""
    if not values:
        return [None] * len(metrics)
    if len(values) == 1:
        return values * len(metrics)
    if len(values) != len(metrics):
        raise UserError(f"--{name} is given {len(values)} times for {len(metrics)} --y-col: give it once, "
                            "or once per --y-col in the same order")
    return list(values)


def _groups(table: pd.DataFrame, group_col: str | None):
    """(name, rows) of each group of ``table``: every value of ``group_col``, or one group, "all"."""
    return table.groupby(group_col, sort=True) if group_col else [("all", table)]


def series_count(table: pd.DataFrame, x_col: str, metrics: list[MetricSpec], *, group_col: str | None = None,
                 loss_axis: bool = False) -> int:
    """How many (group, metric) series of ``table`` have enough distinct scales to be tested."""
    count = 0
    for _, rows in _groups(table, group_col):
        x = pd.to_numeric(rows[x_col], errors="coerce")
        for spec in metrics:
            ok = np.isfinite(x) & np.isfinite(pd.to_numeric(rows[spec.column], errors="coerce"))
            ok &= True if loss_axis else x > 0
            count += int(x[ok].nunique() >= MIN_POINTS)
    return count


def detect(table: pd.DataFrame, x_col: str, metrics: list[MetricSpec], *, group_col: str | None = None,
           loss_axis: bool = False, level: float = LEVEL, tests: int | None = None, subset: str = "all rows",
           bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str]]:
    """(one result per group and metric, warnings). Each series' step test runs at
    ``level / tests``; ``tests`` defaults to the number of series tested here. Bad tables
    raise UserError."""
    needed = [x_col] + [m.column for m in metrics] + [m.stderr_column for m in metrics if m.stderr_column]
    needed += [group_col] if group_col else []
    if not 0 < level < 1:
        raise UserError(f"--level {level}: expected a probability between 0 and 1 (default {LEVEL})")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UserError(f"column(s) {missing} not in the table (columns: {list(table.columns)})")
    for col in set(needed) - {group_col}:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any():
            raise UserError(f"column {col!r} holds non-numeric values (e.g. {table[col][bad].iloc[0]!r}); "
                            "expected numbers")
    if tests is None:
        tests = series_count(table, x_col, metrics, group_col=group_col, loss_axis=loss_axis)
    results: list[Emergence] = []
    warn: list[str] = []
    for name, rows in _groups(table, group_col):
        x = pd.to_numeric(rows[x_col]).to_numpy(float)
        mine = []
        for spec in metrics:
            se = pd.to_numeric(rows[spec.stderr_column]).to_numpy(float) if spec.stderr_column else None
            r = analyse_series(x, pd.to_numeric(rows[spec.column]).to_numpy(float), spec, group=str(name), axis=x_col,
                               se=se, loss_axis=loss_axis, level=level, tests=tests, subset=subset,
                               bootstrap=bootstrap, seed=seed)
            mine.append((spec, r))
            warn += [f"{name}/{spec.column}: {c}" for c in r.caveats if "dropped" in c]
        values = {spec.column: _by_scale(x, pd.to_numeric(rows[spec.column]).to_numpy(float)) for spec in metrics}
        _task_caveats(mine, values)
        results += [r for _, r in mine]
    return results, warn


def _by_scale(x: np.ndarray, y: np.ndarray) -> pd.Series:
    """A metric's mean at each scale (the points the detector tested)."""
    ok = np.isfinite(x) & np.isfinite(y)
    return pd.Series(y[ok]).groupby(x[ok]).mean()


MIRAGE_EXPLAINED = 0.75  # the per-token metric reproduces at least this share of the jump: metric-induced
MIRAGE_UNEXPLAINED = 0.25  # at most this share: not metric-induced
# the per-token metrics of the mirage check, in the order it prefers them: (how the caveat writes
# the per-token probability, that probability from the metric)
PER_TOKEN = {ProbeMetric.TOKEN_ACCURACY: (ProbeMetric.TOKEN_ACCURACY.value, lambda v: v),
             ProbeMetric.LOGPROB: (f"exp({ProbeMetric.LOGPROB.value})", np.exp)}


def mirage(exact: pd.Series, per_token: pd.Series, answer_tokens: float, low: float, high: float) -> float | None:
    """The share of exact match's jump from scale ``low`` to ``high`` that the per-token
    metric compounded over the answer reproduces: (p(high) − p(low)) / (em(high) − em(low))
    with p = per_token^answer_tokens (Schaeffer et al. 2023). ``per_token`` is a token
    accuracy, or exp(log-prob per token)."""
    if low not in exact.index or high not in exact.index or low not in per_token.index or high not in per_token.index:
        return None
    jump = float(exact[high] - exact[low])  # on a loss axis, high is the smaller scale: the ratio's sign cancels
    if jump == 0:
        return None
    predicted = float(per_token[high] ** answer_tokens - per_token[low] ** answer_tokens)
    return round(predicted / jump, 4)


def _task_caveats(pairs: list[tuple[MetricSpec, Emergence]], values: dict[str, pd.Series]) -> None:
    """The caveats that compare metrics, task by task (a task is ``TASK`` of ``TASK/NAME``;
    columns without a task are all one unnamed task): the mirage check, and generic learning."""
    tasks: dict[str, list[tuple[MetricSpec, Emergence]]] = {}
    for spec, r in pairs:
        tasks.setdefault(capability_task(spec.column), []).append((spec, r))
    for task_pairs in tasks.values():
        continuous = [(s, r) for s, r in task_pairs if not s.discontinuous]
        for spec, r in task_pairs:
            if spec.discontinuous and r.verdict.jumps:
                _metric_caveat(spec, r, continuous, values)
    jumping = [t for t, ps in tasks.items() if any(r.verdict.jumps for _, r in ps)]
    if len(tasks) >= 2 and len(jumping) == len(tasks):
        for _, r in pairs:
            if r.verdict.jumps:
                r.caveats.append(f"every task given ({', '.join(sorted(tasks))}) jumps at these runs: generic "
                                 "learning, not a task-specific capability?")


def _metric_caveat(spec: MetricSpec, r: Emergence, continuous: list[tuple[MetricSpec, Emergence]],
                   values: dict[str, pd.Series]) -> None:
    """Is a discontinuous metric's jump induced by the metric? Quantitative when the answer
    length and a per-token metric of the same task are known, else read from the continuous
    metrics' own verdicts."""
    by_name = {capability_name(s.column): s.column for s, _ in continuous}
    per_token = {m: by_name[m] for m in PER_TOKEN if m in by_name}
    ell = spec.answer_tokens
    if ell and r.threshold and per_token:
        low, high = r.threshold["low"], r.threshold["high"]
        shares = {m: mirage(values[spec.column], PER_TOKEN[m][1](values[column]), ell, low, high)
                  for m, column in per_token.items()}
        r.scores.update({f"mirage_{m}": v for m, v in shares.items()})
        name, share = next(((m, v) for m, v in shares.items() if v is not None), (None, None))
        if share is not None:
            what = (f"{PER_TOKEN[name][0]}^{ell:g} (the per-token metric compounded over the answer) reproduces "
                    f"{share:.0%} of the jump across [{low:.4g}, {high:.4g}]")
            if share >= MIRAGE_EXPLAINED:
                r.caveats.append(f"metric-induced (Schaeffer et al. 2023): {what}")
            elif share > MIRAGE_UNEXPLAINED:
                r.caveats.append(f"partly metric-induced (Schaeffer et al. 2023): {what}; the rest is not the "
                                 "per-token improvement compounding")
            else:
                r.caveats.append(f"not metric-induced (Schaeffer et al. 2023): {what}")
            return
    also = [s.column for s, o in continuous if o.verdict.jumps]
    smooth = [s.column for s, o in continuous if o.verdict == Verdict.SMOOTH]
    if also:
        r.caveats.append(f"the continuous {', '.join(also)} of the same task jump(s) too: evidence against a "
                         "metric artefact")
    elif smooth:
        r.caveats.append(f"metric-induced? the discontinuous {spec.column} jumps while the continuous "
                         f"{', '.join(smooth)} of the same task improve(s) smoothly (Schaeffer et al. 2023)")
    else:
        r.caveats.append(f"the call rests on a discontinuous (exact-match) metric, {spec.column}, with no "
                         "continuous metric of the same task to check it against")


def detect_table(source: str, *, x_col: str, y_cols: list[str], stderr_cols: list[str] | None = None,
                 n_items: list[float] | None = None, chance: list[float] | None = None,
                 kinds: list[str] | None = None, answer_tokens: list[float] | None = None,
                 group_col: str | None = None, loss_axis: bool = False, level: float = LEVEL,
                 bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str], int]:
    """Emergence in a CSV/Parquet table of model results (one row per model or checkpoint);
    (results, warnings, number of series tested)."""
    table, _ = read_table(source)
    if not y_cols:
        raise UserError("give at least one --y-col: the metric column(s) to test")
    specs = [MetricSpec(column=c, stderr_column=s, n_items=n, chance=ch, kind=k, answer_tokens=a)
             for c, s, n, ch, k, a in zip(
                 y_cols, _per_metric(stderr_cols, y_cols, "stderr-col"), _per_metric(n_items, y_cols, "n-items"),
                 _per_metric(chance, y_cols, "chance"), _per_metric(kinds, y_cols, "metric-kind"),
                 _per_metric(answer_tokens, y_cols, "answer-tokens"))]
    results, warn = detect(table, x_col, specs, group_col=group_col, loss_axis=loss_axis, level=level,
                           bootstrap=bootstrap, seed=seed)  # checks the columns, then counts the series itself
    tests = series_count(table, x_col, specs, group_col=group_col, loss_axis=loss_axis)
    return results, warn, tests


def last_capability_values(evals: pd.DataFrame) -> pd.DataFrame:
    """Columns trial_id, metric, value: each trial's value of every capability metric (evals
    rows named TASK/NAME, with their _stderr and _chance rows and TASK/answer_tokens) at its
    last evaluation point."""
    cap = evals[evals[EVALS.metric].map(is_capability)]
    last = cap.sort_values(EVALS.step).groupby([EVALS.trial_id, EVALS.metric], as_index=False).last()
    return last[[EVALS.trial_id, EVALS.metric, EVALS.value]]


def capability_table(trials: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """One row per completed trial: its scale columns and the last value of every capability
    metric."""
    last = last_capability_values(evals)
    if last.empty:
        raise UserError("no capability metrics in evals.parquet (rows whose metric is TASK/NAME, "
                            "e.g. addition/exact_match): the sweep recorded no capability probes")
    wide = last.pivot(index=EVALS.trial_id, columns=EVALS.metric, values=EVALS.value).reset_index()
    done = trials[trials[TRIALS.status] == Status.COMPLETED]
    cols = [TRIALS.trial_id, TRIALS.family] + [c for c, _ in SWEEP_AXES]
    return done[[c for c in cols if c in done.columns]].merge(wide, on=TRIALS.trial_id)


def _column_value(table: pd.DataFrame, column: str) -> float | None:
    """A per-task constant recorded beside the metrics (a chance level, an answer length)."""
    if column not in table.columns:
        return None
    values = pd.to_numeric(table[column], errors="coerce").dropna()
    return float(values.median()) if len(values) else None


def axis_subset(table: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, str]:
    """The trials a sweep's metrics are tested on against ``axis``, and what they are: as the
    fits do, N at the largest D, D at the largest N, C on the compute frontier (each trial
    with a lower held-out loss than every trial of less compute); every trial against the loss."""
    n, d = TRIALS.n_params, TRIALS.data_units
    if axis == n and d in table and table[d].nunique() > 1:
        top = table[d].max()
        return table[np.isclose(table[d], top, rtol=1e-6)], f"trials at the largest {d} ({top:.3g})"
    if axis == d and n in table and table[n].nunique() > 1:
        top = table[n].max()
        return table[np.isclose(table[n], top, rtol=1e-6)], f"trials at the largest {n} ({top:.3g})"
    if axis == TRIALS.flops and TRIALS.final_loss in table:
        ok = table[np.isfinite(table[TRIALS.flops]) & np.isfinite(table[TRIALS.final_loss])]
        on = frontier(ok[TRIALS.flops].to_numpy(float), ok[TRIALS.final_loss].to_numpy(float))
        return ok.iloc[on], f"the compute frontier ({len(on)} of {len(table)} trials)"
    return table, "all completed trials"


def detect_sweep(folder: str, *, level: float = LEVEL, bootstrap: int = 200,
                 seed: int = 0) -> tuple[list[Emergence], list[str], int]:
    """Every capability metric of a sweep against N, D, C and the held-out loss, each on its
    subset (:func:`axis_subset`), with the probes' standard errors, chance levels and answer
    lengths; (results, warnings, number of series tested)."""
    trials, evals = read_table(folder)
    if evals is None:
        raise UserError(f"{folder}: no evals.parquet, where capability metrics are recorded")
    table = capability_table(trials, evals)
    metrics = sorted(c for c in table.columns if is_probe_metric(c))
    specs = [MetricSpec(column=m, stderr_column=stderr_of(m) if stderr_of(m) in table.columns else None,
                        chance=_column_value(table, chance_of(m)),
                        answer_tokens=_column_value(table, answer_tokens_of(m))) for m in metrics]
    group = TRIALS.family if TRIALS.family in table.columns else None
    axes = [(axis, loss_axis, *axis_subset(table, axis)) for axis, loss_axis in SWEEP_AXES if axis in table.columns]
    tests = sum(series_count(rows, axis, specs, group_col=group, loss_axis=loss_axis)
                for axis, loss_axis, rows, _ in axes)
    results: list[Emergence] = []
    warn: list[str] = []
    for axis, loss_axis, rows, subset in axes:
        r, w = detect(rows, axis, specs, group_col=group, loss_axis=loss_axis, level=level, tests=max(tests, 1),
                      subset=subset, bootstrap=bootstrap, seed=seed)
        results += r
        warn += w
    return results, warn, tests


def to_document(results: list[Emergence], *, level: float = LEVEL, tests: int = 1) -> dict:
    """The JSON document: {"level", "tests", "correction", "results": [...]} with plain floats
    (no NaN or inf)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return float(v) if math.isfinite(float(v)) else None
        if isinstance(v, np.integer):
            return int(v)
        return v
    return {"level": level, "tests": tests, "correction": CORRECTION, "results": [clean(r.to_json()) for r in results]}


def summary(results: list[Emergence]) -> str:
    lines = []
    for r in results:
        head = f"{r.group} {r.metric} vs {r.axis} ({r.n_points} points, {r.subset}): {r.verdict}"
        if r.threshold:
            t = r.threshold
            head += f"; onset {t['x']:.4g} [{t['low']:.4g}, {t['high']:.4g}]"
        if r.midpoint is not None:
            head += f"; midpoint {r.midpoint:.4g}"
        if r.width_decades is not None:
            head += f", width {r.width_decades:.2g} decades"
        lines.append(head)
        scores = {k: v for k, v in r.scores.items() if k in ("linearity", "breakthroughness", "best_model")}
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in scores.items() if v is not None)
        lines += [f"    {shown}"] if shown else []
        lines += [f"    caveat: {c}" for c in r.caveats]
    return "\n".join(lines)
