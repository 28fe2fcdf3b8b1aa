"""The sweep's Tune search algorithms, without Ray running. On a planned wsd ladder: plan
order, a branch held back until its trunk has ended, and its state across a save and restore
(what ``--resume`` relies on). On an adaptive design (results simulated from a known law):
the seed design, then its choices, the decisions table, the same decisions after a restore,
and a chosen wsd branch's trunk run first."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from ray.tune.search import Searcher

from analysis.records import Role
from cluster.searcher import PlannedTrials
from cluster.trial import TRIAL_KEY
from experiments.planner import TrialConfig, plan
from experiments.spec import load_spec
from tests.experiments.test_wsd import LADDER


def _ladder(write_spec) -> list[TrialConfig]:
    trials = plan(*load_spec(write_spec(LADDER)))
    by_role = {role: [t for t in trials if t.role == role] for role in (Role.TRUNK, Role.BRANCH)}
    return by_role[Role.TRUNK] + by_role[Role.BRANCH]  # as cluster.sweep.sweep_phases orders them


def _id(suggestion) -> str:
    return TrialConfig.from_json(suggestion[TRIAL_KEY]).trial_id


def test_branches_wait_for_their_trunk_and_keep_plan_order(write_spec):
    trials = _ladder(write_spec)
    trunks = [t.trial_id for t in trials if t.role == Role.TRUNK]
    searcher = PlannedTrials(trials, TRIAL_KEY)
    assert [_id(searcher.suggest(f"tune-{k}")) for k in range(2)] == trunks
    assert searcher.suggest("tune-2") is None  # both trunks still running: no branch yet
    searcher.on_trial_complete("tune-1", error=True)  # the second trunk ends (failed): its branches go
    second = [_id(searcher.suggest(f"tune-{k}")) for k in range(2, 5)]
    assert second == [t.trial_id for t in trials if t.parent == trunks[1]]
    assert searcher.suggest("tune-5") is None
    searcher.on_trial_complete("tune-0")
    first = [_id(searcher.suggest(f"tune-{k}")) for k in range(5, 8)]
    assert first == [t.trial_id for t in trials if t.parent == trunks[0]]
    assert searcher.suggest("tune-8") == Searcher.FINISHED


def test_a_restored_searcher_goes_on_where_the_saved_one_stopped(write_spec, tmp_path):
    trials = _ladder(write_spec)
    searcher = PlannedTrials(trials, TRIAL_KEY)
    started = [_id(searcher.suggest(f"tune-{k}")) for k in range(2)]
    searcher.on_trial_complete("tune-0")
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = PlannedTrials(trials, TRIAL_KEY)
    restored.restore(str(tmp_path / "searcher.pkl"))
    following = [restored.suggest(f"tune-{k}") for k in range(2, 6)]
    assert [_id(s) for s in following[:3]] == [t.trial_id for t in trials if t.parent == started[0]]
    assert following[3] is None  # the other trunk has not ended
    restored.on_trial_complete("tune-1")
    assert _id(restored.suggest("tune-6")) not in started


def test_a_restored_searcher_counts_trials_the_table_keeps_as_finished(write_spec, tmp_path, monkeypatch):
    """Killed after a trunk ended but before Tune saved the searcher: the saved state still
    waits for the trunk, whose row the results table already keeps as completed."""
    trials = _ladder(write_spec)
    searcher = PlannedTrials(trials, TRIAL_KEY)
    trunk = _id(searcher.suggest("tune-0"))
    searcher.save(str(tmp_path / "searcher.pkl"))  # the trunk not yet ended in the saved state
    monkeypatch.setattr(PlannedTrials, "ended_on_disk", {trunk: 3.0})
    restored = PlannedTrials(trials, TRIAL_KEY)
    restored.restore(str(tmp_path / "searcher.pkl"))
    following = [_id(restored.suggest(f"tune-{k}")) for k in range(1, 5)]
    assert following[1:] == [t.trial_id for t in trials if t.parent == trunk]  # after the other trunk


ADAPTIVE = """\
name: adaptive
model:
  sizes:
    - {d_model: 16, n_layers: 2, n_heads: 1}
    - {d_model: 32, n_layers: 2, n_heads: 2}
    - {d_model: 48, n_layers: 2, n_heads: 3}
budgets:
  kind: adaptive
  tokens: [2.0e4, 1.0e5]
  adaptive: {target: {N: 1.0e5, D: 3.0e5}, candidates: 4, max_trials: 9, stop_width: 1.0e-4, bootstrap: 40}
training: {batch_size: 8, seq_len: 64, schedule: SCHEDULE}
evaluation: {validation_tokens: 4096, points: 2}
"""


def _adaptive(write_spec, tmp_path, schedule: str = "cosine"):
    from analysis.design import Design
    from cluster.searcher import DecisionLog, adaptive_searcher

    trials = plan(*load_spec(write_spec(ADAPTIVE.replace("SCHEDULE", schedule))))
    spec = load_spec(write_spec(ADAPTIVE.replace("SCHEDULE", schedule)))[0]
    make = lambda: adaptive_searcher(trials, TRIAL_KEY, Design.for_candidates, spec.budgets.adaptive,  # noqa: E731
                                     str(tmp_path / "out"))
    (tmp_path / "out").mkdir(exist_ok=True)
    assert isinstance(make().log, DecisionLog)
    return trials, make


def _result(trial: TrialConfig) -> dict:
    """What Tune hands a searcher when the trial completes: its last result, flattened."""
    from ray.tune.utils import flatten_dict

    from analysis.records import LOSS, Status
    from experiments.trial_report import TrialReport

    noise = np.random.default_rng(zlib.crc32(trial.trial_id.encode())).normal(0, 0.01)  # the same for a trial
    loss = (1.5 + 60 / trial.n_params ** 0.3 + 80 / trial.data_units ** 0.3) * np.exp(noise)
    report = TrialReport(step=trial.steps, data_units=trial.data_units, flops=trial.flops, metrics={LOSS: loss},
                         done=True, status=Status.COMPLETED)
    return flatten_dict(report.to_tune())


def _drive(searcher, trials, start: int, stop: int) -> list[str]:
    """Tune's part, one trial at a time: ask, run it (at once), report; ids of what ran."""
    by_id = {t.trial_id: t for t in trials}
    ran = []
    for k in range(start, stop):
        suggestion = searcher.suggest(f"tune-{k}")
        if suggestion == Searcher.FINISHED:
            break
        assert suggestion is not None, "one trial at a time: the searcher always has one to give or is done"
        ran.append(_id(suggestion))
        searcher.on_trial_complete(f"tune-{k}", result=_result(by_id[ran[-1]]))
    return ran


def test_the_adaptive_searcher_runs_the_seed_design_then_its_choices_and_logs_them(write_spec, tmp_path):
    import pandas as pd

    from analysis.records import ADAPTIVE_FILE, DECISIONS, StopReason

    trials, make = _adaptive(write_spec, tmp_path)
    searcher = make()
    seed = list(searcher.design.chosen)
    assert [_id(searcher.suggest(f"tune-{k}")) for k in range(6)] == seed
    assert searcher.suggest("tune-6") is None  # nothing chosen beyond the seed design until results come
    by_id = {t.trial_id: t for t in trials}
    for k, key in enumerate(seed):
        searcher.on_trial_complete(f"tune-{k}", result=_result(by_id[key]))
    ran = seed + _drive(searcher, trials, 6, 20)
    assert len(ran) == 9 and len(set(ran)) == 9 and searcher.design.stopped is StopReason.MAX_TRIALS
    assert searcher.suggest("tune-99") == Searcher.FINISHED
    decisions = pd.read_parquet(tmp_path / "out" / DECISIONS.file)
    assert list(decisions[DECISIONS.chosen]) == ran[6:] and decisions[DECISIONS.width].notna().all()
    assert (decisions[DECISIONS.candidates_scored] == [6, 5, 4]).all()
    assert (tmp_path / "out" / ADAPTIVE_FILE).exists()


def test_a_restored_adaptive_searcher_makes_the_same_decisions(write_spec, tmp_path):
    trials, make = _adaptive(write_spec, tmp_path)
    through = _drive(make(), trials, 0, 20)
    searcher = make()
    first = _drive(searcher, trials, 0, 7)  # the seed design and one choice
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert first + _drive(restored, trials, 7, 20) == through


def test_a_chosen_wsd_branch_brings_its_trunk_first(write_spec, tmp_path):
    trials, make = _adaptive(write_spec, tmp_path, schedule="wsd")
    searcher = make()
    by_id = {t.trial_id: t for t in trials}
    first = [_id(searcher.suggest(f"tune-{k}")) for k in range(3)]
    assert [by_id[t].role for t in first] == [Role.TRUNK] * 3  # the seed design's branches span 3 sizes
    assert searcher.suggest("tune-3") is None  # its branches wait for their trunks
    searcher.on_trial_complete("tune-0")
    branch = by_id[_id(searcher.suggest("tune-3"))]
    assert branch.role == Role.BRANCH and branch.parent == first[0]
    groups = searcher.design.candidates.drop_duplicates("group")  # each trunk paid once
    assert searcher.design.spent == pytest.approx(
        searcher.design.candidates.set_index("key").loc[searcher.design.chosen, "cost"].sum() + groups["group_cost"].sum())
