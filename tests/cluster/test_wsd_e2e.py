"""A real WSD sweep: an LR search, trunks and cooldown branches on the shared embedded Ray and
DeepSpeed engines, and a failed branch. (A driver killed mid-trunk and resumed:
test_sweep_e2e.py.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.records import EVALS, TRIALS, LRSource, Role, Status
from cluster.sweep import run_sweep
from cluster.trial import TestHooks

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = """\
    name: e2e-wsd
    model:
      sizes: [{d_model: 32, n_layers: 1, n_heads: 2}]
    budgets: {tokens: [12800, 25600]}
    training: {batch_size: 4, seq_len: 32, schedule: wsd, lr: {search: [1.0e-3, 3.0e-3]}}
    evaluation: {validation_tokens: 1024, points: 3}
    """


def test_wsd_sweep_with_lr_search_trunks_and_branches(write_spec, tmp_path, ray_session, capsys):
    out = tmp_path / "out"
    # one branch fails at start: its sibling still completes
    outcome = run_sweep(str(write_spec(SPEC)), storage=str(out), hooks=TestHooks(fail=("tfm-n12.8k-d25.6k",)))
    assert not outcome.ok
    assert "phase 2/2: 3 wsd trunks and cooldown branches" in capsys.readouterr().err
    trials = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    assert trials[TRIALS.role].value_counts().to_dict() == {"lr_search": 2, "branch": 2, "trunk": 1}
    assert trials.loc["tfm-n12.8k-d25.6k-s0", TRIALS.status] == Status.FAILED
    assert "injected failure" in trials.loc["tfm-n12.8k-d25.6k-s0", TRIALS.error]
    ok = trials.drop(index="tfm-n12.8k-d25.6k-s0")
    assert (ok[TRIALS.status] == Status.COMPLETED).all()

    evals = pd.read_parquet(out / EVALS.file)
    for size in (0,):
        mine = trials[json_size(trials) == size]
        search = mine[mine[TRIALS.role] == Role.LR_SEARCH]
        best = search.loc[search[TRIALS.final_loss].idxmin()]
        runs = mine[mine[TRIALS.role].isin([Role.TRUNK, Role.BRANCH])]
        assert (runs[TRIALS.lr] == best[TRIALS.lr]).all() and (runs[TRIALS.lr_chosen_by] == LRSource.SEARCH).all()
        trunk = mine[mine[TRIALS.role] == Role.TRUNK]
        assert len(trunk) == 1  # the trunk ran once for both budgets
        trunk_curve = evals[(evals[EVALS.trial_id] == trunk.index[0]) & (evals[EVALS.metric] == "loss")]
        assert trunk_curve[EVALS.step].is_unique and trunk_curve[EVALS.step].max() == trunk[TRIALS.steps].iloc[0]
        save_steps = json.loads(trunk[TRIALS.config].iloc[0])["save_steps"]
        for tid, b in mine[mine[TRIALS.role] == Role.BRANCH].iterrows():
            assert b[TRIALS.parent] == trunk.index[0]
            assert 0 < b[TRIALS.branch_step] < b[TRIALS.steps] and b[TRIALS.branch_step] in save_steps
            assert b[TRIALS.flops_paid] < b[TRIALS.flops] == pytest.approx(b[TRIALS.data_units] * b[TRIALS.flops_per_unit])
            curve = evals[(evals[EVALS.trial_id] == tid) & (evals[EVALS.metric] == "loss")]
            if b[TRIALS.status] == Status.COMPLETED:
                assert curve[EVALS.step].min() > b[TRIALS.branch_step] and curve[EVALS.step].max() == b[TRIALS.steps]
        # the search ran an unbroken WSD run of the smallest budget at the chosen LR: the
        # trunk + branch of that budget reproduce it (same data order, schedule and state)
        small = mine[(mine[TRIALS.role] == Role.BRANCH) & (mine[TRIALS.data_units] == 12800)].iloc[0]
        assert small[TRIALS.final_loss] == pytest.approx(best[TRIALS.final_loss], rel=1e-5)
    # checkpoints of completed branches are gone; the failed branch's stays for a retry
    left = sorted(p.parent.name + "/" + p.name for p in (out / "checkpoints").glob("*/step-*"))
    step = int(trials.loc["tfm-n12.8k-d25.6k-s0", TRIALS.branch_step])
    assert left == [f"tfm-n12.8k-trunk-s0/step-{step}"]


def json_size(trials: pd.DataFrame) -> pd.Series:
    return trials[TRIALS.config].map(lambda c: json.loads(c)["size_index"])
