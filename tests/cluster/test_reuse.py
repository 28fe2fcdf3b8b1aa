"""Reused trial processes (Tune's ``reuse_actors``): a process that ran other trials trains the
next exactly as a fresh one would. One sweep runs its trials one at a time in one reused
process, the other starts a process per trial; every loss and probe score must agree."""

from __future__ import annotations

import pytest

from analysis.records import EVALS, THROUGHPUT, TRIALS, Status, is_probe_metric

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# two sizes x two seeds, probes mixed into training and scored: RNG, optimizer, engine, probe
# tables and data caches would all show in these numbers if any carried over
SPEC = """\
name: reuse
model:
  sizes:
    - {d_model: 16, n_layers: 1, n_heads: 1}
    - {d_model: 32, n_layers: 1, n_heads: 2}
budgets: {tokens: [8192]}
training: {batch_size: 4, seq_len: 32, seeds: 2}
evaluation: {validation_tokens: 1024, points: 2}
probes: {tasks: [addition, recall], mix_rate: 0.5, eval_items: 16}
"""


def test_a_reused_process_trains_each_trial_exactly_as_a_fresh_one(ray_session, write_spec, tmp_path):
    from cluster.sweep import run_sweep

    spec = write_spec(SPEC)
    runs = {reuse: run_sweep(str(spec), storage=str(tmp_path / f"reuse-{reuse}"), max_concurrent=1,
                             reuse_processes=reuse) for reuse in (True, False)}
    reused, fresh = (runs[r].trials.set_index(TRIALS.trial_id).sort_index() for r in (True, False))
    assert (reused[TRIALS.status] == Status.COMPLETED).all() and (fresh[TRIALS.status] == Status.COMPLETED).all()
    # one process ran all four, one after another; without reuse each had its own
    assert sorted(reused[TRIALS.process_trials]) == [0, 1, 2, 3]
    assert (fresh[TRIALS.process_trials] == 0).all()
    assert reused[TRIALS.final_loss].to_numpy() == pytest.approx(fresh[TRIALS.final_loss].to_numpy(), abs=1e-6)
    key = [EVALS.trial_id, EVALS.step, EVALS.metric]
    a, b = (runs[r].evals.query(f"{EVALS.metric} != '{THROUGHPUT}'").sort_values(key).reset_index(drop=True)
            for r in (True, False))  # every metric but the wall-clock one
    assert a[key].equals(b[key]) and a[EVALS.metric].map(is_probe_metric).any()
    assert a[EVALS.value].to_numpy() == pytest.approx(b[EVALS.value].to_numpy(), abs=1e-6)
