"""Ray Tune callbacks of the sweep driver: the results tables, and progress on the terminal."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ray.tune import Callback

from analysis.records import EVALS, TRIALS, DataUnit, Role, Status
from analysis.store import ResultsStore
from cluster.results import BranchCheckpoints, evals_frame, trials_frame
from cluster.searcher import LATEST
from cluster.trial import NO_RETRY_KEY, TRIAL_KEY
from experiments.trial_report import TrialReport

# The driver's live callbacks. Tune pickles the RunConfig, callbacks included, into its
# experiment state and, on Tuner.restore, runs the unpickled copies rather than callbacks
# given to the restoring process; so Tune only ever holds a stateless Dispatch, which
# forwards each hook to whatever this process registered here.
ACTIVE: list[Callback] = []


class Dispatch(Callback):
    """Forwards every Tune hook to the callbacks in ``ACTIVE`` (see above)."""

    def _each(self, hook: str, info: dict) -> None:
        for callback in ACTIVE:
            getattr(callback, hook)(**info)

    def on_trial_start(self, **info):
        self._each("on_trial_start", info)

    def on_trial_result(self, **info):
        self._each("on_trial_result", info)

    def on_trial_error(self, **info):
        self._each("on_trial_error", info)

    def on_trial_complete(self, **info):
        self._each("on_trial_complete", info)

    def on_trial_recover(self, **info):
        self._each("on_trial_recover", info)

    def on_step_end(self, **info):
        self._each("on_step_end", info)

    def on_experiment_end(self, **info):
        self._each("on_experiment_end", info)


def trial_id(trial) -> str:
    """The scalinglab trial id of a Tune trial."""
    return json.loads(trial.config[TRIAL_KEY])["trial_id"]


def error_summary(trial) -> str:
    """One line naming the exception that ended a trial (full traceback: Tune's error file)."""
    path = trial.error_file
    text = Path(path).read_text(errors="replace") if path and Path(path).exists() else str(trial.get_error())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*:", ln)]
    return (named or lines or ["unknown error"])[-1][:500]


class TableRecorder(Callback):
    """Keeps trials.parquet and evals.parquet up to date while the sweep runs.

    Rewrites at most every ``min_interval_s`` on results, and at once when a trial starts,
    ends or fails, so a reader in another process sees the sweep as it goes. Trials in
    ``replayed`` finished in an earlier run: their rows are final."""

    def __init__(self, store: ResultsStore, rows: dict[str, dict], evals: list[dict],
                 replayed: frozenset[str] = frozenset(), min_interval_s: float = 2.0) -> None:
        self.store, self.rows, self.evals = store, rows, evals
        self.replayed = replayed
        self.min_interval_s = min_interval_s
        self.last_report: dict[str, tuple[float, int, float]] = {}  # per trial: when, data units, units/s
        self._last_write = 0.0
        self.flush()

    def flush(self) -> None:
        self.store.write_table(TRIALS.file, trials_frame(self.rows))
        self.store.write_table(EVALS.file, evals_frame(self.evals))
        self._last_write = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = trial_id(trial)
        if tid not in self.replayed:
            self.rows[tid].update({TRIALS.status: Status.RUNNING.value, TRIALS.error: "",
                                   TRIALS.started_at: datetime.now(timezone.utc)})
            self.flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if NO_RETRY_KEY in result:  # its own code raised: Tune must not retry it (the error follows)
            trial.max_failures = 0
            return
        report = TrialReport.from_tune(result)
        if report is None:
            return
        tid = trial_id(trial)
        rate = report.throughput if report.throughput > 0 else self.last_report.get(tid, (0, 0, math.nan))[2]
        self.last_report[tid] = (time.monotonic(), report.data_units, rate)
        self.evals += report.eval_rows(tid)
        if report.done:
            self._finish(tid, report)
        elif time.monotonic() - self._last_write > self.min_interval_s:
            self.flush()

    def _finish(self, tid: str, report: TrialReport) -> None:
        row = self.rows[tid]
        row.update(report.final_columns())
        row[TRIALS.finished_at] = datetime.now(timezone.utc)
        self.flush()
        if row[TRIALS.role] == Role.BRANCH and row[TRIALS.status] == Status.COMPLETED:
            self._release(row)

    def _release(self, row: dict) -> None:
        """A completed wsd branch no longer needs its trunk's checkpoint at its branch point."""
        try:
            BranchCheckpoints(self.store.uri).release(row[TRIALS.parent], int(row[TRIALS.branch_step]))
        except OSError as exc:  # a leftover checkpoint costs disk, not results
            print(f"warning: {row[TRIALS.trial_id]}: cannot delete the trunk checkpoint it started from: {exc}",
                  file=sys.stderr, flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Tune restarts the trial from its last checkpoint: its worker process or node died.
        What it trained since that checkpoint is lost: its throughput × the time since."""
        tid = trial_id(trial)
        row = self.rows[tid]
        row[TRIALS.restarts] += 1
        if tid in self.last_report:
            at, units, rate = self.last_report[tid]
            lost = min((time.monotonic() - at) * rate, row[TRIALS.data_units] - units)
            if lost > 0:  # (NaN when no rate was seen yet: nothing is counted)
                row[TRIALS.data_units_lost] += lost
                row[TRIALS.flops_paid] += lost * row[TRIALS.flops_per_unit]
        self.flush()

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = trial_id(trial)
        if tid not in self.replayed:
            self.rows[tid].update({TRIALS.status: Status.FAILED.value, TRIALS.error: error_summary(trial),
                                   TRIALS.finished_at: datetime.now(timezone.utc)})
            self.flush()

    def on_experiment_end(self, trials, **info):
        for row in self.rows.values():
            if row[TRIALS.status] == Status.RUNNING:  # Tune stopped without a final word
                row[TRIALS.status] = Status.INTERRUPTED.value
        self.flush()


class ProgressPrinter(Callback):
    """Live progress on stderr: an event line per finished trial and a status line every
    ``interval_s``: trials by status, current losses, data units/s, ETA."""

    def __init__(self, rows: dict[str, dict], interval_s: float = 10.0, stream=None) -> None:
        self.rows, self.interval_s, self.stream = rows, interval_s, stream
        LATEST.clear()  # an adaptive design's line is this sweep's own
        self.started = time.monotonic()
        self._last_print = 0.0
        self.latest: dict[str, TrialReport] = {}

    def _say(self, text: str) -> None:
        print(f"[{_clock(time.monotonic() - self.started)}] {text}", file=self.stream or sys.stderr, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = TrialReport.from_tune(result)
        if report is None:
            return
        tid = trial_id(trial)
        if report.metrics or report.done:  # (a checkpoint by time carries no metrics to show)
            self.latest[tid] = report
        if report.done:
            mark = "done" if report.status == Status.COMPLETED else report.status.value.upper()
            row = self.rows[tid]
            self._say(f"{mark:>8} {tid}: loss {report.loss:.4f} {row[TRIALS.loss_unit]}, "
                      f"{report.throughput:,.0f} {row[TRIALS.data_unit]}/s, {report.elapsed_s:.1f} s")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(f"  FAILED {trial_id(trial)}: {error_summary(trial)}")

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last_print >= self.interval_s:
            self._last_print = time.monotonic()
            self._say(self.status_line())

    def status_line(self) -> str:
        """Every status with its count (none is left out), the ETA, and each running trial."""
        counts = {s: 0 for s in Status}
        for row in self.rows.values():
            counts[Status(row[TRIALS.status])] += 1
        running = [tid for tid, r in self.rows.items() if r[TRIALS.status] == Status.RUNNING]
        eta = self.eta_s(max(1, len(running)))
        shown = [s for s in Status if s != Status.COMPLETED and (counts[s] or s in (Status.RUNNING, Status.PENDING))]
        parts = [f"{counts[Status.COMPLETED]}/{len(self.rows)} done, " + ", ".join(f"{counts[s]} {s}" for s in shown),
                 f"ETA {_clock(eta) if eta is not None else '?'}"]
        if LATEST.get("line"):  # an adaptive sweep: the target's interval; its pending rows are candidates
            parts[1] = LATEST["line"]
        for tid in running:
            report = self.latest.get(tid)
            if report is not None and report.metrics:
                unit = "tok" if self.rows[tid][TRIALS.data_unit] == DataUnit.TOKENS else "img"
                parts.append(f"{tid} {report.data_units:.3g} {unit} loss {report.loss:.3f} "
                             f"{report.throughput:,.0f} {unit}/s")
        return " | ".join(parts)

    def eta_s(self, slots: int) -> float | None:
        """Seconds left: each unfinished trial's remaining data at the data units/s seen for
        its model size (or, for a size not seen yet, at the FLOP rate seen overall), over the
        number of trials running at once. Small models run far below the FLOP rate of large
        ones, so a FLOPs-only estimate is badly optimistic."""
        speed: dict[int, float] = {}
        flop_rates = []
        for tid, report in self.latest.items():
            if report.throughput > 0:
                row = self.rows[tid]
                speed[row[TRIALS.n_params]] = report.throughput
                flop_rates.append(report.throughput * row[TRIALS.flops_per_unit])
        if not flop_rates:
            return None
        flop_rate = sum(flop_rates) / len(flop_rates)
        left = 0.0
        for tid, row in self.rows.items():
            if Status(row[TRIALS.status]).finished:
                continue
            latest = self.latest.get(tid)
            units_left = row[TRIALS.data_units] - (latest.data_units if latest else 0)
            rate = speed.get(row[TRIALS.n_params]) or flop_rate / row[TRIALS.flops_per_unit]
            left += units_left / rate
        return left / slots


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
