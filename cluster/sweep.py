"""Run a sweep: plan it, launch one Ray Tune trial per planned point, keep the tables.

``run_sweep`` is what ``scalinglab sweep`` calls. A new sweep refuses a folder that already
holds one (use ``resume=True``); a resumed sweep restores Tune's experiment, keeps every
row already on disk, and replays (does not re-run) trials the table records as completed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cluster.results import ResultsStore, load_plan_ids, planned_row, save_plan, storage_uri
from cluster.trial import TRIAL_KEY, resources_for, run_trial
from experiments.data import markov_entropy_rate
from experiments.errors import UserError
from experiments.planner import TrialConfig, plan
from experiments.spec import SweepSpec, load_spec, resolve_data_paths

FINAL = {"completed", "diverged", "failed"}  # statuses a resumed sweep keeps (failed: unless retried)
TUNE_DIR = "tune"
LR_TUNE_DIR = "tune-lr"  # the LR-search phase
BRANCH_TUNE_DIR = "tune-branches"  # the wsd cooldown branches' phase
TRAIN_DIR = "train"
RUNS_FILE = "run.json"  # one entry per run of the sweep command (the report's header reads it)


@dataclass
class SweepOutcome:
    storage: str
    trials: pd.DataFrame
    evals: pd.DataFrame
    wall_s: float

    @property
    def ok(self) -> bool:
        return bool((self.trials["status"] == "completed").all())


def prepare(spec_path: str, storage: str | None) -> tuple[SweepSpec, list[TrialConfig], str]:
    """Load, validate and plan; raises UserError before anything is launched."""
    spec, located = load_spec(spec_path)
    spec = resolve_data_paths(spec, spec_path)
    trials = plan(spec, located)
    uri = storage_uri(storage or spec.storage or str(Path("results") / spec.name))
    return spec, trials, uri


def run_sweep(spec_path: str, *, storage: str | None = None, address: str | None = None,
              resume: bool = False, retry_failed: bool = False, verbose: bool = False,
              max_concurrent: int | None = None, progress_interval_s: float = 10.0) -> SweepOutcome:
    from cluster.monitor import ACTIVE, ProgressPrinter, TableRecorder
    from cluster.runtime import start_ray, stop_ray
    from cluster.storage_check import check_shared

    started = time.monotonic()
    spec, trials, uri = prepare(spec_path, storage)
    store = ResultsStore(uri)
    resources = start_ray(address, verbose=verbose)
    try:
        check_shared(uri)  # on a multi-node cluster, refuse a path some node cannot see
        _check_placement(trials, embedded=address is None)
        rows, evals = _initial_tables(store, spec, trials, resume, Path(spec_path).read_text(), retry_failed)
    except UserError:
        stop_ray()
        raise
    runs = _record_run(store, address, resources, resume)
    _say(f"sweep {spec.name}: {len(trials)} trials on Ray ({resources.get('CPU', 0):g} CPUs, "
         f"{resources.get('GPU', 0):g} GPUs) -> {uri}")
    finished = {tid: _final_metrics(r) for tid, r in rows.items() if r["status"] in FINAL}
    recorder = TableRecorder(store, rows, evals, replayed=set(finished))
    printer = ProgressPrinter(rows, interval_s=progress_interval_s)
    ACTIVE[:] = [recorder, printer]
    try:
        phases = sweep_phases(trials)
        for k, (tune_dir, what, phase) in enumerate(phases):
            if tune_dir != LR_TUNE_DIR and any(t.role == "lr_search" for t in trials):
                phase = _apply_lr_search(trials, phase, rows)
            if len(phases) > 1:
                _say(f"phase {k + 1}/{len(phases)}: {len(phase)} {what}")
            finished = {tid: _final_metrics(r) for tid, r in rows.items() if r["status"] in FINAL}
            recorder.replayed = set(finished)
            limit = max_concurrent or spec.resources.max_concurrent or default_concurrency(phase, resources)
            _tuner(phase, uri, tune_dir, resume, retry_failed, verbose, finished, limit, spec.max_failures).fit()
    finally:
        recorder.on_experiment_end(trials=[])
        ACTIVE.clear()
        stop_ray()  # before any analysis forks processes (forking Ray's threads is unsafe)
        runs[-1]["wall_s"] = round(time.monotonic() - started, 1)
        _save_runs(store, runs)
    frame = store.read_table("trials.parquet")
    return SweepOutcome(uri, frame, store.read_table("evals.parquet"), time.monotonic() - started)


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
    runs = _load_runs(store)
    runs.append({"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": None,
                 "address": address, "resumed": resume,
                 "resources": {k: float(v) for k, v in resources.items() if k in ("CPU", "GPU", "memory")}})
    _save_runs(store, runs)
    return runs


def _load_runs(store: ResultsStore) -> list[dict]:
    return json.loads(store.read_bytes(RUNS_FILE)).get("runs", []) if store.exists(RUNS_FILE) else []


def _save_runs(store: ResultsStore, runs: list[dict]) -> None:
    store.write_bytes(RUNS_FILE, json.dumps({"runs": runs}, indent=1).encode())


def default_concurrency(trials: list[TrialConfig], resources: dict) -> int:
    """How many trials the cluster can hold at once. Tune would otherwise start every
    multi-worker trial at once (each holds only 0.01 CPU while its TorchTrainer waits for
    worker resources), paying a trial process per pending trial for nothing."""
    smallest_cpu = min(t.workers * t.cpus_per_worker for t in trials)
    limit = int(resources.get("CPU", 1) // smallest_cpu)
    gpu_trials = [t.workers * t.gpus_per_worker for t in trials if t.gpus_per_worker > 0]
    if gpu_trials and len(gpu_trials) == len(trials):
        limit = min(limit, int(resources.get("GPU", 0) // min(gpu_trials)))
    return max(1, limit)


def _initial_tables(store: ResultsStore, spec: SweepSpec, trials: list[TrialConfig],
                    resume: bool, spec_text: str, retry_failed: bool) -> tuple[dict[str, dict], list[dict]]:
    entropy = markov_entropy_rate(spec.data.synthetic) if spec.data.source == "synthetic" else None
    rows = {t.trial_id: planned_row(t, entropy) for t in trials}
    existing = store.exists("plan.json")
    if existing and not resume:
        raise UserError(
            f"storage: {store.uri} already holds a sweep; continue it with --resume, or "
            "give another --storage (or delete the folder) to start over"
        )
    if not existing:
        if resume:
            raise UserError(f"--resume: no sweep to resume in {store.uri} (no plan.json)")
        store.makedirs()
        save_plan(store, trials, spec_text)
        return rows, []
    if load_plan_ids(store) != [t.trial_id for t in trials]:
        raise UserError(
            f"--resume: the spec's plan differs from the one in {store.uri}; resume with the "
            "spec the sweep started with, or start a new sweep in another --storage"
        )
    evals: list[dict] = []
    if store.exists("trials.parquet"):
        keep = FINAL if not retry_failed else FINAL - {"failed"}
        for row in store.read_table("trials.parquet").to_dict("records"):
            if row["trial_id"] in rows and row["status"] in keep:
                rows[row["trial_id"]] = row
    if store.exists("evals.parquet"):
        evals = store.read_table("evals.parquet").to_dict("records")
    return rows, evals


def _final_metrics(row: dict) -> dict:
    """A finished trial's final result, replayed to Tune on resume instead of re-running."""
    return {"done": True, "status": row["status"], "error": row["error"],
            "caveats": row.get("caveats", ""), "step": int(row["steps"]),
            "tokens": int(row["tokens"]), "flops": float(row["flops"]), "loss": float(row["final_loss"]),
            "elapsed_s": float(row["wall_s"])}


def sweep_phases(trials: list[TrialConfig]) -> list[tuple[str, str, list[TrialConfig]]]:
    """(Tune folder, description, trials) per phase, in order: a size's LR search before its
    runs, a wsd trunk before its branches. A sweep without either is one phase in ``tune/``."""
    by_role = {role: [t for t in trials if t.role == role] for role in ("lr_search", "trunk", "point", "branch")}
    phases = [(LR_TUNE_DIR, "LR-search runs", by_role["lr_search"]),
              (TUNE_DIR, "wsd trunks" if by_role["trunk"] else "trials", by_role["trunk"] + by_role["point"]),
              (BRANCH_TUNE_DIR, "wsd cooldown branches", by_role["branch"])]
    return [p for p in phases if p[2]]


def _apply_lr_search(all_trials: list[TrialConfig], phase: list[TrialConfig], rows: dict[str, dict]) -> list[TrialConfig]:
    """The phase's trials with each size's searched LR, also written into their rows."""
    from experiments.planner import with_chosen_lrs

    losses = {tid: float(r["final_loss"]) for tid, r in rows.items() if r["status"] == "completed"}
    updated, chosen = with_chosen_lrs(all_trials, losses)
    by_id = {t.trial_id: t for t in updated}
    out = [by_id[t.trial_id] for t in phase]
    for t in out:
        row = rows[t.trial_id]
        if row["status"] not in FINAL:
            row.update(lr=t.training.lr, lr_chosen_by=t.lr_chosen_by, config=t.to_json())
    if phase and phase[0].role in ("trunk", "point"):  # say it once, before the first phase that uses it
        for i, (lr, candidates) in sorted(chosen.items()):
            tried = ", ".join(f"{c:g}: {v:.4f}" for c, v in sorted(candidates.items()))
            _say(f"lr search, size {i}: {'best ' + format(lr, 'g') if lr is not None else 'no candidate completed'}"
                 f" (final loss by LR: {tried})")
    return out


def _tuner(trials, uri, tune_dir, resume, retry_failed, verbose, finished, limit, max_failures):
    from ray import tune

    from cluster.monitor import Dispatch

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, train_storage=f"{uri.rstrip('/')}/{TRAIN_DIR}", results_uri=uri,
                             verbose=verbose, finished=finished),
        resources_for,
    )
    tune_path = f"{uri.rstrip('/')}/{tune_dir}"
    if resume and tune.Tuner.can_restore(tune_path):
        return tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True,
            resume_errored=retry_failed, restart_errored=False,
        )
    ids = {t.to_json(): t.trial_id for t in trials}
    return tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search([t.to_json() for t in trials])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=limit,
            trial_name_creator=lambda trial: ids[trial.config[TRIAL_KEY]],
            trial_dirname_creator=lambda trial: ids[trial.config[TRIAL_KEY]],
        ),
        run_config=tune.RunConfig(
            name=tune_dir,
            storage_path=uri,
            verbose=0,
            callbacks=[Dispatch()],
            failure_config=tune.FailureConfig(max_failures=max_failures, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def fit_sweep(outcome: SweepOutcome, *, bootstrap: int = 200, seed: int = 0) -> tuple[list, str]:
    """Fit every law the sweep's completed trials identify; write ``fits.json`` beside the
    tables. Returns (the FitResults, the readable summary), or ([], "no fit: …" saying why)."""
    from analysis.fit import fit_laws, summary
    from analysis.points import AnalysisError

    store = ResultsStore(outcome.storage)
    try:
        results = fit_laws(outcome.trials, evals=outcome.evals, bootstrap=bootstrap, seed=seed,
                           log=lambda msg: None)
    except AnalysisError as exc:
        return [], f"no fit: {exc}"
    # with the bootstrap draws: `scalinglab report` then redraws the bands without refitting
    store.write_bytes("fits.json", json.dumps({"fits": [r.to_json(with_samples=True) for r in results]}).encode())
    return results, summary(results)


def report_sweep(outcome: SweepOutcome, fits: list, fit_error: str | None = None) -> str:
    """Write ``report.html`` into the results folder (local or remote); returns where."""
    from analysis.report import ReportData, build_report, load_results

    store = ResultsStore(outcome.storage)
    if "://" not in outcome.storage:
        data = load_results(outcome.storage)
    else:  # remote storage: the tables, spec and runs through the store (no sample images)
        data = ReportData(name=Path(store.root).name, trials=outcome.trials, evals=outcome.evals,
                          spec_text=store.read_bytes("spec.yaml").decode(errors="replace"), runs=_load_runs(store))
    store.write_bytes("report.html", build_report(data, fits, fit_error).encode())
    return f"{outcome.storage.rstrip('/')}/report.html"


def summary_table(trials: pd.DataFrame) -> str:
    """Final loss (in the family's loss unit) by N (rows) and D (columns), then failures."""
    done = trials[trials["status"] == "completed"]
    if "role" in done:  # trunks and LR-search runs are not points of the N x D grid
        from analysis.points import NOT_POINTS

        done = done[~done["role"].isin(NOT_POINTS)]
    lines = []
    if len(done):
        table = done.pivot_table(index="n_params", columns="tokens", values="final_loss", aggfunc="first")
        table.index = [f"N={n:.3g}" for n in table.index]
        table.columns = [f"D={d:.3g}" for d in table.columns]
        loss_unit = done["loss_unit"].iloc[0] if "loss_unit" in done else "nats/token"
        data_unit = done["data_unit"].iloc[0] if "data_unit" in done else "tokens"
        lines.append(f"final held-out loss ({loss_unit}) by model size N and {data_unit} D:")
        lines.append(table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
    bad = trials[trials["status"] != "completed"]
    for row in bad.itertuples():
        why = row.error or ("continue with --resume" if row.status in ("interrupted", "pending", "running")
                            else "(no error recorded)")
        lines.append(f"{row.status}: {row.trial_id}: {why}")
    return "\n".join(lines)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

