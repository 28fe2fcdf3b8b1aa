"""IsoFLOP profiles and the training-curve envelope on data drawn from a known Chinchilla law."""

import numpy as np
import pandas as pd
import pytest

from analysis.allocation import fit_envelope, fit_isoflop
from analysis.errors import UserError
from analysis.points import load_points
from tests.analysis.seeds import over_seeds

E, A, B, ALPHA, BETA = 1.7, 400.0, 400.0, 0.34, 0.28
TRUE_A = BETA / (ALPHA + BETA)  # N_opt ∝ C^a
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))


def law(n, d):
    return E + A / n ** ALPHA + B / d ** BETA


def isoflop_points(seed: int, noise: float) -> pd.DataFrame:
    """5 budgets, 9 sizes each spanning ±1 decade around the true optimum."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.geomspace(1e18, 1e22, 5):
        n_opt = G * (c / 6) ** TRUE_A
        for n in n_opt * np.geomspace(0.1, 10, 9):
            d = c / (6 * n)
            rows.append({"n_params": n, "data_units": d, "flops": c, "compute_budget": c,
                         "final_loss": law(n, d) * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)


def test_isoflop_recovers_the_allocation_exponent():
    hits = 0
    for seed in range(20):
        r = fit_isoflop(load_points(isoflop_points(seed, 0.0025)), bootstrap=0)
        hits += abs(r.params["a"].value / TRUE_A - 1) < 0.05
        assert r.params["a"].value + r.params["b"].value == pytest.approx(1.0)  # C = 6·N·D
    assert hits >= 19


def _isoflop_covers(seed: int) -> bool:
    r = fit_isoflop(load_points(isoflop_points(seed, 0.01)), bootstrap=300, seed=seed)
    return r.params["a"].low <= TRUE_A <= r.params["a"].high


@pytest.mark.slow
def test_isoflop_intervals_cover_the_truth_at_one_percent_noise():
    assert sum(over_seeds(_isoflop_covers, range(20))) >= 17


def test_isoflop_reports_each_budget_and_needs_two():
    r = fit_isoflop(load_points(isoflop_points(0, 0.0025)), bootstrap=0)
    budgets = r.diagnostics["budgets"]
    assert len(budgets) == 5 and all(b["minimum_inside"] for b in budgets)
    assert all(b["D_per_N"] == pytest.approx(b["D_opt"] / b["N_opt"]) for b in budgets)
    one = isoflop_points(0, 0.0025)
    one = one[one["compute_budget"] == one["compute_budget"].min()]
    with pytest.raises(UserError, match="needs at least 2"):
        fit_isoflop(load_points(one), bootstrap=0)


def end_points(sizes=12, budgets=12):
    """Each size trained to each of a dozen token budgets: one finished run (its end point) per pair."""
    rows = []
    for i, n in enumerate(np.geomspace(1e7, 1e10, sizes)):
        for j, d in enumerate(np.geomspace(1e9, 2e12, budgets)):
            rows.append({"trial_id": f"t{i}-{j}", "n_params": n, "data_units": d, "flops": 6 * n * d,
                         "final_loss": law(n, d), "status": "completed"})
    return pd.DataFrame(rows)


def test_envelope_finds_the_compute_optimal_sizes():
    trials = end_points()
    r = fit_envelope(load_points(trials), bootstrap=50)
    assert r.derived["a"].value == pytest.approx(TRUE_A, rel=0.15)
    # the envelope is below (or on) every point of no more compute
    for point in r.diagnostics["envelope"]:
        cheaper = trials[trials["flops"] <= point["C"]]
        assert point["loss"] <= cheaper["final_loss"].min()
    assert r.params["alpha"].value > 0


def test_envelope_needs_trials_on_the_frontier():
    with pytest.raises(UserError, match="at least 3 trials"):
        fit_envelope(load_points(end_points().head(2)), bootstrap=0)
