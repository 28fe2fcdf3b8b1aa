"""A real adaptive sweep: the CLI on the embedded Ray, DeepSpeed engines, the design choosing
runs as their results come (analysis.design through cluster.searcher.AdaptiveTrials); then
--resume of the finished sweep, which must replay its decisions and train nothing."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.records import ADAPTIVE_FILE, DECISIONS, TRIALS, StopReason, Status

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = """\
name: adaptive-e2e
model:
  sizes:
    - {d_model: 16, n_layers: 1, n_heads: 1}
    - {d_model: 32, n_layers: 1, n_heads: 2}
    - {d_model: 48, n_layers: 1, n_heads: 3}
budgets:
  kind: adaptive
  tokens: [8192, 32768]
  adaptive: {target: {N: 1.0e5, D: 1.0e5}, candidates: 4, max_trials: 8, stop_width: 1.0e-4, bootstrap: 40}
training: {batch_size: 4, seq_len: 32, lr: 3.0e-3}
evaluation: {validation_tokens: 1024, points: 2}
"""


def test_an_adaptive_sweep_runs_its_choices_and_resume_replays_them(write_spec, tmp_path, scalinglab):
    spec, out = write_spec(SPEC), tmp_path / "out"
    code, stdout, stderr = scalinglab("sweep", spec, "--storage", out, "--no-fit")
    assert code == 0, stderr[-3000:]
    assert "12 trials: 8 completed, 4 skipped" in stdout
    trials = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    decisions = pd.read_parquet(out / DECISIONS.file)
    state = json.loads((out / ADAPTIVE_FILE).read_text())
    assert list(decisions.columns) == DECISIONS.names and len(decisions) == 2  # 6 seed runs, then 2 choices
    assert (trials.loc[decisions[DECISIONS.chosen], TRIALS.status] == Status.COMPLETED).all()
    assert decisions[[DECISIONS.criterion, DECISIONS.width, DECISIONS.value]].notna().all().all()
    assert state["stopped"] == StopReason.MAX_TRIALS and state["finished"] == 8
    assert set(state["chosen"]) == set(trials.index[trials[TRIALS.status] == Status.COMPLETED])
    assert (decisions[DECISIONS.spent_flops].diff().dropna() > 0).all()
    assert "adaptive: the loss at N=1e+05, D=1e+05" in stderr  # the progress line names the target
    report = (out / "report.html").read_text()
    assert "Adaptive design" in report and "runs in the (N, D) plane" in report

    code, stdout, stderr = scalinglab("sweep", spec, "--storage", out, "--resume", "--no-fit", "--no-report")
    assert code == 0, stderr[-3000:]
    assert "12 trials: 8 completed, 4 skipped" in stdout
    pd.testing.assert_frame_equal(pd.read_parquet(out / DECISIONS.file), decisions)
    again = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    ran = state["chosen"]
    assert (again.loc[ran, TRIALS.finished_at] == trials.loc[ran, TRIALS.finished_at]).all()  # nothing trained again
