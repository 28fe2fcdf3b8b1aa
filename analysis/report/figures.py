"""Plotly figures of a sweep's training curves and of final loss against N, D and C with the
fitted laws. Every builder takes the tables (and fits) and returns a ``go.Figure``, so the
same figures work in a notebook:

    from analysis.report import load_results, figures
    data = load_results("results/quickstart")
    figures.scaling_figure(data.trials, fits, "N").show()

Bands are 95% pointwise intervals: the 2.5th and 97.5th percentiles, at each x, of the
curves of the bootstrap refits (``FitResult.samples``). A fit without a bootstrap draws
its curve alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.laws import law_value, split_of
from analysis.points import load_points
from analysis.records import EVALS, LOSS, TRIALS
from analysis.report.style import (
    BAND_OPACITY,
    SIZE_SCALE,
    TEMPLATE,
    axis_label,
    law_colour,
    loss_label,
    rgba,
    scale_colours,
    sci,
)
from analysis.results import FitResult

CURVE_POINTS = 120
MAX_GROUPS = 8  # more distinct values than this of the other variable: no series per value
CHINCHILLA_LEVELS = 5  # the Chinchilla law is drawn at most at this many values of the other variable


def data_unit(trials: pd.DataFrame) -> str:
    """What D counts in these trials (a foreign table without the column: "data units")."""
    units = trials[TRIALS.data_unit].dropna().unique() if TRIALS.data_unit in trials else []
    return str(units[0]) if len(units) == 1 else "data units"


def loss_unit(trials: pd.DataFrame) -> str:
    """The unit of the family's ``loss`` (a foreign table without the column: its own)."""
    units = trials[TRIALS.loss_unit].dropna().unique() if TRIALS.loss_unit in trials else []
    return str(units[0]) if len(units) == 1 else "the table's units"


def completed_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed trials as fit points: columns N, D, C, loss, trial_id (+ budget)."""
    return load_points(trials).frame


def size_colourbar(n_values) -> go.Scatter:
    """An invisible trace that carries the colour bar of the model-size scale."""
    logs = np.log10(np.asarray(n_values, dtype=float))
    lo, hi = float(logs.min()), float(logs.max())
    # scale_colours maps the largest N to 0.92 of the scale; the bar's ends match that.
    return go.Scatter(
        x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
        marker={"colorscale": SIZE_SCALE, "cmin": lo, "cmax": lo + (hi - lo) / 0.92 if hi > lo else lo + 1,
                "color": [lo], "showscale": True,
                "colorbar": {"title": {"text": "log₁₀ N"}, "thickness": 14}},
    )


def training_curves(trials: pd.DataFrame, evals: pd.DataFrame, metric: str = LOSS) -> go.Figure:
    """Held-out loss against tokens (left) and FLOPs (right), log axes, one colour by N."""
    unit = data_unit(trials)
    curves = evals[evals[EVALS.metric] == metric].merge(
        trials[[TRIALS.trial_id, TRIALS.n_params, TRIALS.data_units, TRIALS.status]].rename(
            columns={TRIALS.data_units: "budget_d"}), on=TRIALS.trial_id)
    curves = curves[(curves[EVALS.data_units] > 0) & (curves[EVALS.value] > 0)]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=(f"vs {unit} trained", "vs training FLOPs"))
    if curves.empty:
        return fig
    sizes = curves.groupby(TRIALS.trial_id)[TRIALS.n_params].first()
    colours = dict(zip(sizes.index, scale_colours(sizes.to_numpy())))
    for tid, cur in curves.sort_values([TRIALS.n_params, "budget_d", EVALS.step]).groupby(TRIALS.trial_id, sort=False):
        n, d, status = cur[TRIALS.n_params].iloc[0], cur["budget_d"].iloc[0], cur[TRIALS.status].iloc[0]
        hover = (f"{tid}<br>N={sci(n)}, D={sci(d)}, {status}<br>{unit} %{{customdata[0]:.3g}}, "
                 "FLOPs %{customdata[1]:.3g}<br>loss %{y:.4f}<extra></extra>")
        custom = cur[[EVALS.data_units, EVALS.flops]].to_numpy()
        for col, x in ((1, cur[EVALS.data_units]), (2, cur[EVALS.flops])):
            fig.add_trace(go.Scatter(
                x=x, y=cur[EVALS.value], mode="lines+markers", name=tid, legendgroup=tid,
                showlegend=False, line={"color": colours[tid], "width": 1.5}, marker={"size": 4},
                customdata=custom, hovertemplate=hover), row=1, col=col)
    fig.add_trace(size_colourbar(sizes.to_numpy()), row=1, col=2)
    fig.update_xaxes(type="log", title_text=axis_label("D", unit), row=1, col=1)
    fig.update_xaxes(type="log", title_text=axis_label("C"), row=1, col=2)
    fig.update_yaxes(type="log", title_text=loss_label(loss_unit(trials)), row=1, col=1)
    fig.update_layout(template=TEMPLATE, title="Training curves (held-out loss at each evaluation point)",
                      height=460, hovermode="closest")
    return fig


# --- final loss against N, D or C with the fitted laws -------------------------------------

GROUP_BY = {"N": "D", "D": "N", "C": "N"}


def scaling_figure(trials: pd.DataFrame, fits: list[FitResult], axis: str) -> go.Figure:
    """Final loss against ``axis`` (N, D or C) on log-log axes: the points (coloured by the
    other variable), each fitted law through them with its 95% band, and ``--predict``
    targets on this axis with their intervals; the range beyond the data is shaded."""
    unit = data_unit(trials)
    pts = completed_points(trials)
    fig = go.Figure()
    if pts.empty:
        return fig
    by = GROUP_BY[axis]
    groups = sorted(pts[by].unique())
    colours = dict(zip(groups, scale_colours(groups)))
    hover = ("%{customdata[0]}<br>N=%{customdata[1]:.3g}, D=%{customdata[2]:.3g}, "
             "C=%{customdata[3]:.3g}<br>loss %{y:.4f}<extra></extra>")
    if len(groups) <= MAX_GROUPS:  # a grid: one series per value of the other variable
        for value in groups:
            g = pts[pts[by] == value].sort_values(axis)
            fig.add_trace(go.Scatter(
                x=g[axis], y=g["loss"], mode="markers+lines" if axis != "C" else "markers",
                name=f"{by}={sci(value)}", marker={"color": colours[value], "size": 8},
                line={"color": colours[value], "width": 1, "dash": "dot"},
                customdata=g[["trial_id", "N", "D", "C"]].to_numpy(), hovertemplate=hover))
    else:  # e.g. an isoflop sweep, where every trial has its own D: one series, coloured by the other
        fig.add_trace(go.Scatter(
            x=pts[axis], y=pts["loss"], mode="markers", name="trials",
            marker={"color": [colours[v] for v in pts[by]], "size": 8},
            customdata=pts[["trial_id", "N", "D", "C"]].to_numpy(), hovertemplate=hover))
    lo, hi = float(pts[axis].min()), float(pts[axis].max())
    reach = max([hi] + [p[axis] for f in fits for p in f.predictions if axis in p])
    grid = np.geomspace(lo, reach, CURVE_POINTS)
    # The y axis keeps to the data and the predictions: a band that an unidentified parameter
    # stretches to 10⁶ would otherwise squash the points into a line.
    shown = [*pts["loss"], *(p["loss"].value for f in fits for p in f.predictions
                             if axis in p and "loss" in p and shows_prediction(f.law, axis))]
    y_lo, y_hi = min(shown) / AXIS_MARGIN, max(shown) * AXIS_MARGIN
    for fit in fits:
        for name, x_values, y_line, y_band, colour in _law_curves(fit, axis, grid, pts, colours):
            y_band, clipped = clip_band(y_band, y_lo, y_hi)
            add_curve(fig, name + (UNBOUNDED if clipped else ""), grid, y_line, y_band, colour)
        _add_predictions(fig, fit, axis)
    if reach > hi * 1.0001:
        shade_beyond(fig, hi, reach)
    fig.update_xaxes(type="log", title_text=axis_label(axis, unit))
    fig.update_yaxes(type="log", title_text=loss_label(loss_unit(trials)), range=[np.log10(y_lo), np.log10(y_hi)])
    fig.update_layout(template=TEMPLATE, height=480, hovermode="closest",
                      title=f"Final loss vs {axis}, with fitted laws and 95% bootstrap bands",
                      legend={"font": {"size": 11}})
    return fig


def shade_beyond(fig: go.Figure, hi: float, reach: float, **where) -> None:
    """Shade a log x axis from the data's largest value ``hi`` to ``reach`` and say so."""
    fig.add_vrect(x0=hi, x1=reach, fillcolor="#888888", opacity=0.12, line_width=0, **where)
    if not where:
        fig.add_annotation(x=np.log10(hi), y=1.0, xref="x", yref="paper", xanchor="left", yanchor="bottom",
                           showarrow=False, text=f"extrapolation: up to {reach / hi:.3g}× beyond the data")


def shows_prediction(law: str, axis: str) -> bool:
    """A law's predictions belong on the axes of its own variables (Chinchilla: N, D and C)."""
    return law == "chinchilla" or law.endswith(f"_{axis}") or (law == "envelope" and axis == "C")


def _law_curves(fit: FitResult, axis: str, grid: np.ndarray, pts: pd.DataFrame, colours: dict):
    """(name, x, line, band or None, colour) for each curve ``fit`` draws on ``axis``."""
    law = fit.law
    value = {k: v.value for k, v in {**fit.params, **fit.derived}.items()}
    draws = {k: v[:, None] for k, v in fit.samples.items()} if fit.samples else None
    if law in (f"power_{axis}", f"kaplan_{axis}") or (law == "envelope" and axis == "C"):
        x = {axis: grid}
        yield (_law_name(fit), grid, law_value(law, value, **x),
               None if draws is None else band(law_value(law, draws, **x)), law_colour(law))
    elif law == "chinchilla" and axis in ("N", "D"):
        other = GROUP_BY[axis]
        levels = sorted(pts[other].unique())
        if len(levels) > CHINCHILLA_LEVELS:  # evenly spaced picks, the smallest and largest included
            levels = [levels[i] for i in np.linspace(0, len(levels) - 1, CHINCHILLA_LEVELS).round().astype(int)]
        for level in levels:
            x = {axis: grid, other: np.full_like(grid, level)}
            yield (f"chinchilla at {other}={sci(level)}", grid, law_value(law, value, **x),
                   None if draws is None else band(law_value(law, draws, **x)), colours[level])
    elif law == "chinchilla" and axis == "C" and "a" in value:
        x = split_of(fit, grid)
        split_draws = split_of(fit, grid, draws=True)
        spread = None if split_draws is None else band(law_value(law, draws, **split_draws))
        yield ("chinchilla, compute-optimal N and D", grid, law_value(law, value, **x), spread,
               law_colour(law))


AXIS_MARGIN = 1.25  # the y axis spans the data's values ÷ and × this
UNBOUNDED = " (95% band leaves the plot: cut at its edges, unbounded)"


def clip_band(band, lo: float, hi: float):
    """(the band cut to [lo, hi], whether it had to be cut); None passes through."""
    if band is None:
        return None, False
    low, high = (np.asarray(b, dtype=float) for b in band)
    clipped = bool(np.nanmin(low, initial=np.inf) < lo or np.nanmax(high, initial=-np.inf) > hi
                   or np.isnan(low).any() or np.isnan(high).any())
    return (np.clip(np.nan_to_num(low, nan=lo), lo, hi), np.clip(np.nan_to_num(high, nan=hi), lo, hi)), clipped


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise 2.5th and 97.5th percentiles over draws (rows); draws that are not finite at
    an x are left out there, and an x with none is NaN."""
    finite = np.where(np.isfinite(curves), curves, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": an x with no finite draw
        with np.errstate(invalid="ignore", over="ignore"):
            return tuple(np.nanpercentile(finite, [2.5, 97.5], axis=0))


def _law_name(fit: FitResult) -> str:
    names = {"alpha": "α", "beta": "β"}
    shown = ", ".join(f"{names.get(k, k)}={sci(v.value)}" for k, v in fit.params.items() if k in ("alpha", "beta"))
    return f"{fit.law} ({shown})" if shown else fit.law


def add_curve(fig: go.Figure, name: str, x, y, band, colour: str, *, group: str | None = None,
              show: bool = True, dash: str = "solid", hover: str | None = None, row=None, col=None) -> None:
    """A fitted curve with its 95% band (``band`` = (low, high), or None): an invisible upper
    edge, the lower edge filled up to it, then the line."""
    group = group or f"law:{name}"
    if band is not None:
        low, high = band
        fig.add_trace(go.Scatter(x=x, y=high, mode="lines", line={"width": 0}, legendgroup=group,
                                 showlegend=False, hoverinfo="skip"), row=row, col=col)
        fig.add_trace(go.Scatter(x=x, y=low, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=rgba(colour, BAND_OPACITY), legendgroup=group,
                                 showlegend=False, hoverinfo="skip"), row=row, col=col)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=group, showlegend=show,
                             line={"color": colour, "width": 2, "dash": dash},
                             hovertemplate=hover or f"{name}<br>x=%{{x:.3g}}<br>fit %{{y:.4f}}<extra></extra>"),
                  row=row, col=col)


def _add_predictions(fig: go.Figure, fit: FitResult, axis: str) -> None:
    for p in fit.predictions:
        if axis not in p or not shows_prediction(fit.law, axis):
            continue
        loss = p["loss"]
        where = ", ".join(f"{k}={sci(p[k])}" for k in ("N", "D", "C") if k in p)
        fig.add_trace(go.Scatter(
            x=[p[axis]], y=[loss.value], mode="markers", name=f"{fit.law} prediction at {where}",
            marker={"symbol": "diamond", "size": 11, "color": law_colour(fit.law),
                    "line": {"color": "black", "width": 1}},
            error_y={"type": "data", "symmetric": False, "array": [loss.high - loss.value],
                     "arrayminus": [loss.value - loss.low]},
            hovertemplate=(f"{fit.law} prediction at {where}<br>loss {loss.value:.4f} "
                           f"[{loss.low:.4f}, {loss.high:.4f}]<br>{p['extrapolation']:.3g}× beyond "
                           "the data<extra></extra>")))
