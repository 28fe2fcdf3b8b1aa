"""Plotly figures of compute-optimal allocation: IsoFLOP profiles, the frontier N_opt(C),
D_opt(C) and tokens per parameter, the Chinchilla law's L(N, D) contours, and residuals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.fit import subset_for
from analysis.allocation import power_law_split
from analysis.compute import Convention, FlopsPerUnit
from analysis.laws import law_value, split_of
from analysis.report.figures import (
    UNBOUNDED,
    add_curve,
    band,
    clip_band,
    completed_points,
    data_unit,
    loss_unit,
    shade_beyond,
)
from analysis.report.style import (
    OKABE_ITO,
    TEMPLATE,
    axis_label,
    law_colour,
    loss_label,
    scale_colours,
    sci,
)
from analysis.results import FitResult


def isoflop_figure(trials: pd.DataFrame, isoflop: FitResult) -> go.Figure:
    """Loss against N at each compute budget, with the fitted parabola in log N and its
    minimum N_opt (a star; hollow when the minimum lies outside the sampled sizes)."""
    from analysis.allocation import budgets_of

    pts = completed_points(trials)
    budgets = budgets_of(pts)
    rows = isoflop.diagnostics["budgets"]
    colours = scale_colours([r["C"] for r in rows])
    fig = go.Figure()
    for row, colour in zip(rows, colours):
        g = pts[np.isclose(budgets, row["C"], rtol=1e-6)].sort_values("N")
        label = f"C={sci(row['C'])}"
        fig.add_trace(go.Scatter(
            x=g["N"], y=g["loss"], mode="markers", name=label, legendgroup=label,
            marker={"color": colour, "size": 8}, customdata=g[["trial_id", "D"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>N=%{x:.3g}, D=%{customdata[1]:.3g}<br>loss %{y:.4f}<extra></extra>"))
        profile = row["profile"]
        lo = min(np.log(g["N"].min()), np.log(row["N_opt"]))
        hi = max(np.log(g["N"].max()), np.log(row["N_opt"]))
        x = np.linspace(lo, hi, 80)
        fig.add_trace(go.Scatter(x=np.exp(x), y=np.polyval(profile, x), mode="lines", legendgroup=label,
                                 showlegend=False, line={"color": colour}, hoverinfo="skip"))
        x_opt = np.log(row["N_opt"])
        fig.add_trace(go.Scatter(
            x=[row["N_opt"]], y=[np.polyval(profile, x_opt)], mode="markers", legendgroup=label,
            showlegend=False,
            marker={"symbol": "star" if row["minimum_inside"] else "star-open", "size": 15, "color": colour,
                    "line": {"color": "black", "width": 1}},
            hovertemplate=(f"{label}: N_opt={sci(row['N_opt'])}, D_opt={sci(row['D_opt'])}, "
                           f"{row['D_per_N']:.3g} {data_unit(trials)}/parameter<extra></extra>")))
    fig.update_xaxes(type="log", title_text=axis_label("N"))
    fig.update_yaxes(title_text=loss_label(loss_unit(trials)))
    fig.update_layout(template=TEMPLATE, height=460, title="IsoFLOP profiles: loss vs N at each compute budget "
                      f"({'cubics' if isoflop.diagnostics.get('profile_degree') == 3 else 'parabolas'} in log N; stars at their minima)")
    return fig


def frontier_figure(trials: pd.DataFrame, fits: list[FitResult], targets_c: list[float] = ()) -> go.Figure:
    """N_opt(C), D_opt(C) and D_opt/N_opt from every fit that gives them: IsoFLOP minima and
    their power laws, the Chinchilla law's allocation (with its 95% band), and the model
    sizes that hold the training-curve envelope."""
    unit = data_unit(trials)
    pts = completed_points(trials)
    by_law = {f.law: f for f in fits}
    c_lo, c_hi = float(pts["C"].min()), max([float(pts["C"].max()), *targets_c])
    grid = np.geomspace(c_lo, c_hi, 100)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("N_opt(C)", "D_opt(C)", f"{unit} per parameter at the optimum"))
    chin = by_law.get("chinchilla")
    if chin is not None and "a" in chin.derived:
        _allocation_lines(fig, grid, split_of(chin, grid), split_of(chin, grid, draws=True), chin, "chinchilla")
    iso = by_law.get("isoflop")
    if iso is not None:
        rows = iso.diagnostics["budgets"]
        _allocation_lines(fig, grid, power_law_split(iso, grid), power_law_split(iso, grid, draws=True), iso, "isoflop")
        c = np.array([r["C"] for r in rows])
        for col, key in enumerate(("N_opt", "D_opt", "D_per_N"), start=1):
            fig.add_trace(go.Scatter(x=c, y=[r[key] for r in rows], mode="markers", legendgroup="isoflop",
                                     showlegend=False,
                                     marker={"symbol": "star", "size": 12, "color": law_colour("isoflop")},
                                     hovertemplate="IsoFLOP minimum: C=%{x:.3g}, %{y:.3g}<extra></extra>"),
                          row=1, col=col)
    env = by_law.get("envelope")
    if env is not None and env.diagnostics.get("envelope"):
        e = pd.DataFrame(env.diagnostics["envelope"])
        fig.add_trace(go.Scatter(x=e["C"], y=e["N"], mode="markers", name="size holding the training-curve envelope",
                                 marker={"symbol": "square", "size": 7, "color": law_colour("envelope")},
                                 hovertemplate="C=%{x:.3g}: N=%{y:.3g}<extra></extra>"), row=1, col=1)
    if c_hi > pts["C"].max() * 1.0001:
        for col in (1, 2, 3):
            shade_beyond(fig, float(pts["C"].max()), c_hi, row=1, col=col)
    for col, title in enumerate(("N_opt, parameters", f"D_opt, {unit}", "D_opt / N_opt"), start=1):
        fig.update_xaxes(type="log", title_text=axis_label("C"), row=1, col=col)
        fig.update_yaxes(type="log", title_text=title, row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=440, title="Compute-optimal frontier (95% bands; shaded: beyond "
                      "the data)", legend={"orientation": "h", "y": -0.25})
    return fig


def _allocation_lines(fig, grid, split, draws, fit: FitResult, law: str) -> None:
    """N_opt, D_opt and D_opt/N_opt of one approach against C, with 95% bands from its draws."""
    a, b = fit.estimate("a"), fit.estimate("b")
    name = f"{law}: a={a.value:.3f} [{a.low:.3f}, {a.high:.3f}], b={b.value:.3f} [{b.low:.3f}, {b.high:.3f}]"
    curves = [split["N"], split["D"], split["D"] / split["N"]]
    bands = [None] * 3
    if draws is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            bands = [band(draws["N"]), band(draws["D"]), band(draws["D"] / draws["N"])]
    cut = []
    for y, spread in zip(curves, bands):  # a band may leave the plot by a decade around its line, no more
        finite = np.asarray(y, float)[np.isfinite(y)]
        cut.append(clip_band(spread, finite.min() / 10, finite.max() * 10) if len(finite) else (None, spread is not None))
    if any(clipped for _, clipped in cut):
        name += UNBOUNDED
    for col, (y, (spread, _)) in enumerate(zip(curves, cut), start=1):
        _line(fig, col, grid, y, spread, law_colour(law), name, show=col == 1,
              dash="dash" if law == "isoflop" else "solid")


def _line(fig, col, x, y, band, colour, name, show, dash="solid") -> None:
    add_curve(fig, name, x, y, band, colour, group=name, show=show, dash=dash, row=1, col=col,
              hover="C=%{x:.3g}: %{y:.3g}<extra></extra>")


def chinchilla_contours(trials: pd.DataFrame, chin: FitResult) -> go.Figure:
    """Contours of the fitted L(N, D) over log₁₀ N × log₁₀ D, with iso-compute lines in the
    fit's own C (f(N)·D: the FLOPs the trials cost, or 6·N·D for a table without them), the
    efficient frontier (the lowest loss on each such line) and the points."""
    unit = data_unit(trials)
    pts = completed_points(trials)
    flops = FlopsPerUnit.from_json(chin.diagnostics.get("compute"))
    value = {k: v.value for k, v in {**chin.params, **chin.derived}.items()}
    ln_lo, ln_hi = np.log10(pts["N"].min()) - 0.5, np.log10(pts["N"].max()) + 0.5
    ld_lo, ld_hi = np.log10(pts["D"].min()) - 0.5, np.log10(pts["D"].max()) + 0.5
    ln, ld = np.linspace(ln_lo, ln_hi, 90), np.linspace(ld_lo, ld_hi, 90)
    z = law_value("chinchilla", value, N=10 ** ln[None, :], D=10 ** ld[:, None])
    fig = go.Figure(go.Contour(
        x=ln, y=ld, z=z, colorscale="Cividis", ncontours=18, name="L(N, D)",
        contours={"showlabels": True, "labelfont": {"size": 9, "color": "white"}},
        colorbar={"title": {"text": loss_label(loss_unit(trials))}, "thickness": 14},
        hovertemplate="N=10^%{x:.2f}, D=10^%{y:.2f}<br>fitted loss %{z:.4f}<extra></extra>"))
    log_f = np.log10(flops(10 ** ln))  # log₁₀ FLOPs per data unit along the N axis
    c_lo, c_hi = log_f[0] + ld_lo, log_f[-1] + ld_hi
    convention = "C = 6ND" if flops.convention is Convention.SIX_ND else "C = FLOPs the trials cost"
    for log_c in np.arange(np.ceil(c_lo), np.floor(c_hi) + 1):
        y = log_c - log_f
        inside = (y >= ld_lo) & (y <= ld_hi)
        if inside.sum() < 2:
            continue
        fig.add_trace(go.Scatter(x=ln[inside], y=y[inside], mode="lines", showlegend=False,
                                 line={"color": "white", "width": 1, "dash": "dot"},
                                 hovertemplate=f"C = 1e{log_c:.0f} FLOPs<extra></extra>"))
        last = np.flatnonzero(inside)[-1]  # where the line leaves the plot
        fig.add_annotation(x=ln[last] - 0.05, y=y[last], text=f"C=1e{log_c:.0f}", showarrow=False,
                           xanchor="right", yanchor="bottom", font={"color": "white", "size": 10})
    if "a" in value:
        split = split_of(chin, np.geomspace(10 ** c_lo, 10 ** c_hi, 100))
        fig.add_trace(go.Scatter(x=np.log10(split["N"]), y=np.log10(split["D"]), mode="lines",
                                 name="efficient frontier", line={"color": OKABE_ITO[1], "width": 3},
                                 hovertemplate="N_opt=10^%{x:.2f}, D_opt=10^%{y:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=np.log10(pts["N"]), y=np.log10(pts["D"]), mode="markers", name="trials",
                             marker={"color": "white", "size": 8, "line": {"color": "black", "width": 1}},
                             customdata=pts[["trial_id", "loss"]].to_numpy(),
                             hovertemplate="%{customdata[0]}: loss %{customdata[1]:.4f}<extra></extra>"))
    fig.update_xaxes(range=[ln_lo, ln_hi], title_text="log₁₀ N (parameters)")
    fig.update_yaxes(range=[ld_lo, ld_hi], title_text=f"log₁₀ D ({unit})")
    fig.update_layout(template=TEMPLATE, height=520, title="Chinchilla law L(N, D): contours, iso-compute "
                      f"lines (dotted, {convention}) and the efficient frontier", legend={"orientation": "h", "y": -0.15})
    return fig


def residuals_figure(trials: pd.DataFrame, fits: list[FitResult]) -> go.Figure:
    """Relative residual (observed / fitted − 1) of each parametric law against C, on the
    points that law was fitted to."""
    pts = completed_points(trials)
    fig = go.Figure()
    for fit in fits:
        if fit.law in ("isoflop", "envelope"):
            continue
        sub, _ = subset_for(fit.law, pts)
        value = {k: v.value for k, v in fit.params.items()}
        variables = ("N", "D") if fit.law == "chinchilla" else (fit.law[-1],)
        pred = law_value(fit.law, value, **{v: sub[v].to_numpy(float) for v in variables})
        fig.add_trace(go.Scatter(
            x=sub["C"], y=sub["loss"] / pred - 1, mode="markers", name=fit.law,
            marker={"color": law_colour(fit.law), "size": 7}, customdata=sub[["trial_id"]].to_numpy(),
            hovertemplate=f"{fit.law}: %{{customdata[0]}}<br>residual %{{y:.2%}}<extra></extra>"))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_xaxes(type="log", title_text=axis_label("C"))
    fig.update_yaxes(tickformat=".1%", title_text="observed / fitted − 1")
    fig.update_layout(template=TEMPLATE, height=400, title="Residuals of each law on the points it was fitted to")
    return fig
