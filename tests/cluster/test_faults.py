"""Faults a real cluster has, on the embedded Ray with real DeepSpeed trials: a trial whose
worker process is SIGKILLed (found by its PID in Ray's actor table) carries on from its last
checkpoint, by Ray Tune's own fault tolerance; a trial whose own code raises is not retried."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from analysis.records import EVALS, TRIALS, Status
from analysis.store import ResultsStore
from cluster.trial import TestHooks

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# One trial of ~15 s on 2 cores, checkpointing by time every 2 s between its evaluation points.
SPEC = """\
name: faults
model:
  sizes: [{d_model: 32, n_layers: 2, n_heads: 2}]
budgets: {tokens: [262144]}
training: {batch_size: 4, seq_len: 32}
evaluation: {validation_tokens: 1024, points: 3}
checkpoint_every_s: 2
"""


def _trial_pids() -> list[int]:
    """PIDs of the live Tune trial actors, from Ray's actor table (the GCS)."""
    import ray._private.state

    table = ray._private.state.state.actor_table(None)
    return [a["Pid"] for a in table.values() if a["State"] == "ALIVE" and a["ActorClassName"] == "ImplicitFunc"]


def test_a_killed_worker_process_restarts_from_its_checkpoint_and_matches_an_unbroken_run(ray_session, write_spec,
                                                                                       tmp_path):
    from cluster.sweep import run_sweep

    spec = write_spec(SPEC)
    out = tmp_path / "killed"
    done: dict = {}
    sweep = threading.Thread(target=lambda: done.update(outcome=run_sweep(str(spec), storage=str(out))))
    sweep.start()
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and sweep.is_alive():
        time.sleep(0.3)
        store = ResultsStore(str(out))
        if not store.exists(EVALS.file):
            continue
        evals = store.read_table(EVALS.file)
        if evals[EVALS.step].nunique() >= 1 and len(pids := _trial_pids()) == 1:  # trained past a first point
            time.sleep(3)  # and past a checkpoint by time (every 2 s)
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
    sweep.join(timeout=600)
    assert killed is not None, "the trial finished before it could be killed"
    trials = done["outcome"].trials
    row = trials.iloc[0]
    assert row[TRIALS.status] == Status.COMPLETED, row[TRIALS.error]
    assert row[TRIALS.restarts] == 1
    assert 0 < row[TRIALS.data_units_lost] < row[TRIALS.data_units]
    assert row[TRIALS.flops_paid] == pytest.approx(row[TRIALS.flops] + row[TRIALS.data_units_lost]
                                                   * row[TRIALS.flops_per_unit])

    unbroken = run_sweep(str(spec), storage=str(tmp_path / "unbroken")).trials.iloc[0]
    assert unbroken[TRIALS.restarts] == 0 and unbroken[TRIALS.data_units_lost] == 0
    assert row[TRIALS.final_loss] == pytest.approx(unbroken[TRIALS.final_loss], abs=1e-3)
    print(f"killed pid {killed}: final loss {row[TRIALS.final_loss]:.6f} vs unbroken {unbroken[TRIALS.final_loss]:.6f}; "
          f"lost {row[TRIALS.data_units_lost]:.0f} tokens")


def test_a_trial_whose_own_code_raises_is_failed_at_once_without_retries(ray_session, write_spec, tmp_path):
    from cluster.sweep import run_sweep

    spec = write_spec(SPEC.replace("[262144]", "[4096]"))  # max_failures: the default, 2
    outcome = run_sweep(str(spec), storage=str(tmp_path / "out"), hooks=TestHooks(fail=("tfm-",)))
    row = outcome.trials.iloc[0]
    assert row[TRIALS.status] == Status.FAILED and "injected failure" in row[TRIALS.error]
    assert row[TRIALS.restarts] == 0
    errors = (tmp_path / "out" / "tune" / row[TRIALS.trial_id] / "error.txt").read_text()
    assert errors.count("Failure #") == 1, errors  # Tune ran it once
