"""Ray Tune callbacks of the sweep driver: the results tables, and progress on the terminal."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ray.tune import Callback

from cluster.results import BranchCheckpoints, ResultsStore, evals_frame, trials_frame
from cluster.trial import TRIAL_KEY
from experiments.planner import TrialConfig

# Per-evaluation metrics copied from a Tune result into evals.parquet (the family's held-out
# metrics are added to these: every numeric key of the result that is not bookkeeping).
_BOOKKEEPING = {
    "step", "tokens", "flops", "done", "status", "error", "elapsed_s", "startup_s", "node_id",
    "flops_measured_per_token", "replayed", "training_iteration", "time_this_iter_s",
    "time_total_s", "timestamp", "pid", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "checkpoint_path", "precision",
}


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

    def on_step_end(self, **info):
        self._each("on_step_end", info)

    def on_experiment_end(self, **info):
        self._each("on_experiment_end", info)


def _trial_id(trial) -> str:
    return TrialConfig.from_json(trial.config[TRIAL_KEY]).trial_id


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
    ends or fails, so a reader in another process sees the sweep as it goes."""

    def __init__(self, store: ResultsStore, rows: dict[str, dict], evals: list[dict],
                 replayed: set[str] = frozenset(), min_interval_s: float = 2.0) -> None:
        self.store, self.rows, self.evals = store, rows, evals
        self.replayed = replayed  # finished in an earlier run: their rows are final
        self.min_interval_s = min_interval_s
        self._last_write = 0.0
        self.flush()

    def flush(self) -> None:
        self.store.write_table("trials.parquet", trials_frame(self.rows))
        self.store.write_table("evals.parquet", evals_frame(self.evals))
        self._last_write = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id = _trial_id(trial)
        if trial_id not in self.replayed:
            self.rows[trial_id].update(status="running", error="", started_at=datetime.now(timezone.utc))
            self.flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = _trial_id(trial)
        if result.get("replayed"):
            return
        for metric, value in result.items():
            if metric in _BOOKKEEPING or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            self.evals.append({"trial_id": trial_id, "step": result["step"], "tokens": result["tokens"],
                               "flops": result["flops"], "metric": metric, "value": float(value)})
        if result.get("done"):
            self._finish(trial_id, result)
        elif time.monotonic() - self._last_write > self.min_interval_s:
            self.flush()

    def _finish(self, trial_id: str, result: dict) -> None:
        row = self.rows[trial_id]
        row.update(
            status=result["status"],
            error=result.get("error", ""),
            caveats=result.get("caveats", ""),
            tokens=int(result["tokens"]),
            flops=float(result["flops"]),
            flops_measured=float(result["flops_measured_per_token"]) * int(result["tokens"]),
            final_loss=float(result.get("loss", float("nan"))),
            final_train_loss=float(result.get("train_loss", float("nan"))),
            wall_s=float(result["elapsed_s"]),
            startup_s=float(result["startup_s"]),
            tokens_per_s=float(result.get("tokens_per_s", float("nan"))),
            node_id=result.get("node_id", ""),
            precision=result.get("precision", row["precision"]),  # "auto" resolved on the worker
            finished_at=datetime.now(timezone.utc),
        )
        self.flush()
        if row.get("role") == "branch" and row["status"] == "completed":
            self._release(row)

    def _release(self, row: dict) -> None:
        """A completed wsd branch no longer needs its trunk's checkpoint at its branch point."""
        try:
            BranchCheckpoints(self.store.uri).release(row["parent"], int(row["branch_step"]))
        except OSError as exc:  # a leftover checkpoint costs disk, not results
            print(f"warning: {row['trial_id']}: cannot delete the trunk checkpoint it started from: {exc}",
                  file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        trial_id = _trial_id(trial)
        if trial_id not in self.replayed:
            self.rows[trial_id].update(status="failed", error=error_summary(trial),
                                       finished_at=datetime.now(timezone.utc))
            self.flush()

    def on_experiment_end(self, trials, **info):
        for row in self.rows.values():
            if row["status"] == "running":  # Tune stopped without a final word (interrupted)
                row["status"] = "interrupted"
        self.flush()


class ProgressPrinter(Callback):
    """Live progress on stderr: an event line per finished trial and a status line every
    ``interval_s``: trials done/running/failed/pending, current losses, data units/s, ETA."""

    def __init__(self, rows: dict[str, dict], interval_s: float = 10.0, stream=sys.stderr) -> None:
        self.rows, self.interval_s, self.stream = rows, interval_s, stream
        self.started = time.monotonic()
        self._last_print = 0.0
        self.latest: dict[str, dict] = {}

    def _say(self, text: str) -> None:
        print(f"[{_clock(time.monotonic() - self.started)}] {text}", file=self.stream, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = _trial_id(trial)
        self.latest[trial_id] = result
        if result.get("done") and not result.get("replayed"):
            mark = "done" if result["status"] == "completed" else result["status"].upper()
            row = self.rows.get(trial_id, {})
            self._say(f"{mark:>8} {trial_id}: loss {result.get('loss', float('nan')):.4f} "
                      f"{row.get('loss_unit', 'nats/token')}, {result.get('tokens_per_s', 0):,.0f} "
                      f"{row.get('data_unit', 'tokens')}/s, {result['elapsed_s']:.1f} s")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(f"  FAILED {_trial_id(trial)}: {error_summary(trial)}")

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last_print >= self.interval_s:
            self._last_print = time.monotonic()
            self._say(self.status_line())

    def status_line(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        running = [(tid, self.latest.get(tid, {})) for tid, r in self.rows.items() if r["status"] == "running"]
        eta = self.eta_s(max(1, len(running)))
        failed = counts.get("failed", 0) + counts.get("diverged", 0)
        parts = [f"{counts.get('completed', 0)}/{len(self.rows)} done, {len(running)} running, "
                 f"{failed} failed, {counts.get('pending', 0)} pending",
                 f"ETA {_clock(eta) if eta is not None else '?'}"]
        for tid, res in running:
            if "loss" in res:
                unit = "tok" if self.rows[tid].get("data_unit", "tokens") == "tokens" else "img"
                parts.append(f"{tid} {res['tokens']:.3g} {unit} loss {res['loss']:.3f} "
                             f"{res.get('tokens_per_s', 0):,.0f} {unit}/s")
        return " | ".join(parts)

    def eta_s(self, slots: int) -> float | None:
        """Seconds left: each unfinished trial's remaining tokens at the tokens/s seen for its
        model size (or, for a size not seen yet, at the FLOP rate seen overall), over the
        number of trials running at once. Small models run far below the FLOP rate of large
        ones, so a FLOPs-only estimate is badly optimistic."""
        speed: dict[int, float] = {}
        flop_rates = []
        for tid, res in self.latest.items():
            if res.get("tokens_per_s"):
                n = self.rows[tid]["n_params"]
                speed[n] = res["tokens_per_s"]
                flop_rates.append(res["tokens_per_s"] * self.rows[tid]["flops_per_token"])
        if not flop_rates:
            return None
        flop_rate = sum(flop_rates) / len(flop_rates)
        left = 0.0
        for tid, row in self.rows.items():
            if row["status"] not in ("pending", "running"):
                continue
            tokens_left = row["tokens"] - self.latest.get(tid, {}).get("tokens", 0)
            rate = speed.get(row["n_params"]) or flop_rate / row["flops_per_token"]
            left += tokens_left / rate
        return left / slots


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
