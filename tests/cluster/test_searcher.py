"""The sweep's Tune search algorithm on a planned wsd ladder, without Ray running: plan
order, a branch held back until its trunk has ended, and its state across a save and restore
(what ``--resume`` relies on)."""

from __future__ import annotations

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
