"""The emergence panel: capability metrics against scale, discontinuous and continuous metrics
of one task side by side, with the thresholds a detector flagged.

Capability metrics are the rows of ``evals.parquet`` whose ``metric`` is ``TASK/NAME``
(e.g. ``addition/exact_match``, ``addition/logprob``). A metric is discontinuous when its
name is one of ``DISCONTINUOUS`` (exact match and accuracy); every other is continuous.
Each trial contributes its value at its last evaluation point.

Flags come from the emergence detector as a list of its JSON results
(``{"metric": "addition/exact_match", "axis": "flops", "verdict": "emergent",
"threshold": {"x": …, "low": …, "high": …}, "midpoint": …}``): an emergent verdict is
drawn as a line at the onset with its interval shaded.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.emergence import DISCONTINUOUS
from analysis.emergence_tables import last_capability_values
from analysis.records import (
    EVALS,
    TRIALS,
    Verdict,
    capability_metric,
    capability_name,
    capability_task,
    is_probe_metric,
)
from analysis.report.figures import data_unit, size_colourbar
from analysis.report.style import OKABE_ITO, TEMPLATE, axis_label, scale_colours

AXIS_COLUMNS = {"N": TRIALS.n_params, "D": TRIALS.data_units, "C": TRIALS.flops}
# names a table's scale column may have in emergence.json (a sweep's columns, and common ones)
AXIS_ALIASES = {"n_params": "N", "params": "N", "data_units": "D", "tokens": "D", "samples": "D",
                "flops": "C", "compute": "C"}


def capability_tasks(evals: pd.DataFrame | None) -> dict[str, list[str]]:
    """{task: [metric names, discontinuous first]} found in ``evals``."""
    if evals is None or evals.empty:
        return {}
    tasks: dict[str, list[str]] = {}
    for metric in sorted(m for m in evals[EVALS.metric].unique() if is_probe_metric(m)):
        tasks.setdefault(capability_task(metric), []).append(capability_name(metric))
    return {t: sorted(names, key=lambda n: (n not in DISCONTINUOUS, n)) for t, names in tasks.items()}


def final_capabilities(trials: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, capability metric): its value at the trial's last evaluation."""
    return last_capability_values(evals).merge(
        trials[[TRIALS.trial_id, TRIALS.n_params, TRIALS.data_units, TRIALS.flops, TRIALS.status]], on=TRIALS.trial_id)


def emergence_figure(trials: pd.DataFrame, evals: pd.DataFrame, task: str, axis: str = "C",
                     flags: list[dict] | None = None) -> go.Figure:
    """One task's metrics against ``axis`` (N, D or C): one panel per metric, the
    discontinuous ones first; points coloured by N; flagged thresholds drawn."""
    names = capability_tasks(evals).get(task, [])
    finals = final_capabilities(trials, evals)
    col_x = AXIS_COLUMNS[axis]
    fig = make_subplots(rows=1, cols=max(1, len(names)), horizontal_spacing=0.08,
                        subplot_titles=[f"{n} ({'discontinuous' if n in DISCONTINUOUS else 'continuous'})"
                                        for n in names])
    for col, name in enumerate(names, start=1):
        metric = capability_metric(task, name)
        rows = finals[finals[EVALS.metric] == metric].sort_values(col_x)
        if rows.empty:
            continue
        fig.add_trace(go.Scatter(
            x=rows[col_x], y=rows[EVALS.value], mode="markers", name=metric, showlegend=False,
            marker={"size": 9, "color": scale_colours(rows[TRIALS.n_params]), "line": {"color": "black", "width": 0.5}},
            customdata=rows[[TRIALS.trial_id, TRIALS.n_params, TRIALS.data_units]].to_numpy(),
            hovertemplate=("%{customdata[0]}<br>N=%{customdata[1]:.3g}, D=%{customdata[2]:.3g}<br>"
                           f"{name} %{{y:.4g}}<extra></extra>")), row=1, col=col)
        if col == len(names):
            fig.add_trace(size_colourbar(finals[TRIALS.n_params].to_numpy()), row=1, col=col)
        for flag in flags or []:
            if flag.get("metric") in (metric, name) and _axis(flag.get("axis")) == axis:
                _draw_flag(fig, flag, col)
        fig.update_xaxes(type="log", title_text=axis_label(axis, data_unit(trials)), row=1, col=col)
        fig.update_yaxes(title_text=name, row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=400, title=f"Capability: {task} (final value of each trial)")
    return fig


def _axis(name) -> str | None:
    return name if name in AXIS_COLUMNS else AXIS_ALIASES.get(str(name))


def _draw_flag(fig: go.Figure, flag: dict, col: int) -> None:
    threshold = flag.get("threshold")
    verdict = flag.get("verdict", "")
    jumps = verdict in Verdict.values() and Verdict(verdict).jumps  # emergence.json is read back from disk
    if not jumps or not threshold or threshold.get("x") is None:
        fig.add_annotation(text=f"verdict: {verdict}", xref=f"x{'' if col == 1 else col} domain",
                           yref=f"y{'' if col == 1 else col} domain", x=0.02, y=0.98, showarrow=False)
        return
    low, high = threshold.get("low"), threshold.get("high")
    if low is not None and high is not None:
        fig.add_vrect(x0=low, x1=high, fillcolor=OKABE_ITO[3], opacity=0.15, line_width=0, row=1, col=col)
    fig.add_vline(x=threshold["x"], line={"color": OKABE_ITO[3], "dash": "dash"}, row=1, col=col)
    interval = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
    suffix = "" if col == 1 else str(col)
    # Annotations on a log axis take log10(x), which add_vline's own annotation does not do.
    fig.add_annotation(x=math.log10(threshold["x"]), y=0.97, xref=f"x{suffix}", yref=f"y{suffix} domain",
                       xanchor="left", yanchor="top", showarrow=False, font={"color": OKABE_ITO[3]},
                       text=f"{verdict}: onset {threshold['x']:.3g}{interval}")
