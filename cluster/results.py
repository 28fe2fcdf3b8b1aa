"""A sweep's results folder: its tables, plan and wsd branch checkpoints, in a ResultsStore.

Layout of a sweep folder (``results/<sweep>/`` or ``--storage``)::

    spec.yaml        the spec as submitted
    plan.json        the planned TrialConfigs
    trials.parquet   one row per trial         (columns: analysis.records.TRIALS)
    evals.parquet    one row per (trial, evaluation point, metric)   (analysis.records.EVALS)
    run.json         one entry per run of the sweep command
    tune/            Ray Tune's experiment folder (restored by --resume); a sweep with an LR
                     search has one for it too: tune-lr/
    train/           Ray Train runs of multi-worker trials
    checkpoints/     wsd trunks' checkpoints at branch points, each deleted when its branch completes

Every write is atomic (``analysis.store``) and the driver is the only writer of the tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile

import pandas as pd
import pyarrow.fs as pafs

from analysis.records import EVALS, PLAN_FILE, SPEC_FILE, TRIALS, Status
from analysis.store import ResultsStore
from experiments.data import markov_entropy_rate
from experiments.planner import TrialConfig
from experiments.spec import Source

def planned_row(cfg: TrialConfig) -> dict:
    """The trials.parquet row of a trial before it has run (status ``pending``). Shape fields
    go under their own names (``shape_<field>``): they can never overwrite a sweep column."""
    family = cfg.model_family
    entropy = markov_entropy_rate(cfg.data.synthetic) if cfg.data.source == Source.SYNTHETIC else math.nan
    row = {
        TRIALS.trial_id: cfg.trial_id, TRIALS.sweep: cfg.sweep, TRIALS.status: Status.PENDING.value,
        TRIALS.error: "", TRIALS.caveats: "", TRIALS.family: cfg.family, TRIALS.data_unit: cfg.data_unit.value,
        TRIALS.loss_unit: family.loss_unit, TRIALS.n_params: cfg.n_params, TRIALS.total_params: cfg.total_params,
        TRIALS.data_units: cfg.data_units, TRIALS.data_units_planned: cfg.data_units_planned,
        TRIALS.steps: cfg.steps, TRIALS.flops_per_unit: cfg.flops_per_unit, TRIALS.flops: cfg.flops,
        TRIALS.compute_budget: math.nan if cfg.compute_budget is None else cfg.compute_budget,
        TRIALS.flops_measured: math.nan, TRIALS.flops_paid: cfg.flops_paid,
        TRIALS.final_loss: math.nan, TRIALS.final_train_loss: math.nan, TRIALS.bytes_per_token: math.nan,
        TRIALS.final_bpb: math.nan, TRIALS.entropy_rate: entropy,
        TRIALS.restarts: 0, TRIALS.data_units_lost: 0.0, TRIALS.wall_s: math.nan, TRIALS.startup_s: math.nan, TRIALS.process_trials: 0,
        TRIALS.data_units_per_s: math.nan,
        TRIALS.workers: cfg.workers, TRIALS.cpus_per_worker: cfg.cpus_per_worker,
        TRIALS.gpus_per_worker: cfg.gpus_per_worker, TRIALS.zero_stage: cfg.zero_stage,
        TRIALS.precision: cfg.precision, TRIALS.node_id: "", TRIALS.seed: cfg.seed, TRIALS.lr: cfg.training.lr,
        TRIALS.lr_chosen_by: cfg.lr_chosen_by.value, TRIALS.schedule: cfg.training.schedule.value,
        TRIALS.role: cfg.role.value, TRIALS.parent: cfg.parent, TRIALS.branch_step: cfg.start_step,
        TRIALS.batch_size: cfg.training.batch_size, TRIALS.seq_len: cfg.training.seq_len,
        TRIALS.data_source: cfg.data.source.value, TRIALS.started_at: pd.NaT, TRIALS.finished_at: pd.NaT,
        TRIALS.config: cfg.to_json(),
    }
    for name, value in dataclasses.asdict(cfg.shape).items():
        row[TRIALS.shape(name)] = value
    TRIALS.check_row(row)
    return row


def trials_frame(rows: dict[str, dict]) -> pd.DataFrame:
    return TRIALS.frame(rows.values())


def evals_frame(rows: list[dict]) -> pd.DataFrame:
    df = EVALS.frame(rows)
    # A trial resumed from a checkpoint re-reports the points after it: keep the newest.
    return df.drop_duplicates(subset=[EVALS.trial_id, EVALS.step, EVALS.metric], keep="last")


def save_plan(store: ResultsStore, trials: list[TrialConfig], spec_text: str) -> None:
    store.write_bytes(SPEC_FILE, spec_text.encode())
    store.write_bytes(PLAN_FILE, ("[\n" + ",\n".join(t.to_json() for t in trials) + "\n]").encode())


def load_plan_ids(store: ResultsStore) -> list[str]:
    return [t["trial_id"] for t in json.loads(store.read_bytes(PLAN_FILE))]


class BranchCheckpoints:
    """A wsd trunk's checkpoints at its branch points, in the results store under
    ``checkpoints/<trunk id>/step-<n>/``, where the branches (other trials, possibly on other
    nodes) find them. Every rank writes its own DeepSpeed files (ZeRO shards) to a local
    folder and uploads them; rank 0 then writes ``COMPLETE``, which a branch requires, so a
    trunk killed mid-upload leaves nothing a branch would load."""

    MARKER = "COMPLETE"

    def __init__(self, uri: str) -> None:
        self.store = ResultsStore(uri)

    def folder(self, trunk_id: str, step: int) -> str:
        return f"checkpoints/{trunk_id}/step-{step}"

    def available(self, trunk_id: str, step: int) -> bool:
        return self.store.exists(f"{self.folder(trunk_id, step)}/{self.MARKER}")

    def save(self, engine, trunk_id: str, step: int, tag: str, client_state: dict) -> None:
        import torch.distributed as dist

        target = self.folder(trunk_id, step)
        world = dist.get_world_size() if dist.is_initialized() else 1
        with tempfile.TemporaryDirectory(prefix="scalinglab-branch-") as tmp:
            engine.save_checkpoint(tmp, tag=tag, client_state=client_state)
            self.store.makedirs(target)
            pafs.copy_files(tmp, self.store.path(target), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.store.fs)
        if world > 1:
            dist.barrier()  # every rank's files are up before the marker
        if not dist.is_initialized() or dist.get_rank() == 0:
            self.store.write_bytes(f"{target}/{self.MARKER}", b"")

    def load(self, engine, trunk_id: str, step: int, tag: str) -> dict:
        """Load the trunk's state at ``step`` into ``engine``; returns its client state."""
        if not self.available(trunk_id, step):
            raise RuntimeError(
                f"trunk {trunk_id} has no checkpoint at step {step} in {self.store.uri}/checkpoints: the trunk "
                "failed or stopped before it (see its row in trials.parquet), or the branch already completed")
        with tempfile.TemporaryDirectory(prefix="scalinglab-branch-") as tmp:
            pafs.copy_files(self.store.path(self.folder(trunk_id, step)), tmp,
                            source_filesystem=self.store.fs, destination_filesystem=pafs.LocalFileSystem())
            _, client = engine.load_checkpoint(tmp, tag=tag)
        return client or {}

    def release(self, trunk_id: str, step: int) -> None:
        """Delete a checkpoint no branch needs any more (and the trunk's folder once empty)."""
        self.store.delete_dir(self.folder(trunk_id, step))
        if not self.store.listdir(f"checkpoints/{trunk_id}"):
            self.store.delete_dir(f"checkpoints/{trunk_id}")
