"""The emergence detector's error rates on simulated series with known answers
(``analysis/emergence_calibration.py``), at its default level: at most 1% of smooth curves
called emergent, at least 90% of steps of 5 standard errors (of the difference of the points
either side) detected with the true step inside the threshold bracket.

Seeded, so each run measures the same draws; ``benchmarks/emergence_calibration.py`` measures
more draws and other levels (docs/emergence.md quotes it)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.emergence import LEVEL
from analysis.emergence_calibration import rates, smooth_draw, step_draw, verdict, wilson
from analysis.records import Verdict

SMOOTH, STEPS = 1500, 500  # per noise model


@pytest.fixture(scope="module")
def measured() -> dict:
    return {noise: rates(noise, smooth=SMOOTH, steps=STEPS, seed=0) for noise in ("binomial", "gaussian")}


def test_smooth_curves_are_rarely_called_emergent(measured):
    alarms = sum(r["false_alarm"]["all"][0] for r in measured.values())
    total = sum(r["false_alarm"]["all"][1] for r in measured.values())
    assert total == 2 * SMOOTH and alarms / total <= 0.01, {k: r["false_alarm"] for k, r in measured.items()}
    for noise, r in measured.items():  # each noise model on its own, within its sampling error of 1%
        assert wilson(*r["false_alarm"]["all"])[0] <= 0.01, (noise, r["false_alarm"])
        # no family carries the false alarms alone: each stays under 2% of its own curves
        assert all(v[0] / v[1] <= 0.02 for v in r["false_alarm"].values()), (noise, r["false_alarm"])


def test_steps_of_five_standard_errors_are_found_where_they_are(measured):
    hits = sum(r["detection"]["all"][0] for r in measured.values())
    total = sum(r["detection"]["all"][1] for r in measured.values())
    assert total == 2 * STEPS and hits / total >= 0.90, {k: r["detection"] for k, r in measured.items()}
    for noise, r in measured.items():  # each noise model on its own, within its sampling error of 90%
        assert wilson(*r["detection"]["all"])[1] >= 0.90, (noise, r["detection"])
    # more scales, more power: 10-12 scales find more than 5-6 do
    few = sum(r["detection"][n][0] for r in measured.values() for n in (5, 6))
    few_n = sum(r["detection"][n][1] for r in measured.values() for n in (5, 6))
    many = sum(r["detection"][n][0] for r in measured.values() for n in (10, 11, 12))
    many_n = sum(r["detection"][n][1] for r in measured.values() for n in (10, 11, 12))
    assert many / many_n > few / few_n


def test_without_standard_errors_the_rates_are_measured_too():
    """No errors given: estimated from the best curve's residuals. Less reliable (the docs say
    how much), but not a coin toss: few false alarms, most steps found."""
    r = rates("unknown", smooth=400, steps=200, seed=0)
    assert r["false_alarm"]["all"][0] / r["false_alarm"]["all"][1] <= 0.02
    assert r["detection"]["all"][0] / r["detection"]["all"][1] >= 0.75


def test_a_higher_level_calls_more_on_the_same_draws():
    rng = np.random.default_rng(5)
    draws = [step_draw(rng, "gaussian", size=3.5) for _ in range(60)] + [smooth_draw(rng, "binomial") for _ in range(60)]
    strict = [verdict(d, LEVEL / 10).verdict == Verdict.EMERGENT for d in draws]
    loose = [verdict(d, LEVEL * 5).verdict == Verdict.EMERGENT for d in draws]
    assert all(b for a, b in zip(strict, loose) if a)  # every strict call stands at the looser level
    assert sum(loose) > sum(strict)

