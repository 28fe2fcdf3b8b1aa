"""Run a sweep: plan it, launch one Ray Tune trial per planned point, keep the tables.

``run_sweep`` is what ``scalinglab sweep`` calls. A new sweep refuses a folder that already
holds one (use ``resume=True``); a resumed sweep restores Tune's experiment, keeps every
row already on disk whose status is finished (``analysis.records.Status.finished``), and
does not train those trials again (``failed`` ones only with ``retry_failed``).

This module does Ray and nothing else: fitting and the report happen at the CLI layer.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.errors import UserError
from analysis.records import ADAPTIVE_FILE, EVALS, PLAN_FILE, RUNS_FILE, TRIALS, Role, Status
from analysis.store import ResultsStore, storage_uri
from cluster.results import load_plan_ids, planned_row, save_plan
from cluster.runtime import RayStart, abandoned_on_error
from cluster.trial import TRIAL_KEY, TestHooks, resources_for, run_trial
from experiments.planner import TrialConfig, plan, with_chosen_lrs
from experiments.spec import SweepSpec, load_spec

TUNE_DIR = "tune"
LR_TUNE_DIR = "tune-lr"  # the LR-search phase
TRAIN_DIR = "train"


@dataclass
class SweepOutcome:
    storage: str
    trials: pd.DataFrame
    evals: pd.DataFrame
    wall_s: float
    trackers: list = field(default_factory=list)  # cluster.trackers callbacks: the CLI calls their finish()

    @property
    def ok(self) -> bool:
        return bool(self.trials[TRIALS.status].map(lambda s: Status(s).ok).all())


def prepare(spec_path: str, storage: str | None) -> tuple[SweepSpec, list[TrialConfig], str]:
    """Load, validate and plan; raises UserError before anything is launched."""
    spec, located = load_spec(spec_path)
    trials = plan(spec, located)
    uri = storage_uri(storage or spec.storage or str(Path("results") / spec.name))
    return spec, trials, uri


def run_sweep(spec_path: str, *, storage: str | None = None, address: str | None = None,
              resume: bool = False, retry_failed: bool = False, verbose: bool = False,
              max_concurrent: int | None = None, progress_interval_s: float = 10.0,
              tracking: Sequence[str] = (), hooks: TestHooks = TestHooks(),
              reuse_processes: bool = True, ray_start: RayStart | None = None, designer=None) -> SweepOutcome:
    """Run (or resume) the sweep; returns its tables. Uses the Ray this process is connected
    to when there is one (and leaves it running), else starts one (and stops it); or
    ``ray_start``'s (``cluster.runtime.RayStart``, for ``address``). ``tracking``: the
    ``--tracking`` flags. ``reuse_processes``: a finished trial's process runs the next trial
    of the same resources (Tune's ``reuse_actors``: no process start, imports or data
    loading); False starts each afresh (the tests compare the two). ``designer(candidates,
    settings)`` builds an adaptive design (``analysis.design.Design.for_candidates``; the CLI
    gives it): needed by a spec whose budgets are adaptive, which this layer cannot fit."""
    from cluster.monitor import ACTIVE, ProgressPrinter, TableRecorder
    from cluster.runtime import cluster_resources, start_ray, stop_ray

    started = time.monotonic()
    spec, trials, uri, store, trackers_at = _before_ray(spec_path, storage, tracking, ray_start, designer)
    spec_text = Path(spec_path).read_text()
    owns_ray = ray_start.wait() if ray_start else start_ray(address, verbose=verbose)
    resources = cluster_resources()
    try:
        _check_on_ray(uri, trackers_at, trials, embedded=address is None)
        rows, evals = _initial_tables(store, trials, resume, spec_text, retry_failed)
    except UserError:
        if owns_ray:
            stop_ray()
        raise
    runs = _record_run(store, address, resources, resume)
    _say(f"sweep {spec.name}: {len(trials)} trials on Ray ({resources.get('CPU', 0):g} CPUs, "
         f"{resources.get('GPU', 0):g} GPUs) -> {uri}")
    recorder = TableRecorder(store, rows, evals)
    trackers: list = []
    try:
        trackers = _open_trackers(trackers_at, recorder, uri, spec.name, spec_text)
        ACTIVE[:] = [recorder, ProgressPrinter(rows, interval_s=progress_interval_s), *trackers]
        phases = sweep_phases(trials)
        for k, (tune_dir, what, phase) in enumerate(phases):
            if tune_dir != LR_TUNE_DIR and any(t.role == Role.LR_SEARCH for t in trials):
                phase = _apply_lr_search(trials, phase, rows)
            if len(phases) > 1:
                _say(f"phase {k + 1}/{len(phases)}: {len(phase)} {what}")
            ended = _ended(rows, retry_failed)
            recorder.replayed = frozenset(ended)
            limit = max_concurrent or spec.resources.max_concurrent or default_concurrency(phase, resources)
            _tuner(phase, uri, tune_dir, resume, retry_failed, verbose, ended, limit, spec.max_failures,
                   reuse_processes, hooks, _search(spec, phase, designer, uri)).fit()
            if spec.budgets.kind == "adaptive":
                _skip_unchosen(store, recorder)
    finally:
        recorder.on_experiment_end(trials=[])
        for tracker in trackers:  # before Ray stops: W&B logs from Ray actors
            tracker.guarded(tracker.end_trials)
        ACTIVE.clear()
        if owns_ray:
            stop_ray()  # before any analysis forks processes (forking Ray's threads is unsafe)
        runs[-1]["wall_s"] = round(time.monotonic() - started, 1)
        store.write_json(RUNS_FILE, {"runs": runs})
    return SweepOutcome(uri, store.read_table(TRIALS.file), store.read_table(EVALS.file),
                        time.monotonic() - started, trackers)


def _before_ray(spec_path: str, storage: str | None, tracking: Sequence[str], ray_start: RayStart | None, designer):
    """(spec, trials, results URI, store, tracking targets): a bad spec, or a store or tracker
    out of reach, stops the run here, before Ray is used (one starting on a thread is stopped)."""
    from cluster.tracking import targets

    with abandoned_on_error(ray_start):
        spec, trials, uri = prepare(spec_path, storage)
        if spec.budgets.kind == "adaptive" and designer is None:
            raise TypeError("run_sweep: an adaptive spec needs designer= (analysis.design.Design.for_candidates)")
        store = ResultsStore(uri)
        store.check_reachable()
        return spec, trials, uri, store, targets(spec.tracking, tracking, spec.name, uri)


def _check_on_ray(uri: str, trackers_at, trials: list[TrialConfig], embedded: bool) -> None:
    """Checks that need Ray up: every node sees the storage and the trackers' folders (on a
    multi-node cluster a node-local path is refused), and some node can hold each trial."""
    from cluster.storage_check import check_shared

    check_shared(uri)
    for what, folder in trackers_at.local_folders():
        check_shared(str(folder), what)
    _check_placement(trials, embedded=embedded)


def _search(spec: SweepSpec, phase: list[TrialConfig], designer, uri: str):
    """A factory of the phase's Tune search algorithm (a new Tune run calls it; a restored one
    brings back its own): the planned trials in order, or an adaptive design's choices."""
    from cluster.searcher import PlannedTrials, adaptive_searcher

    if spec.budgets.kind == "adaptive":
        return functools.partial(adaptive_searcher, phase, TRIAL_KEY, designer, spec.budgets.adaptive, uri)
    return functools.partial(PlannedTrials, phase, TRIAL_KEY)


def _open_trackers(targets, recorder, uri: str, sweep: str, spec_text: str) -> list:
    if not targets.any:
        return []
    from cluster.trackers import build

    trackers = build(targets)
    for tracker in trackers:
        tracker.begin(recorder, uri, sweep, spec_text)
    _say("tracking: " + ", ".join(type(t).__name__.removesuffix("Tracker") for t in trackers))
    return trackers


def _ended(rows: dict[str, dict], retry_failed: bool) -> dict[str, float]:
    """Trials the table records as finished, with their final loss (NaN unless completed):
    Tune's trial for each returns at once."""
    return {tid: float(row[TRIALS.final_loss]) if row[TRIALS.status] == Status.COMPLETED else math.nan
            for tid, row in rows.items() if Status(row[TRIALS.status]).kept_on_resume(retry_failed)}


def _skip_unchosen(store: ResultsStore, recorder) -> None:
    """Once the adaptive design has stopped, the candidates it never chose are ``skipped``
    (a sweep interrupted before that keeps them pending, for --resume)."""
    if not store.read_json(ADAPTIVE_FILE, {}).get("stopped"):
        return
    for row in recorder.rows.values():
        if row[TRIALS.status] == Status.PENDING:
            row[TRIALS.status] = Status.SKIPPED.value
    recorder.flush()


def _check_placement(trials: list[TrialConfig], embedded: bool) -> None:
    """A trial no node can hold would wait forever. On the embedded Ray that is an error; on
    a cluster an autoscaler may still add a node that fits, so it is a warning."""
    from cluster.placement import live_nodes, placement_problems

    problems = placement_problems(trials, live_nodes())
    if not problems:
        return
    listed = "; ".join(f"{tid}: {why}" for tid, why in list(problems.items())[:3])
    if embedded:
        raise UserError(f"{len(problems)} trial(s) can never run on this machine ({listed}); lower "
                        "resources.cpus_per_worker / gpus_per_worker / workers, or use --address for a cluster")
    _say(f"warning: no live node can hold {len(problems)} trial(s) yet ({listed}); they wait for the "
         "autoscaler to add a node that fits")


def _record_run(store: ResultsStore, address: str | None, resources: dict, resume: bool) -> list[dict]:
    """Append this run to run.json (its wall time is filled in when the run ends)."""
    runs = store.read_json(RUNS_FILE, {"runs": []})["runs"]
    runs.append({"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": None,
                 "address": address, "resumed": resume,
                 "resources": {k: float(v) for k, v in resources.items() if k in ("CPU", "GPU", "memory")}})
    store.write_json(RUNS_FILE, {"runs": runs})
    return runs


def default_concurrency(trials: list[TrialConfig], resources: dict) -> int:
    """How many trials the cluster can hold at once. Tune would otherwise start every
    multi-worker trial at once (each holds no CPU while its TorchTrainer waits for
    worker resources), paying a trial process per pending trial for nothing."""
    smallest_cpu = min(t.workers * t.cpus_per_worker for t in trials)
    limit = int(resources.get("CPU", 1) // smallest_cpu)
    gpu_trials = [t.workers * t.gpus_per_worker for t in trials if t.gpus_per_worker > 0]
    if gpu_trials and len(gpu_trials) == len(trials):
        limit = min(limit, int(resources.get("GPU", 0) // min(gpu_trials)))
    return max(1, limit)


def _initial_tables(store: ResultsStore, trials: list[TrialConfig], resume: bool, spec_text: str,
                    retry_failed: bool) -> tuple[dict[str, dict], list[dict]]:
    """The rows the sweep starts from: every trial pending, or, on resume, the finished rows
    on disk kept as they are (``failed`` ones pending again with ``retry_failed``)."""
    rows = {t.trial_id: planned_row(t) for t in trials}
    existing = store.exists(PLAN_FILE)
    if existing and not resume:
        raise UserError(
            f"storage: {store.uri} already holds a sweep; continue it with --resume, or "
            "give another --storage (or delete the folder) to start over"
        )
    if not existing:
        if resume:
            raise UserError(f"--resume: no sweep to resume in {store.uri} (no {PLAN_FILE})")
        store.makedirs()
        save_plan(store, trials, spec_text)
        return rows, []
    if load_plan_ids(store) != [t.trial_id for t in trials]:
        raise UserError(
            f"--resume: the spec's plan differs from the one in {store.uri}; resume with the "
            "spec the sweep started with, or start a new sweep in another --storage"
        )
    evals: list[dict] = []
    if store.exists(TRIALS.file):
        for row in store.read_table(TRIALS.file).to_dict("records"):
            if row[TRIALS.trial_id] in rows and Status(row[TRIALS.status]).kept_on_resume(retry_failed):
                # the row on disk, over the planned one: a column added since it was written
                # (e.g. `restarts`) keeps its planned value
                rows[row[TRIALS.trial_id]] = {**rows[row[TRIALS.trial_id]], **row}
    if store.exists(EVALS.file):
        evals = store.read_table(EVALS.file).to_dict("records")
    return rows, evals


def sweep_phases(trials: list[TrialConfig]) -> list[tuple[str, str, list[TrialConfig]]]:
    """(Tune folder, description, trials) per phase, in order: the LR search (whose results
    set the other runs' LR), then every other trial in ``tune/``, wsd trunks before their
    branches (``cluster.searcher.PlannedTrials`` starts a branch once its trunk has ended)."""
    by_role = {role: [t for t in trials if t.role == role] for role in Role}
    runs = by_role[Role.TRUNK] + by_role[Role.POINT] + by_role[Role.BRANCH]
    phases = [(LR_TUNE_DIR, "LR-search runs", by_role[Role.LR_SEARCH]),
              (TUNE_DIR, "wsd trunks and cooldown branches" if by_role[Role.TRUNK] else "trials", runs)]
    return [p for p in phases if p[2]]


def _apply_lr_search(all_trials: list[TrialConfig], phase: list[TrialConfig], rows: dict[str, dict]) -> list[TrialConfig]:
    """The phase's trials with each size's searched LR, also written into their rows."""
    losses = {tid: float(r[TRIALS.final_loss]) for tid, r in rows.items() if r[TRIALS.status] == Status.COMPLETED}
    updated, chosen = with_chosen_lrs(all_trials, losses)
    by_id = {t.trial_id: t for t in updated}
    out = [by_id[t.trial_id] for t in phase]
    for t in out:
        row = rows[t.trial_id]
        if not Status(row[TRIALS.status]).finished:
            row.update({TRIALS.lr: t.training.lr, TRIALS.lr_chosen_by: t.lr_chosen_by.value,
                        TRIALS.config: t.to_json()})
    if phase and phase[0].role in (Role.TRUNK, Role.POINT):  # say it once, before the first phase that uses it
        for i, (lr, candidates) in sorted(chosen.items()):
            tried = ", ".join(f"{c:g}: {v:.4f}" for c, v in sorted(candidates.items()))
            _say(f"lr search, size {i}: {'best ' + format(lr, 'g') if lr is not None else 'no candidate completed'}"
                 f" (final loss by LR: {tried})")
    return out


def _tuner(trials, uri, tune_dir, resume, retry_failed, verbose, ended, limit, max_failures, reuse, hooks, search):
    from ray import tune

    from cluster.monitor import Dispatch
    from cluster.searcher import PlannedTrials

    finished = frozenset(ended)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, train_storage=f"{uri.rstrip('/')}/{TRAIN_DIR}", results_uri=uri,
                             verbose=verbose, finished=finished, hooks=hooks),
        resources_for,
    )
    tune_path = f"{uri.rstrip('/')}/{tune_dir}"
    if resume and tune.Tuner.can_restore(tune_path):
        PlannedTrials.ended_on_disk = ended
        return tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True,
            resume_errored=retry_failed, restart_errored=False,
        )
    ids = {t.to_json(): t.trial_id for t in trials}
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search(),
            num_samples=len(trials),
            max_concurrent_trials=limit,
            reuse_actors=reuse,
            trial_name_creator=lambda trial: ids[trial.config[TRIAL_KEY]],
            trial_dirname_creator=lambda trial: ids[trial.config[TRIAL_KEY]],
        ),
        run_config=tune.RunConfig(
            name=tune_dir,
            storage_path=uri,
            verbose=0,
            callbacks=[Dispatch()],
            failure_config=tune.FailureConfig(max_failures=max_failures, fail_fast=False),
            # three, not one: a driver killed between a checkpoint and the end of Tune's next upload of
            # its experiment state (snapshotted every step: TUNE_GLOBAL_CHECKPOINT_S in
            # cluster.runtime) leaves a state that may name one of the older ones, which must exist
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        ),
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
