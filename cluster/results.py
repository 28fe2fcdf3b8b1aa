"""The results store: a sweep's tidy tables, written atomically to local or remote storage.

Layout of a sweep folder (``results/<sweep>/`` or ``--storage``)::

    spec.yaml        the spec as submitted
    plan.json        the planned TrialConfigs
    trials.parquet   one row per trial (columns: README, "Results tables")
    evals.parquet    one row per (trial, evaluation point, metric)
    tune/            Ray Tune's experiment folder (restored by --resume); a sweep with an LR
                     search or a wsd schedule has one per phase: tune-lr/, tune/, tune-branches/
    train/           Ray Train runs of multi-worker trials
    checkpoints/     wsd trunks' checkpoints at branch points, each deleted when its branch completes

Tables are rewritten whole, to a temporary name and then renamed, so a reader in another
process sees either the old or the new table, never half of one (on object stores, where
rename is a copy, the final object still appears whole). The driver is the only writer.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from experiments.errors import UserError
from experiments.planner import TrialConfig
from models import get_family

EVAL_COLUMNS = ["trial_id", "step", "tokens", "flops", "metric", "value"]


def storage_uri(path: str) -> str:
    """A URI that pyarrow and Ray accept: local paths made absolute, URIs kept."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


class ResultsStore:
    def __init__(self, uri: str) -> None:
        self.uri = storage_uri(uri)
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise UserError(f"storage: cannot open {uri!r}: {exc}") from None

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def makedirs(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        folder, _, base = name.rpartition("/")
        tmp = self.path(f"{folder + '/' if folder else ''}.{base}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, self.path(name))

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        self.write_bytes(name, buffer.getvalue())

    def read_table(self, name: str) -> pd.DataFrame:
        return pq.read_table(io.BytesIO(self.read_bytes(name))).to_pandas()


def planned_row(cfg: TrialConfig, entropy_rate: float | None) -> dict:
    """The trials.parquet row of a trial before it has run (status ``pending``)."""
    family = get_family(cfg.family)
    return {
        "trial_id": cfg.trial_id,
        "sweep": cfg.sweep,
        "status": "pending",
        "error": "",
        "caveats": "",  # a completed trial's flags (a GAN's mode collapse)
        "family": cfg.family,
        "data_unit": family.data_unit,
        "loss_unit": family.loss_unit,
        **{k: v if isinstance(v, str) else int(v) for k, v in cfg.shape.items()},
        "n_params": cfg.n_params,
        "total_params": cfg.total_params,
        "tokens": cfg.tokens,
        "tokens_planned": cfg.tokens_planned,
        "steps": cfg.steps,
        "flops_per_token": cfg.flops_per_token,
        "flops": cfg.flops,
        "compute_budget": cfg.compute_budget,
        "flops_measured": float("nan"),
        "final_loss": float("nan"),
        "final_train_loss": float("nan"),
        "entropy_rate": entropy_rate,
        "wall_s": float("nan"),
        "startup_s": float("nan"),
        "tokens_per_s": float("nan"),
        "workers": cfg.workers,
        "cpus_per_worker": cfg.cpus_per_worker,
        "gpus_per_worker": cfg.gpus_per_worker,
        "zero_stage": cfg.zero_stage,
        "precision": cfg.precision,
        "node_id": "",
        "seed": cfg.seed,
        "lr": cfg.training.lr,
        "lr_chosen_by": cfg.lr_chosen_by,
        "schedule": cfg.training.schedule,
        "role": cfg.role,
        "parent": cfg.parent,
        "branch_step": cfg.start_step,
        "flops_paid": cfg.flops_paid,
        "batch_size": cfg.training.batch_size,
        "seq_len": cfg.training.seq_len,
        "data_source": cfg.data.source,
        "started_at": pd.NaT,
        "finished_at": pd.NaT,
        "config": cfg.to_json(),
    }


def save_plan(store: ResultsStore, trials: list[TrialConfig], spec_text: str) -> None:
    store.write_bytes("spec.yaml", spec_text.encode())
    store.write_bytes("plan.json", json.dumps([asdict(t) for t in trials], indent=1).encode())


def load_plan_ids(store: ResultsStore) -> list[str]:
    return [t["trial_id"] for t in json.loads(store.read_bytes("plan.json"))]


def trials_frame(rows: dict[str, dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows.values()))
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


def evals_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    # A trial resumed from a checkpoint re-reports the points after it: keep the newest.
    df = df.drop_duplicates(subset=["trial_id", "step", "metric"], keep="last")
    return df.astype({"step": "int64", "tokens": "int64", "flops": "float64", "value": "float64"})


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
        import tempfile

        import torch.distributed as dist

        target = self.store.path(self.folder(trunk_id, step))
        world = dist.get_world_size() if dist.is_initialized() else 1
        with tempfile.TemporaryDirectory(prefix="scalinglab-branch-") as tmp:
            engine.save_checkpoint(tmp, tag=tag, client_state=client_state)
            self.store.fs.create_dir(target, recursive=True)
            pafs.copy_files(tmp, target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.store.fs)
        if world > 1:
            dist.barrier()  # every rank's files are up before the marker
        if not dist.is_initialized() or dist.get_rank() == 0:
            self.store.write_bytes(f"{self.folder(trunk_id, step)}/{self.MARKER}", b"")

    def load(self, engine, trunk_id: str, step: int, tag: str) -> dict:
        """Load the trunk's state at ``step`` into ``engine``; returns its client state."""
        import tempfile

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
        self.store.fs.delete_dir(self.store.path(self.folder(trunk_id, step)))
        trunk = self.store.path(f"checkpoints/{trunk_id}")
        if not self.store.fs.get_file_info(pafs.FileSelector(trunk, allow_not_found=True)):
            self.store.fs.delete_dir(trunk)
