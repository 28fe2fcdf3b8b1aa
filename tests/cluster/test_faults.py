"""Faults a real cluster has, on the embedded Ray with real DeepSpeed trials: a trial whose
worker process is SIGKILLed (found by its PID in Ray's actor table) carries on from its last
checkpoint, by Ray Tune's own fault tolerance, with all its workers when it has several; a
trial whose own code raises is not retried."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from analysis.records import EVALS, TRIALS, Status
from analysis.store import ResultsStore
from cluster.trial import TestHooks


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


def _pids(actor_class: str) -> list[int]:
    """PIDs of the live actors of ``actor_class``, from Ray's actor table (the GCS), which may
    name it by where it was defined ("wrap_function.<locals>.ImplicitFunc")."""
    import ray._private.state

    table = ray._private.state.state.actor_table(None)
    return sorted(a["Pid"] for a in table.values()
                  if a["State"] == "ALIVE" and a["ActorClassName"].split(".")[-1] == actor_class)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("resources, actor_class, processes", [
    ("{workers: 1}", "ImplicitFunc", 1),  # the Tune trial's process runs the engine itself
    ("{workers: 2}", "RayTrainWorker", 2),  # one of a Ray Train worker group's two processes
], ids=["one-worker", "two-workers"])
def test_a_killed_worker_process_restarts_from_its_checkpoint_and_matches_an_unbroken_run(
        ray_session, write_spec, tmp_path, resources, actor_class, processes):
    from cluster.sweep import run_sweep

    spec = write_spec(SPEC + f"resources: {resources}\n")
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
        if evals[EVALS.step].nunique() >= 1 and len(pids := _pids(actor_class)) == processes:  # past a first point
            time.sleep(3)  # and past a checkpoint by time (every 2 s)
            os.kill(pids[-1], signal.SIGKILL)
            killed = pids[-1]
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
    print(f"killed {actor_class} pid {killed}: final loss {row[TRIALS.final_loss]:.6f} vs unbroken "
          f"{unbroken[TRIALS.final_loss]:.6f}; lost {row[TRIALS.data_units_lost]:.0f} tokens")


@pytest.mark.slow
@pytest.mark.ray
def test_a_trial_whose_own_code_raises_is_failed_at_once_without_retries(ray_session, write_spec, tmp_path):
    from cluster.sweep import run_sweep

    spec = write_spec(SPEC.replace("[262144]", "[4096]"))  # max_failures: the default, 2
    outcome = run_sweep(str(spec), storage=str(tmp_path / "out"), hooks=TestHooks(fail=("tfm-",)))
    row = outcome.trials.iloc[0]
    assert row[TRIALS.status] == Status.FAILED and "injected failure" in row[TRIALS.error]
    assert row[TRIALS.restarts] == 0
    errors = (tmp_path / "out" / "tune" / row[TRIALS.trial_id] / "error.txt").read_text()
    assert errors.count("Failure #") == 1, errors  # Tune ran it once


def test_worker_died_finds_a_dead_or_hung_worker_at_any_depth_and_nothing_else():
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError

    from cluster.trial import worker_died

    dead = WorkerHealthCheckFailedError("a worker health check failed", failure=ActorDiedError())
    bad_report = WorkerHealthCheckFailedError("could not deserialize", failure=TypeError("not picklable"))
    assert worker_died(ActorDiedError())
    assert worker_died(WorkerGroupError("rank 1", {0: RuntimeError("gloo: connection closed"), 1: dead}))
    assert worker_died(WorkerGroupError("rank 0", {0: WorkerHealthCheckTimeoutError("hanging for 600 s")}))
    try:  # as a cause, the way trainer.fit() re-raises
        try:
            raise WorkerGroupError("rank 1", {1: dead})
        except WorkerGroupError as inner:
            raise RuntimeError("the Train run failed") from inner
    except RuntimeError as outer:
        assert worker_died(outer)
    assert not worker_died(RuntimeError("a bug"))
    assert not worker_died(WorkerGroupError("rank 0", {0: ValueError("bad config"), 1: bad_report}))
