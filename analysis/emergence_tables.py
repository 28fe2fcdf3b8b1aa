"""Emergence on tables: a sweep's results folder or any CSV/Parquet table of model results,
and the detector's output (the JSON document and the text summary). The detector itself is
``analysis.emergence``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.allocation import frontier
from analysis.emergence import LEVEL, Emergence, MetricSpec, detect, series_count
from analysis.errors import UserError
from analysis.points import read_table
from analysis.records import (
    EVALS,
    TRIALS,
    Status,
    answer_tokens_of,
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
                           bootstrap=bootstrap, seed=seed)
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
