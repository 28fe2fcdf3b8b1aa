"""Emergence on tables: a sweep's results folder or any CSV/Parquet table of model results,
and the detector's output (the JSON document and the text summary). The detector itself is
``analysis.emergence``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.emergence import Emergence, MetricSpec, detect
from analysis.errors import UserError
from analysis.points import read_table
from analysis.records import EVALS, TRIALS, Status, is_capability, is_stderr, stderr_of

# the scales a sweep's capabilities are tested against (a loss axis: lower is more scale)
SWEEP_AXES = ((TRIALS.n_params, False), (TRIALS.data_units, False), (TRIALS.flops, False), (TRIALS.final_loss, True))
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
                 kinds: list[str] | None = None, group_col: str | None = None, loss_axis: bool = False,
                 bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str]]:
    """Emergence in a CSV/Parquet table of model results (one row per model or checkpoint)."""
    table, _ = read_table(source)
    if not y_cols:
        raise UserError("give at least one --y-col: the metric column(s) to test")
    specs = [MetricSpec(column=c, stderr_column=s, n_items=n, chance=ch, kind=k) for c, s, n, ch, k in zip(
        y_cols, _per_metric(stderr_cols, y_cols, "stderr-col"), _per_metric(n_items, y_cols, "n-items"),
        _per_metric(chance, y_cols, "chance"), _per_metric(kinds, y_cols, "metric-kind"))]
    return detect(table, x_col, specs, group_col=group_col, loss_axis=loss_axis, bootstrap=bootstrap, seed=seed)


def last_capability_values(evals: pd.DataFrame) -> pd.DataFrame:
    """Columns trial_id, metric, value: each trial's value of every capability metric (evals
    rows named TASK/NAME, their _stderr rows included) at its last evaluation point."""
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


def detect_sweep(folder: str, *, bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str]]:
    """Every capability metric of a sweep against N, D, C and the held-out loss."""
    trials, evals = read_table(folder)
    if evals is None:
        raise UserError(f"{folder}: no evals.parquet, where capability metrics are recorded")
    table = capability_table(trials, evals)
    metrics = sorted(c for c in table.columns if is_capability(c) and not is_stderr(c))
    specs = [MetricSpec(column=m, stderr_column=stderr_of(m) if stderr_of(m) in table.columns else None)
             for m in metrics]
    group = TRIALS.family if TRIALS.family in table.columns else None
    results: list[Emergence] = []
    warn: list[str] = []
    for axis, loss_axis in SWEEP_AXES:
        if axis in table.columns:
            r, w = detect(table, axis, specs, group_col=group, loss_axis=loss_axis, bootstrap=bootstrap, seed=seed)
            results += r
            warn += w
    return results, warn


def to_document(results: list[Emergence]) -> dict:
    """The JSON document: {"results": [...]} with plain floats (no NaN or inf)."""
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
    return {"results": [clean(r.to_json()) for r in results]}


def summary(results: list[Emergence]) -> str:
    lines = []
    for r in results:
        head = f"{r.group} {r.metric} vs {r.axis} ({r.n_points} points): {r.verdict}"
        if r.threshold:
            t = r.threshold
            head += f"; onset {t['x']:.4g} [{t['low']:.4g}, {t['high']:.4g}]"
        if r.midpoint is not None:
            head += f"; midpoint {r.midpoint:.4g}"
        if r.width_decades is not None:
            head += f", width {r.width_decades:.2g} decades"
        lines.append(head)
        scores = {k: v for k, v in r.scores.items() if k in ("linearity", "breakthroughness", "best_model")}
        lines.append("    " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in scores.items() if v is not None))
        lines += [f"    caveat: {c}" for c in r.caveats]
    return "\n".join(lines)
