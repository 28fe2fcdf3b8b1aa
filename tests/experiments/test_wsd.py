"""WSD ladders and LR search in the planner, and the schedules' shapes (no Ray)."""

from __future__ import annotations

import math

import pytest

from analysis.errors import UserError
from experiments.planner import describe, eval_steps, plan, with_chosen_lrs
from experiments.schedules import cosine, lr_multiplier, wsd
from experiments.spec import load_spec

LADDER = """\
name: wsd-plan
model:
  sizes: [{d_model: 16, n_layers: 1, n_heads: 1}, {d_model: 32, n_layers: 1, n_heads: 2}]
budgets: {tokens: [12800, 25600, 51200]}
training: {batch_size: 4, seq_len: 32, schedule: wsd, cooldown_fraction: 0.2, warmup_fraction: 0.1}
evaluation: {validation_tokens: 1024, points: 4}
"""


def _plan(write_spec, text):
    spec, located = load_spec(write_spec(text))
    return plan(spec, located)


def test_wsd_plans_one_trunk_per_size_and_a_branch_per_budget_with_paid_and_represented_flops(write_spec):
    trials = _plan(write_spec, LADDER)
    trunks = [t for t in trials if t.role == "trunk"]
    branches = [t for t in trials if t.role == "branch"]
    assert len(trunks) == 2 and len(branches) == 6 and len(trials) == 8
    for trunk in trunks:
        mine = sorted((b for b in branches if b.parent == trunk.trial_id), key=lambda b: b.steps)
        assert [b.steps for b in mine] == [100, 200, 400]  # 12800 / (4 * 32) ...
        # each branch decays over its last 20% of steps, from the trunk's checkpoint there
        assert [b.start_step for b in mine] == [80, 160, 320]
        assert trunk.steps == 320 and trunk.save_steps == (80, 160, 320)
        assert set(trunk.save_steps) <= set(trunk.eval_steps)
        for b in mine:
            assert b.flops == pytest.approx(b.flops_per_unit * b.data_units)  # what the point represents
            assert b.flops_paid == pytest.approx(b.flops_per_unit * (b.steps - b.start_step) * 128)  # its cooldown
            assert b.eval_steps[-1] == b.steps and min(b.eval_steps) > b.start_step
            # the budget's own log-spaced points after the branch point (here only its end)
            assert b.eval_steps == tuple(s for s in eval_steps(b.steps, 4) if s > b.start_step)
            assert b.warmup_steps == trunk.warmup_steps == 10  # 10% of the smallest budget's 100 steps
        assert trunk.flops_paid == pytest.approx(trunk.flops_per_unit * 320 * 128)
        paid = trunk.flops_paid + sum(b.flops_paid for b in mine)
        represented = sum(b.flops for b in mine)
        assert represented / paid == pytest.approx(700 / (320 + 20 + 40 + 80))  # cosine would pay 700 steps
    assert "the fit points represent" in describe(trials)


def test_wsd_refuses_a_branch_point_inside_the_warmup(write_spec):
    text = LADDER.replace("warmup_fraction: 0.1", "warmup_fraction: 0.9")
    with pytest.raises(UserError, match="branch point .* after the warmup"):
        _plan(write_spec, text)


def test_schedule_values_at_warmup_end_branch_point_and_cooldown_end():
    # warmup 10 steps, stable to step 80, cooldown over steps 80..99 to min ratio 0.1
    assert wsd(9, 100, 10, 80, 0.1) == pytest.approx(1.0)
    assert wsd(0, 100, 10, 80, 0.1) == pytest.approx(0.1)
    assert wsd(79, 100, 10, 80, 0.1) == pytest.approx(1.0)  # the last trunk step
    assert wsd(99, 100, 10, 80, 0.1, "linear") == pytest.approx(0.1)
    assert wsd(99, 100, 10, 80, 0.1, "1-sqrt") == pytest.approx(0.1)
    half = 80 + 10 - 1  # progress 0.5
    assert wsd(half, 100, 10, 80, 0.0, "linear") == pytest.approx(0.5)
    assert wsd(half, 100, 10, 80, 0.0, "1-sqrt") == pytest.approx(1 - math.sqrt(0.5))
    values = [wsd(s, 100, 10, 80, 0.1, "1-sqrt") for s in range(80, 100)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert wsd(500, 320, 10, 320, 0.1) == 1.0  # a trunk never decays
    assert cosine(100, 100, 10, 0.1) == pytest.approx(0.1)  # (cosine ends one step later, as it always has)


def test_branch_schedule_equals_an_unbroken_wsd_run_of_its_budget(write_spec):
    trials = _plan(write_spec, LADDER)
    trunk = next(t for t in trials if t.role == "trunk")
    branch = next(t for t in trials if t.role == "branch" and t.parent == trunk.trial_id and t.steps == 200)
    f_trunk, f_branch = lr_multiplier(trunk), lr_multiplier(branch)
    assert [f_trunk(s) for s in range(160)] == [f_branch(s) for s in range(160)]
    assert f_branch(199) == pytest.approx(0.1)


def test_lr_search_adds_candidates_per_size_and_the_best_one_is_applied(write_spec):
    text = LADDER.replace("training: {", "training: {lr: {search: [1.0e-3, 3.0e-3, 1.0e-2]}, ")
    trials = _plan(write_spec, text)
    search = [t for t in trials if t.role == "lr_search"]
    assert len(search) == 6 and {t.data_units for t in search} == {12800}  # smallest budget by default
    assert all(t.lr_chosen_by == "search pending" for t in trials if t.role != "lr_search")
    losses = {t.trial_id: (3.0 if t.training.lr == 3e-3 else 4.0) if t.size_index == 0 else
              (5.0 if t.training.lr == 1e-2 else float("nan")) for t in search}
    chosen_trials, chosen = with_chosen_lrs(trials, losses)
    assert chosen[0][0] == 3e-3 and chosen[1][0] == 1e-2  # NaN (failed) candidates never win
    for t in chosen_trials:
        if t.role != "lr_search":
            assert t.training.lr == {0: 3e-3, 1: 1e-2}[t.size_index] and t.lr_chosen_by == "search"


def test_lr_search_needs_two_distinct_candidates(write_spec):
    with pytest.raises(UserError, match="at least 2 distinct"):
        _plan(write_spec, LADDER.replace("training: {", "training: {lr: {search: [1.0e-3]}, "))
