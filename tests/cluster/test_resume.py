"""What ``--resume`` keeps of the tables, and what the progress line counts, for every status
(no Ray: the driver's table logic on a results folder on disk)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.records import TRIALS, Status
from analysis.store import ResultsStore
from cluster.monitor import ProgressPrinter
from cluster.results import planned_row, save_plan, trials_frame
from cluster.sweep import _ended, _initial_tables
from experiments.planner import plan
from experiments.spec import load_spec

GRID = """\
name: resume
model:
  sizes: [{d_model: 16, n_layers: 1, n_heads: 1}, {d_model: 32, n_layers: 1, n_heads: 2}]
budgets: {tokens: [4096, 8192, 12288, 16384]}
training: {batch_size: 4, seq_len: 32}
evaluation: {validation_tokens: 1024, points: 2}
"""


@pytest.fixture
def sweep_on_disk(write_spec, tmp_path):
    """A planned sweep whose trials table holds one trial in every status."""
    spec = write_spec(GRID)
    trials = plan(*load_spec(spec))
    store = ResultsStore(tmp_path / "out")
    store.makedirs()
    save_plan(store, trials, spec.read_text())
    rows = {t.trial_id: planned_row(t) for t in trials}
    by_status = dict(zip(Status, trials))
    for status, t in by_status.items():
        rows[t.trial_id].update({TRIALS.status: status.value, TRIALS.error: f"why {status}",
                                 TRIALS.final_loss: 2.5, TRIALS.finished_at: pd.Timestamp("2026-12-01", tz="UTC")})
    store.write_table(TRIALS.file, trials_frame(rows))
    return store, trials, by_status, spec.read_text()


def test_resume_keeps_the_row_of_every_finished_status_and_reruns_the_others(sweep_on_disk):
    store, trials, by_status, text = sweep_on_disk
    rows, _ = _initial_tables(store, trials, True, text, retry_failed=False)
    for status, t in by_status.items():
        row = rows[t.trial_id]
        if status.finished:  # completed, failed, diverged, collapsed: kept as they are, not trained again
            assert row[TRIALS.status] == status and row[TRIALS.error] == f"why {status}"
            assert t.trial_id in _ended(rows, retry_failed=False)
        else:  # pending, running, interrupted: pending again, trained (from a checkpoint) this run
            assert row[TRIALS.status] == Status.PENDING and row[TRIALS.error] == ""
            assert t.trial_id not in _ended(rows, retry_failed=False)
    collapsed = rows[by_status[Status.COLLAPSED].trial_id]
    assert collapsed[TRIALS.final_loss] == 2.5  # a collapsed trial's results stay in the table


def test_retry_failed_reruns_failed_trials_only(sweep_on_disk):
    store, trials, by_status, text = sweep_on_disk
    rows, _ = _initial_tables(store, trials, True, text, retry_failed=True)
    assert rows[by_status[Status.FAILED].trial_id][TRIALS.status] == Status.PENDING
    for status in (Status.COMPLETED, Status.DIVERGED, Status.COLLAPSED):
        assert rows[by_status[status].trial_id][TRIALS.status] == status


def test_the_progress_line_counts_every_status(sweep_on_disk):
    store, trials, _, _ = sweep_on_disk
    rows = store.read_table(TRIALS.file).set_index(TRIALS.trial_id, drop=False).to_dict("index")
    line = ProgressPrinter(rows).status_line()
    counts = pd.Series([r[TRIALS.status] for r in rows.values()]).value_counts()
    assert line.startswith(f"1/{len(rows)} done, ")
    for status in Status:
        if status != Status.COMPLETED:
            assert f" {counts[status.value]} {status}" in line, line
    assert sum(int(part.split()[0]) for part in line.split(" | ")[0].split(", ")[1:]) == len(rows) - 1
