"""What a training worker tells the sweep driver: one :class:`TrialReport` per evaluation point.

The report is the only thing that travels from the loop (``experiments.train_loop``) to the
driver (``cluster.monitor``), through Ray Tune's result dict under one key. It knows which
table columns and evaluation rows it fills (``analysis.records``), so neither side spells
out a metrics dict of its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from analysis.records import EVALS, LOSS, THROUGHPUT, TRAIN_LOSS, TRIALS, Status


@dataclass(frozen=True, kw_only=True)
class TrialReport:
    step: int  # optimizer steps trained
    data_units: int  # trained so far, all workers (tokens or samples)
    flops: float  # C trained so far
    # Held-out metrics of this evaluation point (the family's, probes'), train_loss,
    # train_<name>, lr, data_units_per_s: each one row of evals.parquet. Empty for a report
    # that comes without an evaluation: a checkpoint by time between evaluation points
    # (``checkpoint_every_s``), or a final report of a loss that went NaN between points.
    metrics: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0  # trial wall time so far, summed over restarts
    startup_s: float = 0.0  # from the start of this run of the trial to its first step
    process_trials: int = 0  # trials this worker process ran before this one
    flops_measured_per_unit: float = math.nan
    node_id: str = ""
    precision: str = ""  # what ran (auto resolved)
    bytes_per_token: float = math.nan  # of the validation text (language models on real text)
    done: bool = False
    status: Status = Status.RUNNING  # when done: completed, diverged or collapsed
    error: str = ""
    caveats: str = ""

    KEY = "scalinglab"  # the key of Tune's result dict that holds the report

    def to_tune(self) -> dict:
        return {self.KEY: {**dataclasses.asdict(self), "status": self.status.value}}

    @classmethod
    def from_tune(cls, result: dict) -> "TrialReport | None":
        """The report inside a Tune result (None for a result that holds none)."""
        raw = result.get(cls.KEY)
        if raw is None:
            return None
        return cls(**{**raw, "status": Status(raw["status"])})

    @classmethod
    def completed_loss(cls, flat: dict | None) -> float:
        """The final held-out loss in a result as Tune hands it to a searcher (flattened, keys
        joined by '/'), when the trial completed; else NaN."""
        flat = flat or {}
        done = flat.get(f"{cls.KEY}/done") and flat.get(f"{cls.KEY}/status") == Status.COMPLETED.value
        return float(flat.get(f"{cls.KEY}/metrics/{LOSS}", math.nan)) if done else math.nan

    @property
    def loss(self) -> float:
        return self.metrics.get(LOSS, math.nan)

    @property
    def throughput(self) -> float:
        """Data units per second of training, all workers."""
        return self.metrics.get(THROUGHPUT, math.nan)

    def eval_rows(self, trial_id: str) -> list[dict]:
        """This point's rows of ``evals.parquet``."""
        return [{EVALS.trial_id: trial_id, EVALS.step: self.step, EVALS.data_units: self.data_units,
                 EVALS.flops: self.flops, EVALS.metric: name, EVALS.value: float(value)}
                for name, value in self.metrics.items()]

    def final_columns(self) -> dict:
        """The columns of ``trials.parquet`` that a finished trial's last report sets."""
        return {
            TRIALS.status: self.status.value, TRIALS.error: self.error, TRIALS.caveats: self.caveats,
            TRIALS.data_units: self.data_units, TRIALS.flops: self.flops,
            TRIALS.flops_measured: self.flops_measured_per_unit * self.data_units,
            TRIALS.final_loss: self.loss, TRIALS.final_train_loss: self.metrics.get(TRAIN_LOSS, math.nan),
            TRIALS.wall_s: self.elapsed_s, TRIALS.startup_s: self.startup_s, TRIALS.process_trials: self.process_trials,
            TRIALS.data_units_per_s: self.throughput, TRIALS.node_id: self.node_id,
            TRIALS.precision: self.precision, TRIALS.bytes_per_token: self.bytes_per_token,
            TRIALS.final_bpb: self.loss / math.log(2) / self.bytes_per_token,
        }
