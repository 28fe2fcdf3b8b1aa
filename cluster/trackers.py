"""The trackers themselves: Ray Tune's own logger callbacks for MLflow, TensorBoard and W&B,
with what a scaling-law sweep needs on top of them.

- One run per trial, named by its trial id, with the trial's parameters (``PARAMS``, and its
  shape fields) and, at every evaluation point, its metrics at step = data units trained
  (tokens or samples) together with ``flops`` (TensorBoard, which has one step axis only, also
  writes each metric under ``by_gflop/`` at step = GFLOPs).
- A trial's run ends with the trial's status (``STATUS_TAG``) and error.
- The sweep as a parent: an MLflow run its trials nest under, a W&B group with a run of its
  own; it holds the spec, fits.json, report.html (and emergence.json, tasks.json when present).
- Resume: a trial's run is found again (MLflow by its tags, W&B and TensorBoard by ids derived
  from the results store and the trial id), and trials finished in an earlier run are skipped.

``cluster.sweep`` registers them with the driver's other callbacks (``cluster.monitor.ACTIVE``);
each is driven by the Tune hooks plus ``begin`` (before the first trial), ``end_trials``
(when Tune has stopped) and ``finish`` (after the fits and the report).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
from ray.tune.logger import TBXLoggerCallback

from analysis.records import EVALS, SHAPE_PREFIX, SPEC_FILE, TRIALS, Status
from cluster.tracking import MLflowTarget, Targets
from experiments.spec import WandbSpec
from experiments.trial_report import TrialReport

# A trial's parameters, as its trials.parquet row holds them (plus its shape_<field> columns).
PARAMS = (TRIALS.sweep, TRIALS.family, TRIALS.role, TRIALS.n_params, TRIALS.total_params, TRIALS.data_unit,
          TRIALS.data_units, TRIALS.flops, TRIALS.compute_budget, TRIALS.lr, TRIALS.lr_chosen_by, TRIALS.schedule,
          TRIALS.parent, TRIALS.branch_step, TRIALS.zero_stage, TRIALS.precision, TRIALS.seed, TRIALS.workers,
          TRIALS.batch_size, TRIALS.seq_len, TRIALS.data_source)
STATUS_TAG, ERROR_TAG = "scalinglab.status", "scalinglab.error"
STORAGE_TAG, TRIAL_TAG, SWEEP_TAG = "scalinglab.storage", "scalinglab.trial_id", "scalinglab.sweep"
GFLOP = 1e9


class SweepRuns:
    """What the three trackers share: which trial is which, its parameters, one evaluation
    point's metrics, and its final status (all read from the driver's ``TableRecorder``)."""

    def begin(self, recorder, storage: str, sweep: str, spec_text: str) -> None:
        self.recorder, self.storage, self.sweep = recorder, storage, sweep
        self._warned = False
        self._start(spec_text)

    def guarded(self, call, *args, **kwargs) -> None:
        """``call``, with any error a warning (the first one per tracker): a tracker that
        fails mid-sweep never stops the sweep, whose results are on disk either way."""
        try:
            call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (a tracker's network, store or client error)
            if not self._warned:
                self._warned = True
                print(f"warning: tracking: {type(self).__name__} stopped logging some results: "
                      f"{type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr, flush=True)

    # Tune's hooks (LoggerCallback turns them into log_trial_*), each guarded
    def on_trial_start(self, **info):
        self.guarded(super().on_trial_start, **info)

    def on_trial_result(self, **info):
        self.guarded(super().on_trial_result, **info)

    def on_trial_complete(self, **info):
        self.guarded(super().on_trial_complete, **info)

    def on_trial_error(self, **info):
        self.guarded(super().on_trial_error, **info)

    def on_experiment_end(self, **info):
        self.guarded(super().on_experiment_end, **info)

    def _start(self, spec_text: str) -> None:
        raise NotImplementedError

    def ours(self, trial) -> str | None:
        """The trial's id, or None for one that finished in an earlier run (replayed at once)."""
        from cluster.monitor import trial_id

        tid = trial_id(trial)
        return None if tid in self.recorder.replayed else tid

    def params(self, tid: str) -> dict:
        row = self.recorder.rows[tid]
        out = {c: row[c] for c in PARAMS}
        out.update({k: v for k, v in row.items() if k.startswith(SHAPE_PREFIX)})
        return {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in out.items()}

    def status(self, tid: str) -> tuple[Status, str]:
        row = self.recorder.rows[tid]
        return Status(row[TRIALS.status]), str(row[TRIALS.error] or "")

    @staticmethod
    def point(result: dict) -> tuple[int, float, dict[str, float]] | None:
        """(data units, FLOPs, finite metrics) of an evaluation point's result."""
        report = TrialReport.from_tune(result)
        if report is None or not report.metrics:
            return None
        metrics = {k: float(v) for k, v in report.metrics.items() if math.isfinite(v)}
        return report.data_units, report.flops, metrics

    def end_trials(self) -> None:
        """Tune stopped: runs still open end as interrupted (``--resume`` continues them)."""

    def finish(self, files: dict[str, bytes], ok: bool) -> None:
        """After the fits and the report: the sweep's files (by name) onto its parent run, which
        ends failed unless ``ok`` (every trial completed)."""


def mlflow_status(status: Status) -> str:
    if status == Status.COMPLETED:
        return "FINISHED"
    return "FAILED" if status.finished else "KILLED"


class MLflowTracker(SweepRuns, MLflowLoggerCallback):
    """Ray's MLflow callback; trial runs nest under the sweep's run (``mlflow.parentRunId``)."""

    def __init__(self, target: MLflowTarget) -> None:
        super().__init__(tracking_uri=target.uri, experiment_name=target.experiment)
        self.target = target

    def _start(self, spec_text: str) -> None:
        from mlflow import MlflowClient

        self.mlflow_util.setup_mlflow(tracking_uri=self.target.uri, experiment_name=self.target.experiment,
                                      artifact_location=self.target.artifacts)
        self.tags, self._trial_runs = {}, {}
        self.client = MlflowClient(self.target.uri)
        self.experiment_id = self.mlflow_util.experiment_id
        ours = self._search(f"tags.`{STORAGE_TAG}` = '{_quoted(self.storage)}'")
        parents = [r for r in ours if r.data.tags.get(SWEEP_TAG) and TRIAL_TAG not in r.data.tags]
        if parents:
            self.parent = parents[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = self.client.create_run(self.experiment_id, run_name=self.sweep, tags={
                STORAGE_TAG: self.storage, SWEEP_TAG: self.sweep}).info.run_id
        self.runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in ours if TRIAL_TAG in r.data.tags}
        self.client.log_text(self.parent, spec_text, SPEC_FILE)  # there while the sweep runs

    def _search(self, query: str) -> list:
        found, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                           page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return found

    def log_trial_start(self, trial) -> None:
        from mlflow.entities import Param

        tid = self.ours(trial)
        if tid is None:
            return
        run_id = self.runs.get(tid)
        if run_id is None:  # a new trial: a new run with its parameters
            run_id = self.client.create_run(self.experiment_id, run_name=tid, tags={
                "mlflow.parentRunId": self.parent, STORAGE_TAG: self.storage, SWEEP_TAG: self.sweep,
                TRIAL_TAG: tid}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in self.params(tid).items()])
            self.runs[tid] = run_id
        else:  # resumed or retried: the same run goes on
            self.client.update_run(run_id, status="RUNNING")
        self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        point = self.point(result)
        if trial not in self._trial_runs or point is None:
            return
        units, flops, metrics = point
        now = _millis()
        batch = [Metric(k, v, now, units) for k, v in {**metrics, EVALS.flops: flops}.items()]
        self.client.log_batch(self._trial_runs[trial], metrics=batch)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._trial_runs.pop(trial, None)
        if run_id is not None:
            self._end(run_id, *self.status(self.ours(trial)))

    def _end(self, run_id: str, status: Status, error: str) -> None:
        self.client.set_tag(run_id, STATUS_TAG, status.value)
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        self.mlflow_util.end_run(run_id=run_id, status=mlflow_status(status))

    def end_trials(self) -> None:
        for trial, run_id in list(self._trial_runs.items()):
            self._end(run_id, Status.INTERRUPTED, "")
            del self._trial_runs[trial]

    def finish(self, files: dict[str, bytes], ok: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                if name == SPEC_FILE:  # logged at the start
                    continue
                (Path(tmp) / name).write_bytes(data)
                self.client.log_artifact(self.parent, str(Path(tmp) / name))
        self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")


class TensorBoardTracker(SweepRuns, TBXLoggerCallback):
    """Ray's tensorboardX callback writing ``DIR/<sweep>/<trial_id>/``, with the trial's
    parameters and final metrics as hparams when it ends, and the spec in ``DIR/<sweep>/sweep``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def _start(self, spec_text: str) -> None:
        self.root = self.folder / self.sweep
        with self._summary_writer_cls(str(self.root / "sweep")) as writer:
            writer.add_text("spec", "```\n" + spec_text + "\n```")

    def log_trial_start(self, trial) -> None:
        tid = self.ours(trial)
        if tid is None:
            return
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        self._trial_writer[trial] = self._summary_writer_cls(str(self.root / tid), flush_secs=30)
        self._trial_result[trial] = {}

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        point = self.point(result)
        if trial not in self._trial_writer or point is None:
            return
        units, flops, metrics = point
        writer = self._trial_writer[trial]
        for name, value in {**metrics, EVALS.flops: flops}.items():
            writer.add_scalar(name, value, global_step=units)
        for name, value in metrics.items():
            writer.add_scalar(f"by_gflop/{name}", value, global_step=round(flops / GFLOP))
        self._trial_result[trial] = metrics
        writer.flush()

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_writer:
            self._close(trial, *self.status(self.ours(trial)))

    def _close(self, trial, status: Status, error: str) -> None:
        from tensorboardX.summary import hparams

        writer = self._trial_writer.pop(trial)
        params = {**self.params(self.ours(trial)), STATUS_TAG: status.value}
        for summary in hparams(params, {f"final/{k}": v for k, v in self._trial_result.pop(trial).items()}):
            writer.file_writer.add_summary(summary)
        writer.add_text("status", status.value + (f": {error}" if error else ""))
        writer.close()

    def end_trials(self) -> None:
        for trial in list(self._trial_writer):
            self._close(trial, Status.INTERRUPTED, "")


END_KEY = "_scalinglab_end"  # a queue item that ends a W&B run: summary fields and the exit code


class _TrialActor(_WandbLoggingActor):
    """Ray's W&B logging actor, logging our points as they are and ending the run with the
    trial's exit code (W&B marks a run with a non-zero one as failed)."""

    def run(self):
        os.environ["WANDB_START_METHOD"] = "thread"
        run = self._wandb.init(*self.args, **self.kwargs)
        exit_code = 0
        while True:
            kind, item = self.queue.get()
            if kind == _QueueItem.END:
                break
            if kind == _QueueItem.RESULT and END_KEY in item:
                exit_code = item.pop(END_KEY)
                run.summary.update(item)
            elif kind == _QueueItem.RESULT:
                run.log(item)
        run.finish(exit_code=exit_code)


class WandbTracker(SweepRuns, WandbLoggerCallback):
    """Ray's W&B callback (one logging actor per trial, on the driver's node): runs in the
    sweep's group, resumed by id; the sweep's files go to a run of its own in the group."""

    _logger_actor_cls = _TrialActor

    def __init__(self, spec: WandbSpec) -> None:
        super().__init__(project=spec.project, entity=spec.entity, mode=spec.mode, dir=spec.dir,
                         settings={"quiet": True, "silent": True})

    def _start(self, spec_text: str) -> None:
        self.group = self.sweep  # the API key, when online, was checked by cluster.tracking

    def run_id(self, name: str) -> str:
        """A W&B id that is the same for the same trial of the same results store."""
        digest = hashlib.sha1(self.storage.encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}-{digest}")[-120:]

    def log_trial_start(self, trial) -> None:
        tid = self.ours(trial)
        if tid is None or trial in self._trial_logging_futures:  # restarted by Tune: its run goes on
            return
        trial.init_local_path()
        self._start_logging_actor(trial, [], id=self.run_id(tid), name=tid, group=self.group,
                                  job_type=str(self.recorder.rows[tid][TRIALS.role]), resume="allow",
                                  allow_val_change=True, config=self.params(tid), project=self.project,
                                  **self.kwargs)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        point = self.point(result)
        if trial not in self._trial_queues or point is None:
            return
        units, flops, metrics = point
        unit = str(self.recorder.rows[self.ours(trial)][TRIALS.data_unit])
        self._trial_queues[trial].put((_QueueItem.RESULT, {**metrics, unit: units, EVALS.flops: flops}))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_queues:
            self._end(trial, *self.status(self.ours(trial)))
            super().log_trial_end(trial, failed)

    def _end(self, trial, status: Status, error: str) -> None:
        self._trial_queues[trial].put((_QueueItem.RESULT, {END_KEY: 0 if status == Status.COMPLETED else 1,
                                                           STATUS_TAG: status.value, ERROR_TAG: error}))

    def end_trials(self) -> None:
        for trial in list(self._trial_queues):
            if trial in self._trial_logging_futures:
                self._end(trial, Status.INTERRUPTED, "")
                self._signal_logging_actor_stop(trial)
        self._cleanup_logging_actors(timeout=self._upload_timeout, kill_on_timeout=True)

    def finish(self, files: dict[str, bytes], ok: bool) -> None:
        import wandb

        run = wandb.init(id=self.run_id("sweep"), name=f"{self.sweep} (sweep)", group=self.group, job_type="sweep",
                         resume="allow", config={STORAGE_TAG: self.storage}, project=self.project, **self.kwargs)
        artifact = wandb.Artifact(f"{self.sweep}-results", type="sweep-results")
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
                artifact.add_file(str(Path(tmp) / name), name=name)
            run.log_artifact(artifact)
            run.finish(exit_code=0 if ok else 1)


def build(targets: Targets) -> list[SweepRuns]:
    """The tracker callbacks of resolved, checked ``targets``."""
    out: list[SweepRuns] = []
    if targets.mlflow:
        out.append(MLflowTracker(targets.mlflow))
    if targets.tensorboard:
        out.append(TensorBoardTracker(targets.tensorboard))
    if targets.wandb:
        out.append(WandbTracker(targets.wandb))
    return out


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _millis() -> int:
    import time

    return int(time.time() * 1000)
