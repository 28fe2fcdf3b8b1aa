"""The task-prediction panel: a task's accuracy against its task loss at every checkpoint the
sigmoid was fitted on, the fitted sigmoid with its 95% band, and the chained predictions
(``scalinglab task --predict``) with their intervals in both task loss and accuracy.

It draws a results folder's ``tasks.json`` (``analysis.task_tables``), one figure per task,
with the checkpoints read back from the sweep's tables.
"""

from __future__ import annotations

import plotly.graph_objects as go

from analysis.report.figures import size_colourbar
from analysis.report.style import BAND_OPACITY, OKABE_ITO, TEMPLATE, rgba, scale_colours
from analysis.task import Ladder


def task_figure(doc: dict, ladder: Ladder | None) -> go.Figure:
    fig = go.Figure()
    step2 = doc.get("step2") or {}
    if ladder is not None and not ladder.frame.empty:
        rows = ladder.frame[ladder.frame["loss"].between(*step2["task_loss_range"])] if step2 else ladder.frame
        fig.add_trace(go.Scatter(
            x=rows["loss"], y=rows["acc"], mode="markers", name="checkpoints", showlegend=True,
            marker={"size": 7, "color": scale_colours(rows["N"]), "line": {"color": "black", "width": 0.4}},
            customdata=rows[["run", "N", "D"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>N=%{customdata[1]:.3g}, D=%{customdata[2]:.3g}<br>"
                          "task loss %{x:.4g}, accuracy %{y:.4g}<extra></extra>"))
        fig.add_trace(size_colourbar(rows["N"].to_numpy()))
    curve = step2.get("curve")
    if curve:
        colour = OKABE_ITO[0]
        if curve.get("low") is not None:
            fig.add_trace(go.Scatter(x=curve["task_loss"] + curve["task_loss"][::-1],
                                     y=curve["high"] + curve["low"][::-1], fill="toself", hoverinfo="skip",
                                     line={"width": 0}, fillcolor=rgba(colour, BAND_OPACITY), name="95% band"))
        fig.add_trace(go.Scatter(x=curve["task_loss"], y=curve["accuracy"], mode="lines", name="sigmoid",
                                 line={"color": colour, "width": 2}))
    if doc.get("chance") is not None:
        fig.add_hline(y=doc["chance"], line={"color": "grey", "dash": "dot"}, annotation_text="chance")
    for p in doc.get("predictions", []):
        loss, acc = p["task_loss"], p["accuracy"]
        if loss["value"] is None or acc["value"] is None:
            continue
        fig.add_trace(go.Scatter(
            x=[loss["value"]], y=[acc["value"]], mode="markers", name=f"N={p['N']:.3g}, D={p['D']:.3g}",
            marker={"symbol": "diamond", "size": 12, "color": OKABE_ITO[3], "line": {"color": "black", "width": 1}},
            error_x=_bar(loss), error_y=_bar(acc),
            hovertemplate=(f"predicted at N={p['N']:.3g}, D={p['D']:.3g}, C={p['C']:.3g} "
                           f"({p['extrapolation']:.3g}x beyond the data)<br>task loss %{{x:.4g}}, "
                           "accuracy %{y:.4g}<extra></extra>")))
    verdict = "" if doc.get("predictable", True) else " — not predictable: " + "; ".join(doc.get("reasons", []))
    fig.update_layout(template=TEMPLATE, height=420, title=f"Task: {doc['task']}{verdict}"[:160],
                      legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text="task loss (lower is better)", autorange="reversed")
    fig.update_yaxes(title_text="accuracy")
    return fig


def _bar(iv: dict) -> dict:
    if iv["low"] is None or iv["high"] is None:
        return {"visible": False}
    return {"type": "data", "symmetric": False, "array": [iv["high"] - iv["value"]],
            "arrayminus": [iv["value"] - iv["low"]], "visible": True}
