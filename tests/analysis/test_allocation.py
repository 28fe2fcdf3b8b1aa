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


def curves(sizes=12, steps=20):
    """Training curves: every size trained to 2e12 tokens, evaluated at log-spaced points."""
    trials, evals = [], []
    for i, n in enumerate(np.geomspace(1e7, 1e10, sizes)):
        tid = f"t{i}"
        trials.append({"trial_id": tid, "n_params": n, "data_units": 2e12, "flops": 6 * n * 2e12,
                       "final_loss": law(n, 2e12), "status": "completed"})
        for d in np.geomspace(1e8, 2e12, steps):
            evals.append({"trial_id": tid, "step": 0, "data_units": d, "flops": 6 * n * d, "metric": "loss",
                          "value": law(n, d)})
    return pd.DataFrame(trials), pd.DataFrame(evals)


def test_envelope_finds_the_compute_optimal_sizes():
    trials, evals = curves()
    points = load_points(trials)
    points.evals = evals
    r = fit_envelope(points, bootstrap=50)
    assert r.derived["a"].value == pytest.approx(TRUE_A, rel=0.15)
    env = r.diagnostics["envelope"]
    # the envelope is below (or on) every trial's curve at each C it covers
    for point in env:
        same_c = evals[np.isclose(evals["flops"], point["C"], rtol=0.02)]
        if len(same_c):
            assert point["loss"] <= same_c["value"].min() * 1.001
    assert r.params["alpha"].value > 0


def test_envelope_needs_evaluation_rows():
    trials, _ = curves()
    with pytest.raises(UserError, match="per-evaluation rows"):
        fit_envelope(load_points(trials), bootstrap=0)
