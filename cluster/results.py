"""The results store: a sweep's tidy tables, written atomically to local or remote storage.

Layout of a sweep folder (``results/<sweep>/`` or ``--storage``)::

    spec.yaml        the spec as submitted
    plan.json        the planned TrialConfigs
    trials.parquet   one row per trial (columns: README, "Results tables")
    evals.parquet    one row per (trial, evaluation point, metric)
    tune/            Ray Tune's experiment folder (restored by --resume)
    train/           Ray Train runs of multi-worker trials

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
