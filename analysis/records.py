"""The results contract: every column of ``trials.parquet`` and ``evals.parquet``, every
status and role, declared once.

Everything that writes or reads the tables uses these names: the planner and the training
loop (``experiments``), the sweep driver, its monitor and ``--resume`` (``cluster``), the fits,
the emergence detector and the report (``analysis``). ``docs/results.md`` is generated from
this module (``python -m analysis.records``) and a test fails when the two drift apart.

It imports only the standard library (pandas lazily), so every layer may import it:
``models`` declares its metrics and data units with it, and ``analysis`` stays usable in a
notebook with nothing but the tables.

Naming rules:

- **Shape fields** (the family's own, e.g. ``d_model`` or ``noise_schedule``) are columns
  ``shape_<field>``. No contract column starts with ``shape_``, so a family can never overwrite
  a sweep column (a diffusion model's noise ``schedule`` once replaced the LR ``schedule``).
- **D** is counted in the family's data unit (``data_unit``: tokens or samples), so the
  columns that hold it say ``data_units``; "tokens" always means tokens.
- **Metrics** in ``evals.parquet``: the loop's own (:data:`LOOP_METRICS`), the family's
  (``ModelFamily.metrics``), ``train_<name>`` for a family's other training losses, and
  capability probes as ``TASK/NAME`` with their standard errors as ``TASK/NAME_stderr``.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import pandas as pd


class Closed(str, Enum):
    """A closed set of strings. Each member equals (and prints as) its value, so it can be
    compared with a column of a table read back from disk; ``meaning`` is its documentation."""

    def __new__(cls, value: str, meaning: str = ""):
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Status(Closed):
    """A trial's status in ``trials.parquet``."""

    PENDING = "pending", "planned, not started yet"
    RUNNING = "running", "started and not finished"
    COMPLETED = "completed", "trained to its budget; the only status the fits use"
    FAILED = "failed", "raised an exception (in `error`); `--resume --retry-failed` runs it again"
    DIVERGED = "diverged", "its loss went NaN or inf, or its family's health check saw training destabilise"
    COLLAPSED = "collapsed", "trained to its budget, but its family's health check flagged it (a GAN's mode collapse)"
    INTERRUPTED = "interrupted", "the sweep stopped while it ran; `--resume` continues it from its last checkpoint"
    SKIPPED = "skipped", "a candidate of an adaptive design that it did not choose before it stopped"

    @property
    def finished(self) -> bool:
        """Whether the trial is over: ``--resume`` keeps its row and does not train it again
        (``failed`` ones only with ``--retry-failed``)."""
        return self in (Status.COMPLETED, Status.FAILED, Status.DIVERGED, Status.COLLAPSED, Status.SKIPPED)

    def kept_on_resume(self, retry_failed: bool) -> bool:
        """Whether ``--resume`` keeps the trial's row as it is and does not train it again."""
        return self.finished and not (retry_failed and self is Status.FAILED)

    @property
    def ok(self) -> bool:
        """Nothing to report: completed, or a candidate an adaptive design left out on purpose."""
        return self in (Status.COMPLETED, Status.SKIPPED)

    @property
    def bad(self) -> bool:
        """A finished trial that did not complete (the sweep exits 1 and lists it)."""
        return self.finished and not self.ok


class Role(Closed):
    """What a trial is for (``role``)."""

    POINT = "point", "a fit point: one (N, D) trained from scratch"
    BRANCH = "branch", "a fit point of a wsd ladder: a cooldown started from its trunk's checkpoint"
    TRUNK = "trunk", "a wsd size's constant-LR run that its branches start from; not a fit point"
    LR_SEARCH = "lr_search", "one LR candidate's run of a size's LR search; not a fit point"

    @property
    def fit_point(self) -> bool:
        return self in (Role.POINT, Role.BRANCH)


class Verdict(Closed):
    """The emergence detector's call on one metric against one scale axis (``verdict``)."""

    EMERGENT = "emergent", ("a plateau near chance over at least two scales, then a step up that no smooth "
                            "trend explains, held by at least two points after it")
    LATE_JUMP = "late_jump", "as emergent, but only the last scale is above the plateau: one point of evidence"
    SMOOTH = "smooth", "a significant trend that is not emergent"
    FLAT = "flat", "no significant change over the range"
    NON_MONOTONE = "non_monotone", "a significant rise that falls back to below half of it"
    NOT_ENOUGH_DATA = "not_enough_data", "fewer than 4 distinct scales"

    @property
    def jumps(self) -> bool:
        """A step up was found (emergent, or on one point of evidence): the report draws its
        onset and the caveats check the metric behind it."""
        return self in (Verdict.EMERGENT, Verdict.LATE_JUMP)


class DataUnit(Closed):
    """What D counts (``data_unit``)."""

    TOKENS = "tokens", "language models: tokens trained on"
    SAMPLES = "samples", "image families: images seen"

    @property
    def singular(self) -> str:
        return self.value[:-1]


class Schedule(Closed):
    """The learning-rate schedule (``training.schedule``, the ``schedule`` column)."""

    COSINE = "cosine", "warmup, then a cosine decay over each trial's own budget"
    WSD = "wsd", "warmup-stable-decay: one constant-LR trunk per size, a cooldown branch per budget"


class LRSource(Closed):
    """Where a trial's peak LR came from (``lr_chosen_by``)."""

    SPEC = "spec", "the spec's `training.lr`"
    SEARCH = "search", "the size's best LR-search candidate"
    CANDIDATE = "candidate", "this trial is an LR-search run of that LR"
    PENDING = "search pending", "the size's LR search has not finished (the row shows the middle candidate)"
    FALLBACK = "search failed: middle candidate", "no candidate of the size completed: the middle one"


class StopReason(Closed):
    """Why an adaptive design stopped choosing runs (``analysis.design``)."""

    WIDTH = "stop_width", "the target's 95% interval is as narrow as `stop_width` asks"
    MAX_FLOPS = "max_flops", "no candidate left fits in what is left of `max_flops`"
    MAX_TRIALS = "max_trials", "`max_trials` runs chosen"
    NO_CANDIDATES = "no candidates", "every candidate has been chosen"
    UNFITTABLE = "unfittable", ("the law cannot be fitted (fewer than 6 completed runs, or fewer than 3 distinct N "
                                "or D) and no candidate is left to add (failed runs, or max_trials)")


class NCount(Closed):
    """Which parameters N counts (``scalinglab fit --n-count``). Pearce & Song 2024 trace much
    of the gap between Kaplan's and Chinchilla's allocations to this choice at small scale."""

    SCALING = "scaling", ("the family's scaling count, `n_params`: non-embedding for the transformer (Kaplan et al. "
                          "2020), without the patch embedding for the DiT, the generator for the GAN, every "
                          "parameter for the VAE")
    TOTAL = "total", "every parameter, `total_params` (Hoffmann et al. 2022 count embeddings in)"


# --- the other files of a results folder (the tables are TRIALS.file and EVALS.file) ------

SPEC_FILE = "spec.yaml"  # the spec as submitted
PLAN_FILE = "plan.json"  # the planned trials, each a TrialConfig's JSON
RUNS_FILE = "run.json"  # one entry per `sweep` run
ADAPTIVE_FILE = "adaptive.json"  # an adaptive design's state: target, latest estimate, why it stopped
SAMPLES_DIR = "samples"  # samples/<trial_id>/<caption>.png: a completed image trial's grids


# --- columns --------------------------------------------------------------------------------

SHAPE_PREFIX = "shape_"


class Named(str):
    """A name (a plain ``str``, so it indexes DataFrames) with a unit and a meaning."""

    dtype: str
    unit: str
    meaning: str

    def __new__(cls, name: str, dtype: str, unit: str, meaning: str) -> "Named":
        obj = str.__new__(cls, name)
        obj.dtype, obj.unit, obj.meaning = dtype, unit, meaning
        return obj

    @property
    def name(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __reduce__(self):  # pickled (Ray) and deep-copied (dataclasses.asdict) as what it is
        return Named._rebuild, (type(self), str.__str__(self), self.dtype, self.unit, self.meaning)

    @staticmethod
    def _rebuild(cls, name, dtype, unit, meaning):
        return Named.__new__(cls, name, dtype, unit, meaning)


class Column(Named):
    """A table column: name, pandas dtype, unit and meaning."""


class Metric(Named):
    """A metric of ``evals.parquet`` (its ``metric`` value): name, unit and meaning."""

    def __new__(cls, name: str, unit: str, meaning: str) -> "Metric":
        return super().__new__(cls, name, "float64", unit, meaning)


class Table:
    """A table's file and columns; ``TRIALS.status`` is the column named ``status``."""

    def __init__(self, file: str, doc: str, columns: Iterable[Column], *, shape_columns: bool = False) -> None:
        self.file, self.doc, self.shape_columns = file, doc, shape_columns
        self.columns: tuple[Column, ...] = tuple(columns)
        self._by_name = {c.name: c for c in self.columns}
        if len(self._by_name) != len(self.columns):
            raise ValueError(f"{file}: a column is declared twice")
        if any(c.startswith(SHAPE_PREFIX) for c in self.columns):
            raise ValueError(f"{file}: no contract column may start with {SHAPE_PREFIX!r} (shape columns' prefix)")

    def __getattr__(self, name: str) -> Column:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('file')} has no column {name!r}") from None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @staticmethod
    def shape(field: str) -> str:
        """The column of a shape field (see the module docstring)."""
        return SHAPE_PREFIX + field

    def check_row(self, row: dict) -> None:
        """Raise (a bug, not a user error) unless ``row`` has every column and nothing else
        but shape columns."""
        keys = set(row)
        missing = [c for c in self.names if c not in keys]
        extra = sorted(k for k in keys - set(self.names) if not (self.shape_columns and k.startswith(SHAPE_PREFIX)))
        if missing or extra:
            raise KeyError(f"{self.file} row: missing {missing}, not in the contract {extra}")

    def frame(self, rows: Iterable[dict]) -> "pd.DataFrame":
        """The rows as a DataFrame in the contract's column order and dtypes (shape columns
        last, in the order first seen)."""
        import pandas as pd

        df = pd.DataFrame(list(rows))
        extra = [c for c in df.columns if c not in self._by_name]
        df = df.reindex(columns=self.names + extra)
        for col in self.columns:
            if col.dtype.startswith("datetime"):
                df[col] = pd.to_datetime(df[col], utc=True)
            elif col.dtype == "str":
                df[col] = df[col].fillna("").astype(str)
            elif col.dtype == "float64":
                df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
            elif col.dtype == "object":
                continue
            else:
                df[col] = df[col].astype(col.dtype)
        return df

    def markdown(self) -> str:
        lines = [f"`{self.file}`: {self.doc}", "", "| column | dtype | unit | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{c.name}` | {c.dtype} | {c.unit or '–'} | {c.meaning} |" for c in self.columns]
        if self.shape_columns:
            lines.append(f"| `{SHAPE_PREFIX}<field>` | int or str | – | one column per field of the family's shape "
                         "(docs/families.md); absent for other families |")
        return "\n".join(lines)


def _c(name: str, dtype: str, unit: str, meaning: str) -> Column:
    return Column(name, dtype, unit, meaning)


TRIALS = Table("trials.parquet", "one row per trial, written by the sweep driver only.", [
    _c("trial_id", "str", "", "e.g. `tfm-n56.6k-d3M-s0`: family tag, N, D and seed (a wsd trunk has `trunk` for D)"),
    _c("sweep", "str", "", "the spec's `name`"),
    _c("status", "str", "", "one of " + ", ".join(f"`{s}` ({s.meaning})" for s in Status)),
    _c("error", "str", "", "one line naming the exception or the divergence; empty otherwise"),
    _c("caveats", "str", "", "why the family's health check flagged the trial; empty otherwise"),
    _c("family", "str", "", "model family (`family` of the spec)"),
    _c("data_unit", "str", "", "what D counts: " + ", ".join(f"`{u}`" for u in DataUnit)),
    _c("loss_unit", "str", "", "unit of `final_loss` and of the `loss` metric, e.g. `nats/token`"),
    _c("n_params", "int64", "parameters", "the scaling N (the family's count: non-embedding for language models)"),
    _c("total_params", "int64", "parameters", "every parameter"),
    _c("data_units", "int64", "data units", "D: data trained on (exact: steps × data units per step)"),
    _c("data_units_planned", "float64", "data units", "the budget asked for"),
    _c("steps", "int64", "steps", "optimizer steps"),
    _c("flops_per_unit", "float64", "FLOPs", "training FLOPs per data unit (analytic for the transformer, "
       "FlopCounterMode for the others)"),
    _c("flops", "float64", "FLOPs", "C = `flops_per_unit` × `data_units`: the compute the point represents"),
    _c("compute_budget", "float64", "FLOPs", "the isoflop budget the trial belongs to (NaN for grids)"),
    _c("flops_measured", "float64", "FLOPs", "FlopCounterMode FLOPs per unit × `data_units`"),
    _c("flops_paid", "float64", "FLOPs", "what this trial alone trained: `flops` for a point, the cooldown for "
       "a branch, the whole run for a trunk; Σ `flops_paid` is what the sweep cost"),
    _c("final_loss", "float64", "`loss_unit`", "held-out `loss` at the end"),
    _c("final_train_loss", "float64", "`loss_unit`", "mean training loss over the last evaluation interval"),
    _c("bytes_per_token", "float64", "bytes/token", "UTF-8 bytes of the validation text per token (1 for the byte "
       "tokenizer); NaN for images and synthetic tokens"),
    _c("final_bpb", "float64", "bits/byte", "`final_loss` in bits per byte (÷ ln 2 ÷ `bytes_per_token`): comparable "
       "across tokenizers; NaN where `bytes_per_token` is"),
    _c("entropy_rate", "float64", "nats/token", "the source's entropy rate when known (synthetic data), else NaN"),
    _c("restarts", "int64", "", "times the trial was restarted from its last checkpoint after its worker process "
       "or node died (`max_failures`)"),
    _c("data_units_lost", "float64", "data units", "trained and thrown away by those restarts (trained again; "
       "in `flops_paid`): estimated, for each, as the throughput × the time from the last checkpoint to the death"),
    _c("wall_s", "float64", "s", "trial wall time, summed over restarts"),
    _c("startup_s", "float64", "s", "from trial start to its first step (data, engine)"),
    _c("process_trials", "int64", "", "trials its worker process ran before it: 0 for a fresh process; a reused one "
       "(Tune's reuse_actors) has paid process start, imports and data loading already"),
    _c("data_units_per_s", "float64", "data units/s", "training throughput across all workers, evaluation excluded"),
    _c("workers", "int64", "", "Ray Train workers (1: in the Tune trial itself)"),
    _c("cpus_per_worker", "float64", "CPUs", "Ray resources per worker"),
    _c("gpus_per_worker", "float64", "GPUs", "Ray resources per worker"),
    _c("zero_stage", "int64", "", "DeepSpeed ZeRO stage"),
    _c("precision", "str", "", "what ran: `fp32`, `bf16` or `fp16` (`auto` resolved on the worker)"),
    _c("node_id", "str", "", "the Ray node of rank 0"),
    _c("seed", "int64", "", "`training.seed`"),
    _c("lr", "float64", "", "the peak learning rate the trial ran"),
    _c("lr_chosen_by", "str", "", "one of " + ", ".join(f"`{s}` ({s.meaning})" for s in LRSource)),
    _c("schedule", "str", "", "LR schedule: " + ", ".join(f"`{s}`" for s in Schedule)),
    _c("role", "str", "", "one of " + ", ".join(f"`{r}` ({r.meaning})" for r in Role)
       + "; fits and summaries use `point` and `branch` rows only"),
    _c("parent", "str", "", "a branch's trunk (empty otherwise)"),
    _c("branch_step", "int64", "steps", "the trunk step a branch starts from (0 otherwise)"),
    _c("batch_size", "int64", "sequences or images", "per optimizer step, across all workers"),
    _c("seq_len", "int64", "tokens", "per sequence (language models)"),
    _c("data_source", "str", "", "`data.source` of the spec"),
    _c("started_at", "datetime64[ns, UTC]", "UTC", "when the trial last started"),
    _c("finished_at", "datetime64[ns, UTC]", "UTC", "when it finished"),
    _c("config", "str", "JSON", "the trial's full TrialConfig (`experiments.planner.TrialConfig.from_json`)"),
], shape_columns=True)

EVALS = Table("evals.parquet", "one row per (trial, evaluation point, metric).", [
    _c("trial_id", "str", "", "the trial (`trials.parquet`)"),
    _c("step", "int64", "steps", "optimizer steps trained"),
    _c("data_units", "int64", "data units", "D trained so far, all workers"),
    _c("flops", "float64", "FLOPs", "C trained so far (`flops_per_unit` × `data_units`)"),
    _c("metric", "str", "", "the metric's name (below)"),
    _c("value", "float64", "the metric's", "its value"),
])

DECISIONS = Table("decisions.parquet", "one row per run an adaptive design chose after its seed design "
                  "(`analysis.design`), written by the sweep driver.", [
    _c("round", "int64", "", "1, 2, …: the decision that chose it (a decision chooses up to `batch` runs)"),
    _c("chosen", "str", "", "the trial chosen (`trials.parquet`)"),
    _c("n_params", "float64", "parameters", "its N"),
    _c("data_units", "float64", "data units", "its D"),
    _c("cost", "float64", "FLOPs", "what running it costs (`flops_paid`)"),
    _c("criterion", "float64", "1/FLOPs", "its score: expected reduction of the target's variance per FLOP"),
    _c("candidates_scored", "int64", "", "candidates that were open to the choice"),
    _c("points", "int64", "", "completed runs the fit behind the choice used"),
    _c("spent_flops", "float64", "FLOPs", "FLOPs of every run chosen so far, this one included"),
    _c("value", "float64", "the target's", "the target's estimate before the choice"),
    _c("low", "float64", "the target's", "its 95% interval before the choice: low"),
    _c("high", "float64", "the target's", "… and high"),
    _c("width", "float64", "", "(high − low) / |value| before the choice"),
    _c("width_expected", "float64", "", "the width expected once the runs chosen with it have finished"),
])

# The training loop's own metrics, at every evaluation point of every family; a family's
# held-out metrics (ModelFamily.metrics, ``loss`` first) come beside them.
LOSS = Metric("loss", "`loss_unit`", "held-out primary metric of the family, comparable across sizes (lower is better)")
TRAIN_LOSS = Metric("train_loss", "`loss_unit`", "mean training loss since the previous evaluation point")
LR = Metric("lr", "", "learning rate at that step")
THROUGHPUT = Metric("data_units_per_s", "data units/s", "training throughput so far, all workers")
LOOP_METRICS = (TRAIN_LOSS, LR, THROUGHPUT)
TRAIN_PREFIX = "train_"  # train_<name>: a family's other training losses (a GAN's train_d_loss)
STDERR_SUFFIX = "_stderr"  # TASK/NAME_stderr: the standard error of TASK/NAME over the items
class ProbeMetric(Closed):
    """What the capability probes record for each task (``TASK/NAME``)."""

    EXACT_MATCH = "exact_match", "greedy decoding would produce the answer exactly (discontinuous)"
    LOGPROB = "logprob", "mean log-probability per answer token, nats (continuous)"
    TOKEN_ACCURACY = "token_accuracy", "fraction of answer tokens that are the argmax given the correct prefix"


CHANCE_SUFFIX = "_chance"  # TASK/NAME_chance: what a uniform guess over the task's answer alphabet scores
ANSWER_TOKENS = "answer_tokens"  # TASK/answer_tokens: mean tokens per answer (the mirage check's exponent)


def capability_metric(task: str, name: str) -> str:
    """The evals metric of capability ``name`` of probe task ``task``: ``TASK/NAME``."""
    return f"{task}/{name}"


def is_capability(metric: str) -> bool:
    """A capability metric or its standard error (``TASK/NAME``, ``TASK/NAME_stderr``)."""
    return "/" in str(metric)


def is_stderr(metric: str) -> bool:
    return str(metric).endswith(STDERR_SUFFIX)


def is_probe_metric(metric: str) -> bool:
    """A capability metric itself: ``TASK/NAME``, not its standard error, chance level or the
    task's answer length."""
    m = str(metric)
    return (is_capability(m) and not m.endswith((STDERR_SUFFIX, CHANCE_SUFFIX))
            and capability_name(m) != ANSWER_TOKENS)


def capability_task(metric: str) -> str:
    """``TASK`` of ``TASK/NAME`` (empty for other metrics)."""
    return str(metric).split("/", 1)[0] if is_capability(metric) else ""


def capability_name(metric: str) -> str:
    """``NAME`` of ``TASK/NAME`` (the metric itself for others)."""
    return str(metric).rsplit("/", 1)[-1]


def stderr_of(metric: str) -> str:
    return metric + STDERR_SUFFIX


def chance_of(metric: str) -> str:
    return metric + CHANCE_SUFFIX


def answer_tokens_of(metric: str) -> str:
    """``TASK/answer_tokens`` of ``TASK/NAME``."""
    return capability_metric(capability_task(metric), ANSWER_TOKENS)


def markdown() -> str:
    """The generated part of docs/results.md."""
    loop = "\n".join(f"| `{m}` | {m.unit or '–'} | {m.meaning} |" for m in (LOSS, *LOOP_METRICS))
    return "\n\n".join([
        TRIALS.markdown(),
        EVALS.markdown(),
        DECISIONS.markdown(),
        "Metrics of every trial (a family's own are listed in docs/families.md):\n\n"
        "| metric | unit | meaning |\n| --- | --- | --- |\n" + loop + "\n"
        f"| `{TRAIN_PREFIX}<name>` | `loss_unit` | a family's other training losses since the previous point |\n"
        f"| `TASK/NAME`, `TASK/NAME{STDERR_SUFFIX}` | – | capability probes and their standard errors |\n"
        f"| `TASK/NAME{CHANCE_SUFFIX}` | – | the metric's chance level: a uniform guess over the task's answer alphabet |\n"
        f"| `TASK/{ANSWER_TOKENS}` | tokens | mean answer length of the task's held-out items |",
    ])


if __name__ == "__main__":
    print(markdown())
