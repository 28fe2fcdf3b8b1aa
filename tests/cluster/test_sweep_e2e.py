"""Real sweeps: the CLI on an embedded Ray (shared by the in-process tests), DeepSpeed engines,
tables on disk; a driver killed with SIGKILL in a subprocess and resumed."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

from analysis.records import EVALS, TRIALS, Status
from analysis.store import ResultsStore
from cluster.sweep import run_sweep
from cluster.trial import TestHooks
from experiments.planner import eval_steps
from experiments.trial_report import TrialReport
from tests.conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_trial_sweep_with_a_two_worker_zero2_trial(write_spec, tmp_path, scalinglab):
    spec = write_spec("""\
        name: e2e
        model:
          sizes:
            - {d_model: 16, n_layers: 1, n_heads: 1}
            - {d_model: 32, n_layers: 2, n_heads: 2, workers: 2, zero_stage: 2}
        budgets: {tokens: [8192]}
        training: {batch_size: 4, seq_len: 32}
        resources: {cpus_per_worker: 0.5}
        evaluation: {validation_tokens: 1024, points: 3}
        """)
    out = tmp_path / "out"
    code, stdout, stderr = scalinglab("sweep", spec, "--storage", out)
    assert code == 0, stderr[-3000:]
    assert "2 trials: 2 completed" in stdout
    trials = pd.read_parquet(out / TRIALS.file)
    evals = pd.read_parquet(out / EVALS.file)
    # every contract column, in the contract's order, then the shape columns
    assert list(trials.columns[: len(TRIALS.names)]) == TRIALS.names
    assert set(trials.columns[len(TRIALS.names):]) == {TRIALS.shape(f) for f in
                                                       ("d_model", "n_layers", "n_heads", "context", "vocab")}
    assert list(evals.columns) == EVALS.names
    assert len(trials) == 2 and (trials[TRIALS.status] == Status.COMPLETED).all()
    two = trials[trials[TRIALS.workers] == 2].iloc[0]
    assert two[TRIALS.zero_stage] == 2 and two[TRIALS.shape("d_model")] == 32
    for row in trials.to_dict("records"):
        assert math.isfinite(row[TRIALS.final_loss]) and row[TRIALS.final_loss] < math.log(256)
        # the byte tokenizer: one byte per token, so bits per byte is nats per token / ln 2
        assert row[TRIALS.bytes_per_token] == 1.0
        assert row[TRIALS.final_bpb] == pytest.approx(row[TRIALS.final_loss] / math.log(2))
        assert row[TRIALS.data_units] == 64 * 4 * 32
        assert row[TRIALS.flops] == pytest.approx(row[TRIALS.data_units] * row[TRIALS.flops_per_unit])
        assert abs(row[TRIALS.flops_measured] - row[TRIALS.flops]) / row[TRIALS.flops] < 0.10
        assert row[TRIALS.node_id] and row[TRIALS.wall_s] > 0 and row[TRIALS.data_units_per_s] > 0
        rows = evals[(evals[EVALS.trial_id] == row[TRIALS.trial_id]) & (evals[EVALS.metric] == "loss")]
        rows = rows.sort_values(EVALS.step)
        assert rows[EVALS.step].tolist() == list(eval_steps(64, 3)) == [1, 8, 64]  # log-spaced
        assert rows[EVALS.value].iloc[-1] == pytest.approx(row[TRIALS.final_loss])
        assert rows[EVALS.data_units].tolist() == [s * 128 for s in rows[EVALS.step]]
    assert {"loss", "bits_per_token", "train_loss", "lr", "data_units_per_s"} == set(evals[EVALS.metric])
    # the two-worker trial ran under Ray Train, which kept its checkpoints by trial name
    assert (out / "train" / two[TRIALS.trial_id]).is_dir()
    assert (out / "tune").is_dir() and (out / "spec.yaml").is_file()
    # two trials identify no law (the envelope needs 3 finished trials: evaluation curves of
    # unfinished schedules are not used), and the sweep says so instead of fitting
    assert not (out / "fits.json").exists()
    assert "scaling-law fits" in stdout and "no fit: no law can be identified from 2 usable point(s)" in stdout
    # ... and writes the report and the run's record beside the tables
    runs = json.loads((out / "run.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["wall_s"] > 0 and runs[0]["resources"]["CPU"] >= 1
    page = (out / "report.html").read_text()
    assert all(tid in page for tid in trials[TRIALS.trial_id]) and "Training curves" in page
    assert f"report: {out}/report.html" in stdout


def test_failing_trial_is_recorded_and_the_sweep_goes_on(write_spec, tmp_path, scalinglab):
    spec = write_spec("""\
        name: e2e-fail
        model:
          sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]
        budgets: {tokens: [4096, 8192]}
        training: {batch_size: 4, seq_len: 32}
        evaluation: {validation_tokens: 1024, points: 2}
        """)
    out = tmp_path / "out"
    uri = f"file://{out}"  # storage given as a pyarrow/Ray filesystem URI, not a path
    outcome = run_sweep(str(spec), storage=uri, hooks=TestHooks(fail=("-d8.19k-",)))
    assert not outcome.ok
    trials = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    assert trials[TRIALS.status].value_counts().to_dict() == {"completed": 1, "failed": 1}
    failed = trials[trials[TRIALS.status] == Status.FAILED].iloc[0]
    assert "RuntimeError: injected failure" in failed[TRIALS.error]
    assert trials[trials[TRIALS.status] == Status.COMPLETED][TRIALS.final_loss].notna().all()

    # resuming keeps the failure (and its error) and does not re-run the others; exit status 1
    code, stdout, stderr = scalinglab("sweep", spec, "--storage", uri, "--resume", "--no-fit", "--no-report")
    assert code == 1, stderr[-3000:]
    assert "1 failed" in stdout and "injected failure" in stdout
    kept = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    for col in (TRIALS.status, TRIALS.error, TRIALS.finished_at):
        assert kept[col].to_dict() == trials[col].to_dict()

    # --retry-failed runs the failed trial again (no fault now) and only it
    code, _, stderr = scalinglab("sweep", spec, "--storage", uri, "--resume", "--retry-failed", "--no-report")
    assert code == 0, stderr[-3000:]
    fixed = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    assert (fixed[TRIALS.status] == Status.COMPLETED).all()
    for trial_id in trials.index[trials[TRIALS.status] == Status.COMPLETED]:
        assert fixed.loc[trial_id, TRIALS.finished_at] == trials.loc[trial_id, TRIALS.finished_at]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(driver: subprocess.Popen, also: list[psutil.Process]) -> None:
    """SIGKILL the driver (as a kill -9 would), then every process it had started."""
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    for proc in _descendants(driver.pid) + also:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_a_killed_driver_resumes_keeping_finished_trials_and_continuing_a_running_one(write_spec, tmp_path,
                                                                                       scalinglab):
    """SIGKILL the driver (a process of its own) once one wsd trunk has finished and the other
    has checkpointed a few times; ``--resume`` (here, on the shared Ray) keeps the finished
    trunk as it was, continues the running one from its checkpoint, then runs the branches."""
    spec = write_spec("""\
        name: e2e-kill
        model:
          sizes: [{d_model: 16, n_layers: 1, n_heads: 1}, {d_model: 32, n_layers: 1, n_heads: 2}]
        budgets: {tokens: [204800]}
        training: {batch_size: 4, seq_len: 32, schedule: wsd}
        resources: {max_concurrent: 1}
        evaluation: {validation_tokens: 1024, points: 16}
        """)
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "cluster.cli", "sweep", str(spec), "--storage", str(out)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before, leftovers, killed_at = None, [], None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and before is None:
            time.sleep(0.3)
            assert driver.poll() is None, "the sweep ended before it could be killed mid-trunk"
            # a second process reads the tables while the sweep writes them
            if not (out / TRIALS.file).exists() or not (out / EVALS.file).exists():
                continue
            # (through the store, which reads a file in one go: pandas given a path may open it
            # twice and meet two versions of it when the driver replaces it in between)
            store = ResultsStore(str(out))
            table, evals = store.read_table(TRIALS.file), store.read_table(EVALS.file)
            running = table[table[TRIALS.status] == Status.RUNNING][TRIALS.trial_id]
            points = evals[(evals[EVALS.metric] == "loss") & evals[EVALS.trial_id].isin(running)]
            if (table[TRIALS.status] == Status.COMPLETED).sum() == 1 and len(points) >= 4:
                before, killed_at, running_id = table, int(points[EVALS.step].max()), running.iloc[0]
        assert before is not None, "the sweep never had a finished trunk beside a running one"
        leftovers = _descendants(driver.pid)
    finally:
        kill_tree(driver, leftovers)
    done_before = before[before[TRIALS.status] == Status.COMPLETED].set_index(TRIALS.trial_id)
    assert len(pd.read_parquet(out / TRIALS.file)) == 4  # still readable after the kill

    code, _, stderr = scalinglab("sweep", spec, "--storage", out, "--resume", "--max-concurrent", "2",
                                 "--no-fit", "--no-report")
    assert code == 0, stderr[-3000:]
    after = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    assert (after[TRIALS.status] == Status.COMPLETED).all()
    for trial_id, row in done_before.iterrows():  # finished before the kill: untouched
        assert after.loc[trial_id, TRIALS.finished_at] == row[TRIALS.finished_at]
        assert after.loc[trial_id, TRIALS.final_loss] == row[TRIALS.final_loss]
    evals = pd.read_parquet(out / EVALS.file)
    assert not evals.duplicated([EVALS.trial_id, EVALS.step, EVALS.metric]).any()
    assert set(evals[EVALS.trial_id]) == set(after.index)
    # Tune's record of the running trunk (appended to across the restart): the resumed run went
    # on from a checkpoint, so its reported steps never fall back to the first evaluation
    lines = (out / "tune" / running_id / "result.json").read_text().splitlines()
    steps = [json.loads(line)[TrialReport.KEY]["step"] for line in lines]
    assert max(steps) > killed_at and steps.count(steps[0]) == 1  # a restart from scratch repeats the first

    code, _, stderr = scalinglab("sweep", spec, "--storage", out)
    assert code == 2 and "already holds a sweep" in stderr and len(stderr.strip().splitlines()) == 1
