"""The report's figure builders and page: traces present, their data matching the tables and
fits, sections only where their data exist, user text escaped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.fit import fit_laws
from analysis.laws import law_value
from analysis.records import EVALS, LOSS, TRIALS, Status
from analysis.report import build_report, fit_and_report, load_results, report_figures
from analysis.report.allocation_figures import (
    chinchilla_contours,
    frontier_figure,
    isoflop_figure,
    residuals_figure,
)
from analysis.report.emergence_figures import capability_tasks, emergence_figure
from analysis.report.figures import scaling_figure, training_curves
from tests.analysis.report_data import HOSTILE, make_results


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("report") / "synthetic")


@pytest.fixture(scope="module")
def data(folder):
    return load_results(folder)


@pytest.fixture(scope="module")
def fits(data):
    return fit_laws(data.trials, bootstrap=40, seed=0, log=lambda m: None,
                    predict=["N=1e10,D=2e11", "C=1e22"])


def _by_name(fig, name):
    return [t for t in fig.data if t.name == name]


def test_training_curves_have_two_traces_per_trial_matching_the_evals(data):
    fig = training_curves(data.trials, data.evals)
    curves = [t for t in fig.data if t.name]
    loss = data.evals[data.evals[EVALS.metric] == LOSS]
    assert len(curves) == 2 * loss[EVALS.trial_id].nunique()
    for trace in curves:
        rows = loss[loss[EVALS.trial_id] == trace.name].sort_values(EVALS.step)
        assert list(trace.y) == pytest.approx(rows[EVALS.value].tolist())
        assert list(trace.x) in (pytest.approx(rows[EVALS.data_units].tolist()), pytest.approx(rows[EVALS.flops].tolist()))
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    # one colour per size: the smallest and the largest N differ
    ran = data.trials[data.trials[TRIALS.trial_id].isin(loss[EVALS.trial_id])].sort_values(TRIALS.n_params)
    small, large = _by_name(fig, ran.iloc[0][TRIALS.trial_id])[0], _by_name(fig, ran.iloc[-1][TRIALS.trial_id])[0]
    assert small.line.color != large.line.color


def test_scaling_figure_points_match_completed_trials_and_laws_are_drawn(data, fits):
    fig = scaling_figure(data.trials, fits, "C")
    done = data.trials[data.trials[TRIALS.status] == Status.COMPLETED]
    # 20 distinct N (an isoflop sweep): one series of points coloured by N, not 20 series
    points = [t for t in fig.data if t.mode == "markers" and t.name == "trials"]
    assert len(points) == 1 and len(set(points[0].marker.color)) == 20
    xs = sorted(x for t in points for x in t.x)
    assert xs == pytest.approx(sorted(done[TRIALS.flops]))
    chin = next(f for f in fits if f.law == "chinchilla")
    line = _by_name(fig, "chinchilla, compute-optimal N and D")[0]
    # the frontier curve is the law at the compute-optimal split of each C
    c = np.asarray(line.x)
    g, a, b = (chin.derived[k].value for k in ("G", "a", "b"))
    expected = law_value("chinchilla", {k: v.value for k, v in chin.params.items()},
                         N=g * (c / 6) ** a, D=(c / 6) ** b / g)
    assert list(line.y) == pytest.approx(list(expected))
    # a 95% band (filled) goes with it, and it brackets the line
    fills = [t for t in fig.data if t.fill == "tonexty" and t.legendgroup == line.legendgroup]
    assert len(fills) == 1
    upper = next(t for t in fig.data if t.legendgroup == line.legendgroup and t.fill is None and t is not line)
    assert np.all(np.asarray(fills[0].y) <= np.asarray(line.y) + 1e-12)
    assert np.all(np.asarray(upper.y) >= np.asarray(line.y) - 1e-12)


def test_predictions_are_drawn_with_their_interval_and_the_extrapolation_is_shaded(data, fits):
    fig = scaling_figure(data.trials, fits, "N")
    chin = next(f for f in fits if f.law == "chinchilla")
    target = next(p for p in chin.predictions if p.get("D") == 2e11)
    marker = _by_name(fig, "chinchilla prediction at N=1e+10, D=2e+11, C=1.2e+22")[0]
    assert marker.x[0] == 1e10 and marker.y[0] == pytest.approx(target["loss"].value)
    assert marker.error_y.array[0] == pytest.approx(target["loss"].high - target["loss"].value)
    shaded = [s for s in fig.layout.shapes if s.type == "rect"]
    completed = data.trials[TRIALS.status] == Status.COMPLETED
    assert len(shaded) == 1 and shaded[0].x0 == pytest.approx(data.trials[TRIALS.n_params][completed].max())
    assert shaded[0].x1 == pytest.approx(1e10)
    # without targets nothing is shaded
    plain = fit_laws(data.trials, laws=["kaplan_C"], bootstrap=0, log=lambda m: None)
    assert not [s for s in scaling_figure(data.trials, plain, "C").layout.shapes]
    # and without a bootstrap there is no band
    assert _by_name(scaling_figure(data.trials, plain, "C"), "kaplan_C (α=" + f"{plain[0].params['alpha'].value:.3g})")
    assert not [t for t in scaling_figure(data.trials, plain, "C").data if t.fill == "tonexty"]


def test_isoflop_figure_marks_each_budgets_minimum(data, fits):
    iso = next(f for f in fits if f.law == "isoflop")
    fig = isoflop_figure(data.trials, iso)
    stars = [t for t in fig.data if t.marker is not None and t.marker.symbol in ("star", "star-open")]
    assert sorted(s.x[0] for s in stars) == pytest.approx(sorted(b["N_opt"] for b in iso.diagnostics["budgets"]))
    assert len(iso.diagnostics["budgets"]) == 4


def test_frontier_shows_both_estimates_of_n_opt(data, fits):
    fig = frontier_figure(data.trials, fits, targets_c=[1e22])
    names = {t.name for t in fig.data if t.showlegend is not False}
    assert any(n.startswith("chinchilla: a=") for n in names) and any(n.startswith("isoflop: a=") for n in names)
    iso = next(f for f in fits if f.law == "isoflop")
    stars = [t for t in fig.data if t.marker is not None and t.marker.symbol == "star"]
    assert sorted(stars[0].x) == pytest.approx(sorted(b["C"] for b in iso.diagnostics["budgets"]))
    assert max(max(t.x) for t in fig.data if t.x is not None and len(t.x)) == pytest.approx(1e22)


def test_contours_are_the_fitted_law(data, fits):
    chin = next(f for f in fits if f.law == "chinchilla")
    fig = chinchilla_contours(data.trials, chin)
    contour = fig.data[0]
    z = np.asarray(contour.z)
    i, j = 10, 70
    expected = law_value("chinchilla", {k: v.value for k, v in chin.params.items()},
                         N=10 ** contour.x[j], D=10 ** contour.y[i])
    assert z[i, j] == pytest.approx(float(expected))
    assert _by_name(fig, "efficient frontier") and len(_by_name(fig, "trials")[0].x) == 20


def test_residuals_are_observed_over_fitted(data, fits):
    fig = residuals_figure(data.trials, fits)
    trace = _by_name(fig, "chinchilla")[0]
    chin = next(f for f in fits if f.law == "chinchilla")
    done = data.trials[data.trials[TRIALS.status] == Status.COMPLETED].set_index(TRIALS.trial_id)
    for tid, y in zip(trace.customdata[:, 0], trace.y):
        row = done.loc[tid]
        pred = law_value("chinchilla", {k: v.value for k, v in chin.params.items()}, N=row[TRIALS.n_params],
                         D=row[TRIALS.data_units])
        assert y == pytest.approx(row[TRIALS.final_loss] / float(pred) - 1)
    assert max(abs(np.asarray(trace.y))) < 0.03  # 0.5% noise around the true law


def test_emergence_panel_puts_the_discontinuous_metric_first_and_draws_flags(data):
    assert capability_tasks(data.evals) == {"addition": ["exact_match", "logprob"]}
    fig = emergence_figure(data.trials, data.evals, "addition", flags=data.emergence)
    assert [a.text for a in fig.layout.annotations][:2] == ["exact_match (discontinuous)", "logprob (continuous)"]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].x0 == 1.5e18
    first = fig.data[0]
    done = data.trials[data.trials[TRIALS.status] == Status.COMPLETED]
    assert len(first.x) == len(done)
    assert any("emergent: onset 1.5e+18" in a.text for a in fig.layout.annotations)


def test_report_has_every_section_and_escapes_user_text(data, fits):
    page = build_report(data, fits)
    for title in ("Trials", "Training curves", "Scaling: final loss vs N, D and C",
                  "IsoFLOP profiles and the compute-optimal frontier", "Chinchilla law", "Fits", "Emergence", "Samples"):
        assert f"<h2>{title}</h2>" in page
    assert HOSTILE not in page and "&lt;script&gt;window.__injected = 1&lt;/script&gt;" in page
    assert page.count('class="plotly-graph-div"') == len(report_figures(data, fits)) == 9
    assert page.count('<img alt="ddpm samples" src="data:image/png;base64,') == 3
    assert "21: 20 completed, 1 failed" in page
    assert page.count("* plotly.js v") == 1  # plotly.js embedded once, for every figure


def test_sections_without_data_are_left_out(tmp_path):
    trials = pd.DataFrame({TRIALS.trial_id: ["a", "b"], TRIALS.status: ["completed", "failed"],
                           TRIALS.n_params: [1e6, 2e6], TRIALS.data_units: [1e8, 1e8], TRIALS.flops: [6e14, 1.2e15],
                           TRIALS.final_loss: [3.0, np.nan], TRIALS.error: ["", "boom"]})
    trials.to_parquet(tmp_path / TRIALS.file)
    out = fit_and_report(tmp_path, out=tmp_path / "r.html", bootstrap=0, log=lambda m: None).report
    page = open(out).read()
    assert "<h2>Trials</h2>" in page and "Training curves" not in page and "<h2>Fits</h2>" not in page
    assert "No scaling-law fit:" in page and "boom" in page
    assert not list(tmp_path.glob(".r.html.tmp*"))


def test_a_folder_without_trials_is_a_clear_error(tmp_path):
    from analysis.errors import UserError

    with pytest.raises(UserError, match="trials.parquet"):
        load_results(tmp_path)


def test_fits_round_trip_through_json_with_their_bootstrap_draws(fits):
    import json

    from analysis.results import FitResult

    for fit in fits:
        back = FitResult.from_json(json.loads(json.dumps(fit.to_json(with_samples=True))))
        assert back.law == fit.law and back.params == fit.params and back.derived == fit.derived
        assert set(back.samples) == set(fit.samples)
        for key, draws in fit.samples.items():
            assert np.allclose(back.samples[key], draws, equal_nan=True)
        assert json.dumps(back.to_json()) == json.dumps(fit.to_json())
    assert "samples" not in fits[0].to_json()  # `scalinglab fit --format json` stays as documented


def test_report_reuses_the_sweeps_current_fits_and_refits_stale_ones(tmp_path, fits):
    import json
    import os

    folder = make_results(tmp_path / "s", capability=False, samples=False)
    fits_json = folder / "fits.json"
    fits_json.write_text(json.dumps({"fits": [f.to_json(with_samples=True) for f in fits]}))
    said = []
    page = open(fit_and_report(folder, out=tmp_path / "a.html", log=said.append).report).read()
    assert any("using the sweep's fits" in line for line in said) and "fill\":\"tonexty" in page
    # a trials table newer than the fits (a resumed sweep) means a fresh fit
    later = fits_json.stat().st_mtime + 10
    os.utime(folder / TRIALS.file, (later, later))
    said.clear()
    fit_and_report(folder, out=tmp_path / "b.html", bootstrap=0, log=said.append)
    assert any("fitting laws" in line for line in said)


def test_an_unbounded_band_does_not_stretch_the_axis_and_says_so(data, fits):
    """A fit whose draws run away (an unidentified parameter) must not autoscale the loss axis
    to 10⁶: the axis keeps to the data, and the legend says the band was cut."""
    import copy

    wild = copy.deepcopy(next(f for f in fits if f.law == "kaplan_C"))
    wild.samples["A"] = wild.samples["A"] * np.geomspace(1e-3, 1e6, len(wild.samples["A"]))
    fig = scaling_figure(data.trials, [wild], "C")
    low, high = fig.layout.yaxis.range
    losses = data.trials[TRIALS.final_loss].dropna()
    assert 10 ** low <= losses.min() and 10 ** high >= losses.max()
    assert 10 ** high < 2 * losses.max()  # not stretched by the band
    assert any("unbounded" in (t.name or "") for t in fig.data)
    # the same fit with its own draws, over the data's range, stays within the axis: nothing is marked
    plain = copy.deepcopy(next(f for f in fits if f.law == "kaplan_C"))
    plain.predictions = []
    assert not any("unbounded" in (t.name or "") for t in scaling_figure(data.trials, [plain], "C").data)


def test_the_header_reports_the_trials_time_when_a_killed_driver_recorded_none(tmp_path):
    import json

    from analysis.report.html import header

    folder = make_results(tmp_path / "killed", capability=False, samples=False)
    runs = json.loads((folder / "run.json").read_text())
    runs["runs"][0]["wall_s"] = None  # the driver died before it could write its own
    (folder / "run.json").write_text(json.dumps(runs))
    text = header(load_results(folder))
    assert "120 s from the first trial's start to the last one's finish" in text and "0 s over" not in text
