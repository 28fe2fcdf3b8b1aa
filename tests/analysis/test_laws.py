"""Accuracy of the parametric fits on synthetic data drawn from known laws."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import check_grad

from analysis import lse_fit
from analysis.errors import UserError
from analysis.laws import LAWS, fit_lse_law
from analysis.points import Points, load_points
from tests.analysis.seeds import over_seeds

TRUE = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}


def chinchilla_points(seed: int, noise: float, sizes: int = 6, budgets: int = 6) -> pd.DataFrame:
    """A realistic design: 6 sizes (1e7-1e10 parameters) x 6 token counts (1e9-1e12)."""
    rng = np.random.default_rng(seed)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, sizes), np.geomspace(1e9, 1e12, budgets)))
    loss = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    return pd.DataFrame({"n_params": n, "data_units": d, "final_loss": loss * np.exp(rng.normal(0, noise, n.size))})


def test_analytic_gradient_matches_finite_differences():
    df = chinchilla_points(0, 0.01)
    logx, logy = np.log(df[["n_params", "data_units"]].to_numpy()), np.log(df["final_loss"].to_numpy())
    rng = np.random.default_rng(1)
    for _ in range(5):
        p = rng.normal([0.5, 6, 0.3, 6, 0.3], 0.2)
        w = rng.integers(0, 3, len(df)).astype(float)
        f = lambda q: lse_fit.objective(q, logx, logy, True, w)[0]  # noqa: E731
        g = lambda q: lse_fit.objective(q, logx, logy, True, w)[1]  # noqa: E731
        assert check_grad(f, g, p) < 1e-6 * max(1.0, np.abs(g(p)).max())


def _one_variable(points: pd.DataFrame, column: str, with_e: bool) -> pd.DataFrame:
    """L = E + A/x^α (or A/x^α) on ``column`` of ``points``, 1% noise."""
    x = points[column].to_numpy()
    loss = (TRUE["E"] if with_e else 0.0) + TRUE["A"] / x ** TRUE["alpha"]
    return points.assign(final_loss=loss * np.exp(np.random.default_rng(4).normal(0, 0.01, len(x))))


@pytest.mark.parametrize("case", ["chinchilla", "saturating", "power", "misspecified"])
def test_batched_newton_refits_reach_the_optimum_l_bfgs_reaches(case):
    """The bootstrap's warm refits (``laws._refit_chunk``: batched Newton, then L-BFGS for the
    rows Newton did not converge) against L-BFGS alone, resample by resample, from the same
    start and scale: the same optimum and parameters."""
    from analysis.laws import _refit_chunk, resample_weights

    grid = chinchilla_points(2, 0.01)
    df, columns, with_e = {
        "chinchilla": (grid, ["n_params", "data_units"], True),
        "saturating": (_one_variable(chinchilla_points(2, 0, sizes=24, budgets=1), "n_params", True), ["n_params"], True),
        "power": (_one_variable(chinchilla_points(2, 0, sizes=24, budgets=1), "n_params", False), ["n_params"], False),
        # L(N) on a grid whose D varies too: indefinite Hessians, where Newton gives up on
        # many rows and L-BFGS takes them
        "misspecified": (grid, ["n_params"], True),
    }[case]
    logx, logy = np.log(df[columns].to_numpy()), np.log(df["final_loss"].to_numpy())
    best = lse_fit.fit_from_grid(logx, logy, with_e).best.params
    weights = resample_weights(np.arange(len(df)), 40, seed=5)
    refits = _refit_chunk((logx, logy, with_e, best, weights, 32))
    if case == "misspecified":
        assert not lse_fit.newton_refits(best, logx, logy, with_e, weights)[1].all()  # the fallback runs
    scale = lse_fit.objective(best, logx, logy, with_e)[0]
    for w, p in zip(weights, refits):
        reference = lse_fit.optimize(best, logx, logy, with_e, w, scale)
        assert lse_fit.objective(p, logx, logy, with_e, w)[0] <= reference.objective * (1 + 1e-9)
        np.testing.assert_allclose(p, reference.params, rtol=1e-4, atol=1e-6)


def _chinchilla_recovered(seed: int) -> bool:
    r = fit_lse_law(LAWS["chinchilla"], load_points(chinchilla_points(seed, 0.0025)), bootstrap=0, held_out=False)
    p = {k: v.value for k, v in r.params.items()}
    return (abs(p["alpha"] / TRUE["alpha"] - 1) < 0.05 and abs(p["beta"] / TRUE["beta"] - 1) < 0.05
            and abs(p["E"] / TRUE["E"] - 1) < 0.02)


def test_chinchilla_recovers_the_truth_at_quarter_percent_noise():
    assert sum(over_seeds(_chinchilla_recovered, range(20))) >= 19


def _chinchilla_covers(seed: int) -> bool:
    r = fit_lse_law(LAWS["chinchilla"], load_points(chinchilla_points(seed, 0.01)), bootstrap=200,
                    seed=seed, check_resamples=0, held_out=False, workers=1)
    return all(r.params[k].low <= TRUE[k] <= r.params[k].high for k in ("alpha", "beta", "E"))


@pytest.mark.slow
def test_chinchilla_intervals_cover_the_truth_at_one_percent_noise():
    assert sum(over_seeds(_chinchilla_covers, range(20))) >= 17


def _warm_or_cold(warm: bool):
    points = load_points(chinchilla_points(3, 0.01))
    if warm:
        return fit_lse_law(LAWS["chinchilla"], points, bootstrap=60, seed=7, workers=1)
    return fit_lse_law(LAWS["chinchilla"], points, bootstrap=60, seed=7, workers=1, warm=False, top_k=8)


@pytest.mark.slow
def test_warm_started_bootstrap_matches_a_cold_started_one():
    """The stopping rule matters: with scipy's default tolerances, warm-started refits barely
    move from the full-data optimum and the intervals collapse. Ours must match cold starts."""
    warm, cold = over_seeds(_warm_or_cold, [True, False])
    for name in ("E", "alpha", "beta"):
        w, c = warm.params[name], cold.params[name]
        width = c.high - c.low
        assert width > 0
        assert abs(w.low - c.low) < 0.05 * width + 1e-9 and abs(w.high - c.high) < 0.05 * width + 1e-9
    assert warm.diagnostics["bootstrap_check"]["same_optimum"] == warm.diagnostics["bootstrap_check"]["sampled"]


def test_allocation_exponents_follow_from_alpha_and_beta():
    r = fit_lse_law(LAWS["chinchilla"], load_points(chinchilla_points(0, 0.0025)), bootstrap=0)
    alpha, beta = r.params["alpha"].value, r.params["beta"].value
    assert r.derived["a"].value == pytest.approx(beta / (alpha + beta))
    assert r.derived["b"].value == pytest.approx(alpha / (alpha + beta))
    assert r.derived["a"].value + r.derived["b"].value == pytest.approx(1.0)


def _power_n_recovered(seed: int) -> bool:
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e6, 1e10, 9)
    loss = (2.0 + 300 / n ** 0.3) * np.exp(rng.normal(0, 0.0025, n.size))
    df = pd.DataFrame({"n_params": n, "data_units": 1e9, "final_loss": loss})
    r = fit_lse_law(LAWS["power_N"], load_points(df), bootstrap=0)
    return abs(r.params["alpha"].value / 0.3 - 1) < 0.05 and abs(r.params["E"].value / 2.0 - 1) < 0.02


def test_single_variable_laws_recover_their_exponents():
    assert sum(over_seeds(_power_n_recovered, range(20))) >= 19
    # the pure form without E: an exact power law is recovered exactly
    n = np.geomspace(1e6, 1e10, 9)
    df = pd.DataFrame({"n_params": n, "data_units": 1e9, "final_loss": 50 * n ** -0.2})
    r = fit_lse_law(LAWS["kaplan_N"], load_points(df), bootstrap=0)
    assert r.params["alpha"].value == pytest.approx(0.2, rel=1e-4) and "E" not in r.params
    assert r.r2_log == pytest.approx(1.0)


def _power_n_covers(seed: int) -> bool:
    rng = np.random.default_rng(100 + seed)
    n = np.geomspace(1e6, 1e10, 9)
    loss = (2.0 + 300 / n ** 0.3) * np.exp(rng.normal(0, 0.01, n.size))
    df = pd.DataFrame({"n_params": n, "data_units": 1e9, "final_loss": loss})
    r = fit_lse_law(LAWS["power_N"], load_points(df), bootstrap=200, seed=seed,
                    check_resamples=0, held_out=False, workers=1)
    return r.params["alpha"].low <= 0.3 <= r.params["alpha"].high and r.params["E"].low <= 2.0 <= r.params["E"].high


@pytest.mark.slow
def test_single_variable_intervals_cover_the_truth_at_one_percent_noise():
    assert sum(over_seeds(_power_n_covers, range(20))) >= 17


def test_predictions_say_how_far_they_extrapolate():
    r = fit_lse_law(LAWS["chinchilla"], load_points(chinchilla_points(0, 0.0025)), bootstrap=50,
                    predict=[{"N": 1e11, "D": 1e12}, {"C": 1e24}])
    first, second = r.predictions
    assert first["extrapolation"] == pytest.approx(10.0)  # 1e11 over the largest N, 1e10
    assert first["loss"].low <= first["loss"].value <= first["loss"].high
    truth = TRUE["E"] + TRUE["A"] / 1e11 ** 0.34 + TRUE["B"] / 1e12 ** 0.28
    assert first["loss"].value == pytest.approx(truth, rel=0.01)
    assert second["N"] * second["D"] * 6 == pytest.approx(1e24, rel=1e-6)  # compute-optimal split
    assert second["D_per_N"] == pytest.approx(second["D"] / second["N"])


def test_too_few_points_is_a_clear_error():
    df = chinchilla_points(0, 0.01).head(5)
    with pytest.raises(UserError, match="needs at least 6"):
        fit_lse_law(LAWS["chinchilla"], load_points(df), bootstrap=0)


def test_unidentifiable_design_warns():
    df = chinchilla_points(0, 0.0025)
    df = df[df["n_params"].isin(sorted(df["n_params"].unique())[:2])]
    r = fit_lse_law(LAWS["chinchilla"], Points(load_points(df).frame), bootstrap=0)
    assert any("only 2 distinct N" in w for w in r.warnings)


def test_a_points_seeds_are_resampled_together_and_their_spread_reported():
    from analysis.laws import resample_weights, seed_spread

    rng = np.random.default_rng(4)
    base = chinchilla_points(0, 0.0)
    runs = pd.concat([base.assign(final_loss=base["final_loss"] * np.exp(rng.normal(0, 0.02, len(base))))
                      for _ in range(3)], ignore_index=True)  # 3 seeds per point, 2% run-to-run noise
    points = load_points(runs)
    groups = points.frame["point"].to_numpy()
    assert len(np.unique(groups)) == len(base)
    weights = resample_weights(groups, 50, 0)
    for w in weights:  # whole points, never single runs
        assert w.sum() == len(runs)
        assert all(len(set(w[groups == g])) == 1 for g in np.unique(groups))
    # one row per point: the plain multinomial resample, as before seeds existed
    plain = np.random.default_rng(0).multinomial(len(base), np.full(len(base), 1 / len(base)), size=50)
    assert (resample_weights(np.arange(len(base)), 50, 0) == plain).all()
    spread = seed_spread(np.log(points.frame["loss"].to_numpy()), groups)
    assert spread["points_with_seeds"] == len(base) and spread["runs"] == len(runs)
    assert spread["rel_std"] == pytest.approx(0.02, rel=0.2)
    r = fit_lse_law(LAWS["chinchilla"], points, bootstrap=40, held_out=False, workers=1)
    assert r.diagnostics["seed_spread"]["rel_std"] == pytest.approx(spread["rel_std"])
