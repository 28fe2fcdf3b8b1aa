"""The adaptive design's figures (``decisions.parquet``, ``adaptive.json``; ``analysis.design``):
the target's 95% interval against the compute spent, and where the runs lie in the (N, D)
plane: the seed design, each choice numbered by its decision, and the candidates left."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.records import DECISIONS, TRIALS, Role, Status
from analysis.report.style import OKABE_ITO, TEMPLATE, axis_label, rgba


def adaptive_figure(trials: pd.DataFrame, decisions: pd.DataFrame, state: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        f"{state.get('target', 'the target')}: 95% interval vs compute spent",
        "runs in the (N, D) plane"))
    _interval(fig, decisions, state)
    _plane(fig, trials, decisions)
    fig.update_layout(template=TEMPLATE, height=460, legend={"orientation": "h", "y": -0.2})
    return fig


def _interval(fig: go.Figure, d: pd.DataFrame, state: dict) -> None:
    """One point per decision (the interval the choice was made on, at what had been chosen
    before it), and the latest estimate at everything chosen."""
    first = d.drop_duplicates(DECISIONS.round) if len(d) else d
    spent = (first[DECISIONS.spent_flops] - first[DECISIONS.cost]).tolist()
    value, low, high = (first[c].tolist() for c in (DECISIONS.value, DECISIONS.low, DECISIONS.high))
    est = state.get("estimate")
    if est:
        spent.append(state["spent_flops"])
        value.append(est["value"])
        low.append(est["low"])
        high.append(est["high"])
    if not spent:
        return
    fig.add_trace(go.Scatter(x=spent + spent[::-1], y=high + low[::-1], fill="toself", mode="lines",
                             line={"width": 0}, fillcolor=rgba(OKABE_ITO[0], 0.2), name="95% interval",
                             hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Scatter(x=spent, y=value, mode="lines+markers", name="estimate", line={"color": OKABE_ITO[0]},
                             text=[f"decision {r}" for r in first[DECISIONS.round]] + (["latest"] if est else []),
                             hovertemplate="%{text}: %{y:.4g} at %{x:.3g} FLOPs<extra></extra>"), row=1, col=1)
    fig.update_xaxes(type="log", title_text="FLOPs spent (chosen runs)", row=1, col=1)
    fig.update_yaxes(title_text="target", row=1, col=1)


def _plane(fig: go.Figure, t: pd.DataFrame, d: pd.DataFrame) -> None:
    points = t[t[TRIALS.role].map(lambda r: Role(r).fit_point)]
    chosen = set(d[DECISIONS.chosen]) if len(d) else set()
    skipped = points[points[TRIALS.status] == Status.SKIPPED]
    seeds = points[(points[TRIALS.status] != Status.SKIPPED) & ~points[TRIALS.trial_id].isin(chosen)]
    unit = str(points[TRIALS.data_unit].iloc[0]) if len(points) else "data units"
    for frame, name, colour, symbol in ((skipped, "not chosen", "#BBBBBB", "circle-open"),
                                        (seeds, "seed design", OKABE_ITO[1], "square")):
        fig.add_trace(go.Scatter(x=frame[TRIALS.n_params], y=frame[TRIALS.data_units], mode="markers", name=name,
                                 marker={"color": colour, "symbol": symbol, "size": 10}, text=frame[TRIALS.trial_id],
                                 hovertemplate="%{text}<extra></extra>"), row=1, col=2)
    if len(d):
        fig.add_trace(go.Scatter(x=d[DECISIONS.n_params], y=d[DECISIONS.data_units], mode="markers+text",
                                 name="chosen (decision)", text=d[DECISIONS.round].astype(str),
                                 textposition="top center", marker={"color": OKABE_ITO[2], "size": 11},
                                 customdata=d[DECISIONS.chosen],
                                 hovertemplate="decision %{text}: %{customdata}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(type="log", title_text=axis_label("N"), row=1, col=2)
    fig.update_yaxes(type="log", title_text=axis_label("D", unit), row=1, col=2)
