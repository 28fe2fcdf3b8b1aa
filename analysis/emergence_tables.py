"""Emergence on tables: a sweep's results folder or any CSV/Parquet table of model results,
and the detector's output (the JSON document and the text summary). The detector itself is
``analysis.emergence``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.emergence import STDERR_SUFFIX, Emergence, MetricSpec, detect
from analysis.points import AnalysisError, read_table

SWEEP_AXES = (("n_params", False), ("tokens", False), ("flops", False), ("final_loss", True))


def _per_metric(values: list | None, metrics: list[str], name: str) -> list:
    """A flag given once applies to every metric; given k times, one per metric in order."""
    if not values:
        return [None] * len(metrics)
    if len(values) == 1:
        return values * len(metrics)
    if len(values) != len(metrics):
        raise AnalysisError(f"--{name} is given {len(values)} times for {len(metrics)} --y-col: give it once, "
                            "or once per --y-col in the same order")
    return list(values)


def detect_table(source: str, *, x_col: str, y_cols: list[str], stderr_cols: list[str] | None = None,
                 n_items: list[float] | None = None, chance: list[float] | None = None,
                 kinds: list[str] | None = None, group_col: str | None = None, loss_axis: bool = False,
                 bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str]]:
    """Emergence in a CSV/Parquet table of model results (one row per model or checkpoint)."""
    table, _ = read_table(source)
    if not y_cols:
        raise AnalysisError("give at least one --y-col: the metric column(s) to test")
    specs = [MetricSpec(column=c, stderr_column=s, n_items=n, chance=ch, kind=k) for c, s, n, ch, k in zip(
        y_cols, _per_metric(stderr_cols, y_cols, "stderr-col"), _per_metric(n_items, y_cols, "n-items"),
        _per_metric(chance, y_cols, "chance"), _per_metric(kinds, y_cols, "metric-kind"))]
    return detect(table, x_col, specs, group_col=group_col, loss_axis=loss_axis, bootstrap=bootstrap, seed=seed)


def last_capability_values(evals: pd.DataFrame) -> pd.DataFrame:
    """Columns trial_id, metric, value: each trial's value of every capability metric (evals
    rows named TASK/NAME, their _stderr rows included) at its last evaluation point."""
    cap = evals[evals["metric"].astype(str).str.contains("/", regex=False)]
    last = cap.sort_values("step").groupby(["trial_id", "metric"], as_index=False).last()
    return last[["trial_id", "metric", "value"]]


def capability_table(trials: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """One row per completed trial: its scale columns and the last value of every capability
    metric."""
    last = last_capability_values(evals)
    if last.empty:
        raise AnalysisError("no capability metrics in evals.parquet (rows whose metric is TASK/NAME, "
                            "e.g. addition/exact_match): the sweep recorded no capability probes")
    wide = last.pivot(index="trial_id", columns="metric", values="value").reset_index()
    done = trials[trials["status"] == "completed"]
    cols = ["trial_id", "family"] + [c for c, _ in SWEEP_AXES]
    return done[[c for c in cols if c in done.columns]].merge(wide, on="trial_id")


def detect_sweep(folder: str, *, bootstrap: int = 200, seed: int = 0) -> tuple[list[Emergence], list[str]]:
    """Every capability metric of a sweep against N, D, C and the held-out loss."""
    trials, evals = read_table(folder)
    if evals is None:
        raise AnalysisError(f"{folder}: no evals.parquet, where capability metrics are recorded")
    table = capability_table(trials, evals)
    metrics = sorted(c for c in table.columns if "/" in str(c) and not str(c).endswith(STDERR_SUFFIX))
    specs = [MetricSpec(column=m, stderr_column=m + STDERR_SUFFIX if m + STDERR_SUFFIX in table.columns else None)
             for m in metrics]
    group = "family" if "family" in table.columns else None
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
