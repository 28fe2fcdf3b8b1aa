"""The adaptive design (``analysis.design``) on a cheap simulated objective: a known
Chinchilla law observed with seeded noise, no training. Its criterion against the exact
linear-Gaussian answer; decisions deterministic given the seed; the stopping rules; a design
saved and restored mid-way making the same decisions as one that ran through."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest

from analysis.design import Design, _pick
from analysis.laws import law_value
from analysis.adaptive_spec import AdaptiveSpec, Target
from analysis.records import StopReason

TRUTH = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def region(sizes: int = 4, budgets: int = 5) -> pd.DataFrame:
    rows = [(f"n{i}-d{j}", n, d) for i, n in enumerate(np.geomspace(1e7, 1e9, sizes))
            for j, d in enumerate(np.geomspace(2e8, 2e10, budgets))]
    frame = pd.DataFrame(rows, columns=["key", "N", "D"])
    frame["C"] = frame["cost"] = 6 * frame["N"] * frame["D"]
    return frame


def observe(frame: pd.DataFrame, seed: int, noise: float = 0.005) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    loss = law_value("chinchilla", TRUTH, N=frame["N"].to_numpy(), D=frame["D"].to_numpy())
    return dict(zip(frame["key"], loss * np.exp(noise * rng.standard_normal(len(frame)))))


def settings(**kw) -> AdaptiveSpec:
    return AdaptiveSpec(**{"target": Target(C=1e21), "bootstrap": 60, "stop_width": 1e-4, "max_trials": 10, **kw})


def run(design: Design, losses: dict[str, float], rounds: int = 100) -> Design:
    """The seed design if not made yet; then observe every chosen run at once, decide, repeat
    (at most ``rounds`` decisions)."""
    if not design.chosen:
        design.seed_design()
    for _ in range(rounds):
        for key in design.chosen:
            if key not in design.observed:
                design.observe(key, losses[key])
        if not design.decide():
            break
    return design


def test_the_criterion_is_the_exact_variance_reduction_of_a_linear_gaussian_model():
    """g = θ1, f_x = θ0 + x·θ1 with θ ~ N(0, I): observing f_x + ε leaves Var(g) =
    1 − x²/(1 + x² + σ²). The draws stand in for the Gaussian; the pick is the candidate with
    the largest reduction per unit cost, and the predicted width ratio is the exact one."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((200_000, 2))
    xs = np.array([0.5, -2.0, 1.0, 3.0])
    cand = theta[:, :1] + theta[:, 1:] * xs
    sigma2 = 0.25
    exact = xs ** 2 / (1 + xs ** 2 + sigma2)
    picks, scores, ratio = _pick(theta[:, 1], cand, sigma2, lambda _: np.ones(4), np.ones(4, bool), [], 1)
    assert picks == [3] and np.allclose(scores, exact, atol=0.01)
    assert ratio == pytest.approx(math.sqrt(1 - exact[3]), abs=0.01)
    cost = np.array([1.0, 1.0, 1.0, 10.0])  # the best run is dear: the next best per unit cost wins
    assert _pick(theta[:, 1], cand, sigma2, lambda _: cost, np.ones(4, bool), [], 1)[0] == [1]
    # a run in flight counts as observed: x=3 pending leaves less for x=-2 than it alone would
    after = _pick(theta[:, 1], cand, sigma2, lambda _: np.ones(4), np.array([1, 1, 1, 0], bool), [3], 1)[1]
    assert after[1] < exact[1] - 0.1


def test_decisions_are_deterministic_given_the_seed():
    frame = region()
    losses = observe(frame, seed=3)
    first, second = (run(Design(frame, settings(max_trials=9)), losses) for _ in range(2))
    assert len(first.decisions) == 3  # 6 seed points, then 3 choices
    pd.testing.assert_frame_equal(first.frame(), second.frame())
    other = run(Design(frame, settings(max_trials=9, seed=1)), losses)
    assert not np.allclose(other.frame()["width"], first.frame()["width"])  # the bootstrap's seed is used


def test_the_seed_design_spans_three_sizes_and_budgets_in_the_cheaper_half():
    frame = region()
    design = Design(frame, settings())
    seed = frame.set_index("key").loc[design.seed_design()]
    assert len(seed) == 6 and seed["N"].nunique() >= 3 and seed["D"].nunique() >= 3
    assert seed["cost"].max() <= math.sqrt(frame["cost"].min() * frame["cost"].max()) * 1.000001


@pytest.mark.parametrize("rule", ["max_trials", "max_flops", "stop_width"])
def test_each_stopping_rule_holds(rule):
    frame = region()
    losses = observe(frame, seed=5)
    if rule == "max_trials":
        design = run(Design(frame, settings(max_trials=8)), losses)
        assert design.stopped is StopReason.MAX_TRIALS and len(design.chosen) == 8
    elif rule == "max_flops":
        probe = Design(frame, settings())
        probe.seed_design()
        budget = probe.spent + frame["cost"].median()  # the seed design and about one more run
        design = run(Design(frame, settings(max_flops=budget, max_trials=40)), losses)
        assert design.stopped is StopReason.MAX_FLOPS and design.spent <= budget
        unchosen = ~frame["key"].isin(design.chosen).to_numpy()
        assert (design.costs()[unchosen] > budget - design.spent).all()  # none of them fits any more
    else:
        design = run(Design(frame, settings(stop_width=10.0)), losses)  # met by the seed design's fit
        assert design.stopped is StopReason.WIDTH and design.decisions == [] and design.last.width <= 10.0
    assert design.decide() == []  # stopped stays stopped


def test_a_design_restored_mid_way_makes_the_same_decisions():
    frame = region()
    losses = observe(frame, seed=7)
    through = run(Design(frame, settings(max_trials=10)), losses)
    halfway = run(Design(frame, settings(max_trials=10)), losses, rounds=2)
    restored = run(pickle.loads(pickle.dumps(halfway)), losses)
    pd.testing.assert_frame_equal(through.frame(), restored.frame())
    assert through.chosen == restored.chosen


def test_a_failed_run_is_not_a_point_and_is_not_chosen_again():
    frame = region()
    losses = observe(frame, seed=2)
    design = Design(frame, settings(max_trials=9))
    seed = design.seed_design()
    losses[seed[0]] = math.nan  # it failed
    run(design, losses)
    assert design.last.n_points == len(design.chosen) - 1 and design.chosen.count(seed[0]) == 1


def test_the_width_rule_waits_for_the_runs_still_going():
    frame = region()
    losses = observe(frame, seed=5)
    design = Design(frame, settings(stop_width=10.0))
    seed = design.seed_design()
    extra = design._spread(1)  # one more run chosen, not finished
    for key in seed:
        design.observe(key, losses[key])
    assert design.decide() == [] and design.stopped is None  # narrow enough, but one run is out
    design.observe(extra[0], losses[extra[0]])
    assert design.decide() == [] and design.stopped is StopReason.WIDTH and design.last.n_points == 7
