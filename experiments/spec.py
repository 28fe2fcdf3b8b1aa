"""The sweep spec: what a user writes in YAML, as frozen dataclasses validated once, at load.

The ``model`` block belongs to the spec's family: each entry of ``model.sizes`` is parsed by
the family's ``size_type`` (plus ``params``, ``workers`` and ``zero_stage``), and the other
keys of ``model`` by its ``options_type`` (``models.family``). Adding a family never edits
this file. Every field's documentation is its ``doc_field`` text, from which docs/spec.md is
generated (``python -m experiments.spec_docs``; a test checks the two agree).

Checks that need the model family or the data (impossible budgets, shapes, unreadable data
files) happen in ``experiments.planner``, which also runs before anything is launched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from analysis.adaptive_spec import AdaptiveSpec
from analysis.records import Closed, DataUnit, Schedule
from experiments.yamlio import Located, build, load_yaml
from models.family import SIZE_KEYS, ModelFamily, doc_field, family_names, get_family


@dataclass(frozen=True, kw_only=True)
class SizeSpec:
    """One entry of ``model.sizes``: a target scaling N (``params``, turned into a shape by the
    family's rule) or the family's own size fields (``shape``); ``workers`` and ``zero_stage``
    override the sweep-wide values for this size."""

    params: float | None = doc_field(None, "target scaling N; the family's rule picks the shape")
    shape: Any = doc_field(None, "the family's size fields (docs/families.md), when params is not given")
    workers: int | None = doc_field(None, "this size's Ray Train workers (default: resources.workers)")
    zero_stage: Literal[0, 1, 2, 3] | None = doc_field(None, "this size's ZeRO stage (default: deepspeed's)")

    def __post_init__(self) -> None:
        if (self.params is None) == (self.shape is None):
            raise ValueError("give either params or the family's shape fields (e.g. d_model, n_layers, n_heads)")
        if self.params is not None and self.params < 1:
            raise ValueError(f"params must be positive, got {self.params}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """``sizes``, and the family's options (every other key of the ``model`` block)."""

    sizes: tuple[SizeSpec, ...] = doc_field(doc="model sizes, each as SizeSpec")
    options: Any = doc_field(doc="the family's options_type")

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("sizes: at least one model size is needed")


@dataclass(frozen=True, kw_only=True)
class BudgetSpec:
    """``grid``: every size × every data budget, in the family's data unit (a list named after
    it: ``tokens`` or ``samples``). ``isoflop``: every size × every compute budget, with
    D = flops / (training FLOPs per data unit of the size). ``adaptive``: the list is a range
    [low, high]; every size × ``adaptive.candidates`` data budgets in it are candidates, and a
    design chooses which to run (docs/adaptive.md)."""

    kind: Literal["grid", "isoflop", "adaptive"] = doc_field(
        "grid", "grid: sizes x data budgets; isoflop: sizes x compute budgets; adaptive: a design chooses runs")
    tokens: tuple[float, ...] = doc_field((), "grid: D per trial, tokens (language models); adaptive: [low, high]")
    samples: tuple[float, ...] = doc_field((), "grid: D per trial, images (image families); adaptive: [low, high]")
    flops: tuple[float, ...] = doc_field((), "isoflop: C per trial, FLOPs; D = C / (FLOPs per data unit of the size)")
    adaptive: AdaptiveSpec | None = doc_field(None, "adaptive: the target, candidates and stopping rules")

    def __post_init__(self) -> None:
        given = [k for k in (*DataUnit.values(), "flops") if getattr(self, k)]
        wanted = ["flops"] if self.kind == "isoflop" else DataUnit.values()
        if not any(k in given for k in wanted):
            raise ValueError(f"kind {self.kind!r} needs a list of {' or '.join(wanted)}")
        if len(given) > 1:
            raise ValueError(f"give one list of budgets, not {' and '.join(given)}")
        values = getattr(self, given[0])
        if any(v <= 0 for v in values):
            raise ValueError(f"{given[0]} must all be positive")
        if (self.kind == "adaptive") != (self.adaptive is not None):
            raise ValueError("kind 'adaptive' needs an adaptive block (target, stopping rules), and only it takes one")
        if self.kind == "adaptive" and (len(values) != 2 or values[0] >= values[1]):
            raise ValueError(f"kind 'adaptive': {given[0]} is the candidates' range [low, high], low < high")

    def data(self, unit: DataUnit) -> tuple[float, ...]:
        """The data budgets in ``unit`` (empty when they were given in another): a grid's, or the
        adaptive candidates' (``adaptive.candidates`` log-spaced over the range)."""
        values = getattr(self, unit.value)
        if self.kind == "adaptive" and values:
            return tuple(float(v) for v in np.geomspace(values[0], values[1], self.adaptive.candidates))
        return values


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """A seeded first-order Markov chain over ``vocab`` tokens; rows of its transition matrix
    are Dirichlet(``concentration``) draws (small concentration: low entropy)."""

    vocab: int = doc_field(32, "tokens of the chain")
    concentration: float = doc_field(0.3, "Dirichlet concentration of the transition rows (small: low entropy)")
    seed: int = doc_field(1234, "seeds the chain and the stream")
    train_tokens: int = doc_field(2_000_000, "length of the generated stream, tokens")
    documents: int = doc_field(64, "the stream is cut into this many documents (the split unit)")

    def __post_init__(self) -> None:
        if not 2 <= self.vocab <= 65536:
            raise ValueError(f"synthetic.vocab must be in [2, 65536], got {self.vocab}")
        if self.concentration <= 0:
            raise ValueError("synthetic.concentration must be positive")
        if self.documents < 4:
            raise ValueError("synthetic.documents must be at least 4 (train/validation split)")


class Source(Closed):
    """A data source (``data.source``) and the data units it gives."""

    def __new__(cls, value: str, units: tuple[DataUnit, ...], meaning: str) -> "Source":
        member = str.__new__(cls, value)
        member._value_, member.meaning, member.units = value, meaning, units
        return member

    STDLIB = "stdlib", (DataUnit.TOKENS,), "the running Python's standard library .py files (no download)"
    SYNTHETIC = "synthetic", (DataUnit.TOKENS,), "a seeded Markov chain whose entropy rate is known (`synthetic`)"
    FILES = "files", (DataUnit.TOKENS,), "local .txt (a document each), .jsonl or .parquet (a row each) in `paths`"
    DIGITS = "digits", (DataUnit.SAMPLES,), "scikit-learn's bundled 8x8 handwritten digits (1,797 images)"
    PROCEDURAL = "procedural", (DataUnit.SAMPLES,), "seeded shapes and textures at any image_size, unlimited"
    IMAGES = "images", (DataUnit.SAMPLES,), "local image folders or files, or .parquet/.arrow with an image column"
    HUB = "hub", (DataUnit.TOKENS, DataUnit.SAMPLES), "a Hugging Face dataset, streamed (needs network)"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where data come from (``Source``): token data are read by ``experiments.data``, images
    by ``experiments.image_data``."""

    source: Source = doc_field(Source.STDLIB, "; ".join(f"{s.value}: {s.meaning}" for s in Source))
    paths: tuple[str, ...] = doc_field((), "files or images: paths, absolute or relative to the spec file")
    name: str | None = doc_field(None, "hub: the dataset's name")
    config: str | None = doc_field(None, "hub: the dataset's config")
    split: str = doc_field("train", "hub: the split to stream")
    text_field: str = doc_field("text", "jsonl, parquet, hub: the column holding the text")
    tokenizer: str = doc_field("byte", "byte (vocabulary 256) or hf:<name or local dir> (needs transformers)")
    validation_fraction: float = doc_field(0.05, "documents (or images) held out, by a seeded hash of their index")
    max_bytes: int = doc_field(16_000_000, "cap on text read from stdlib or files, bytes")
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec, metadata={"doc": "source synthetic: the chain"})
    image_field: str = doc_field("image", "parquet, arrow, hub: the image column")
    image_size: int = doc_field(8, "images: pixels per side; every image must have it unless resize")
    channels: Literal[1, 3] = doc_field(1, "images: 1 (greyscale) or 3 (RGB)")
    resize: bool = doc_field(False, "images: rescale images of another size (bilinear) instead of refusing them")
    procedural_seed: int = doc_field(0, "procedural: the generator's seed")

    def __post_init__(self) -> None:
        if self.source in (Source.FILES, Source.IMAGES) and not self.paths:
            raise ValueError(f"source {self.source.value!r} needs paths: a list of " + (
                ".txt, .jsonl or .parquet files" if self.source == Source.FILES else
                "image folders, image files, .parquet or .arrow files"))
        if self.image_size < 2:
            raise ValueError(f"image_size must be at least 2, got {self.image_size}")
        if self.source == Source.HUB and not self.name:
            raise ValueError("source 'hub' needs name: a Hugging Face dataset name")
        if not 0 < self.validation_fraction < 0.5:
            raise ValueError("validation_fraction must be in (0, 0.5)")
        if self.tokenizer != "byte" and not self.tokenizer.startswith("hf:"):
            raise ValueError(f"tokenizer must be 'byte' or 'hf:<name>', got {self.tokenizer!r}")


@dataclass(frozen=True, kw_only=True)
class LRSearchSpec:
    """``lr: {search: [...]}``: before the sweep, every size trains once per candidate peak LR
    on ``budget`` data units (default: the smallest data budget of the grid) with the sweep's
    schedule; each size's runs then use the LR with the lowest held-out loss."""

    search: tuple[float, ...] = doc_field(doc="candidate peak LRs (at least 2, distinct)")
    budget: float | None = doc_field(None, "data units per candidate run (default: the smallest budget)")

    def __post_init__(self) -> None:
        if len(self.search) < 2 or any(v <= 0 for v in self.search) or len(set(self.search)) != len(self.search):
            raise ValueError("search: at least 2 distinct positive learning rates")
        if self.budget is not None and self.budget <= 0:
            raise ValueError("budget must be positive")


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    optimizer: Literal["adamw"] = doc_field("adamw", "torch.optim.AdamW (no JIT-built fused Adam)")
    lr: float | LRSearchSpec = doc_field(3e-3, "peak learning rate, or {search: [...], budget: ...} per size")
    min_lr_ratio: float = doc_field(0.1, "the schedule ends at lr * min_lr_ratio")
    warmup_fraction: float = doc_field(0.05, "linear warmup: cosine, of each trial's steps; wsd, of the size's "
                                       "smallest budget")
    schedule: Schedule = doc_field(Schedule.COSINE, "; ".join(f"{s.value}: {s.meaning}" for s in Schedule))
    cooldown_fraction: float = doc_field(0.2, "wsd: the share of each budget spent decaying")
    cooldown_shape: Literal["linear", "1-sqrt"] = doc_field("1-sqrt", "wsd: how the LR falls to lr * min_lr_ratio")
    batch_size: int = doc_field(16, "sequences or images per optimizer step, across all workers")
    seq_len: int = doc_field(128, "tokens per sequence (the model's context); unused for images")
    grad_clip: float = doc_field(1.0, "max global gradient norm; 0 turns clipping off")
    weight_decay: float = doc_field(0.1, "on matrices and embeddings, not on biases and norms")
    beta1: float = doc_field(0.9, "AdamW beta1")
    beta2: float = doc_field(0.95, "AdamW beta2")
    seed: int = doc_field(0, "initial weights and data order")
    seeds: int = doc_field(1, "runs per (N, D) point, with seeds seed, seed+1, …: the fits bootstrap a point's "
                           "runs together and report their run-to-run spread (LR-search runs use `seed` only)")

    def __post_init__(self) -> None:
        if not 1 <= self.seeds <= 64:
            raise ValueError(f"seeds must be in [1, 64], got {self.seeds}")
        if isinstance(self.lr, (int, float)) and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.cooldown_fraction < 1:
            raise ValueError(f"cooldown_fraction must be in (0, 1), got {self.cooldown_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("warmup_fraction must be in [0, 1)")
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError("batch_size must be >= 1 and seq_len >= 2")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be non-negative")


@dataclass(frozen=True, kw_only=True)
class DeepSpeedSpec:
    zero_stage: Literal[0, 1, 2, 3] = doc_field(0, "ZeRO stage 0-3")
    zero3_above_params: float | None = doc_field(
        None, "sizes with more parameters than this (all of them) train under ZeRO-3, unless the size sets its own")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = doc_field(
        "fp32", "auto: bf16 on GPUs that support it, else fp32 (resolved on the worker); fp16 needs a GPU")


@dataclass(frozen=True, kw_only=True)
class ResourceSpec:
    """Per trial: ``workers`` Ray Train workers, each with these CPUs and GPUs."""

    workers: int = doc_field(1, "Ray Train workers per trial (> 1: a TorchTrainer)")
    cpus_per_worker: float = doc_field(1.0, "CPUs each worker holds")
    gpus_per_worker: float = doc_field(0.0, "GPUs each worker holds")
    max_concurrent: int = doc_field(0, "trials at once; 0: as the cluster's resources allow")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.max_concurrent < 0:
            raise ValueError("cpus_per_worker must be > 0; gpus_per_worker, max_concurrent >= 0")


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    validation_tokens: int = doc_field(32_768, "held-out tokens scored at every evaluation point (language models)")
    validation_samples: int = doc_field(512, "held-out images scored at every evaluation point")
    points: int = doc_field(6, "log-spaced evaluation points per trial, the last at the end")
    sample_grid: int = doc_field(16, "images per sample grid saved when an image trial completes (0: none)")

    def __post_init__(self) -> None:
        if self.validation_tokens < 1 or self.validation_samples < 1 or self.points < 1:
            raise ValueError("validation_tokens, validation_samples and points must be at least 1")
        if self.sample_grid < 0:
            raise ValueError("sample_grid must be 0 (none) or a number of images")

    def validation(self, unit: DataUnit) -> int:
        """Held-out data units scored at every evaluation point."""
        return self.validation_tokens if unit == DataUnit.TOKENS else self.validation_samples


ProbeTask = Literal["addition", "modular", "recall", "walk"]  # experiments.probes makes each


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    """Capability probes of language models (``experiments.probes``): ``tasks`` mixed into
    the training stream at ``mix_rate`` (a fraction of training sequences) and scored on
    ``eval_items`` held-out items per task at every evaluation point."""

    tasks: tuple[ProbeTask, ...] = doc_field((), "any of " + ", ".join(get_args(ProbeTask)))
    mix_rate: float = doc_field(0.0, "share of training sequences replaced by probe items")
    eval_items: int = doc_field(256, "held-out items per task, scored at every evaluation point")
    digits: int = doc_field(2, "addition: operands of up to this many digits (1..9)")
    modulus: int = doc_field(97, "modular: (a + b) mod this")
    pairs: int = doc_field(4, "recall: key-value pairs in context (1..26)")
    steps: int = doc_field(16, "walk: symbols in the answer (1..48)")
    seed: int = doc_field(0, "items and walk's permutation")

    def __post_init__(self) -> None:
        if not 0 <= self.mix_rate < 1:
            raise ValueError(f"mix_rate must be in [0, 1), got {self.mix_rate}")
        if self.tasks and self.mix_rate == 0:
            raise ValueError("tasks are given but mix_rate is 0: the model would never see them")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks: each task once")
        if (self.eval_items < 1 or not 1 <= self.digits <= 9 or self.modulus < 2 or not 1 <= self.pairs <= 26
                or not 1 <= self.steps <= 48):
            raise ValueError("eval_items >= 1, digits in 1..9, modulus >= 2, pairs in 1..26, steps in 1..48")


@dataclass(frozen=True, kw_only=True)
class MLflowSpec:
    """``tracking.mlflow``: one MLflow run per trial, nested under a run for the sweep."""

    uri: str | None = doc_field(None, "a folder (an sqlite store mlflow.db in it), file://…, sqlite:///… or a "
                                "server's http(s)://… (default: <storage>/mlflow)")
    experiment: str | None = doc_field(None, "MLflow experiment (default: the sweep's name)")


@dataclass(frozen=True, kw_only=True)
class TensorBoardSpec:
    """``tracking.tensorboard``: event files, one folder per trial."""

    dir: str | None = doc_field(None, "folder of the event files (default: <storage>/tensorboard)")


@dataclass(frozen=True, kw_only=True)
class WandbSpec:
    """``tracking.wandb``: one W&B run per trial, grouped by sweep. Unset fields fall back to
    W&B's own environment variables (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE)."""

    project: str | None = doc_field(None, "W&B project (default: WANDB_PROJECT, else the sweep's name)")
    entity: str | None = doc_field(None, "W&B entity (default: WANDB_ENTITY, else your default entity)")
    mode: Literal["online", "offline"] | None = doc_field(None, "offline: run files on disk only, for "
                                                          "`wandb sync` later (default: WANDB_MODE, else online)")
    dir: str | None = doc_field(None, "W&B's local run files (default: <storage>/wandb)")


@dataclass(frozen=True, kw_only=True)
class TrackingSpec:
    """Experiment trackers the sweep logs to (docs/tracking.md); each is off unless given, as
    a mapping (``mlflow: {}`` for its defaults) or with ``--tracking`` on the command line."""

    mlflow: MLflowSpec | None = doc_field(None, "MLflow: uri, experiment")
    tensorboard: TensorBoardSpec | None = doc_field(None, "TensorBoard: dir")
    wandb: WandbSpec | None = doc_field(None, "Weights & Biases: project, entity, mode, dir")


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    name: str = doc_field(doc="letters, digits, - _ . (names the results folder)")
    family: str = doc_field("transformer", "the model family (docs/families.md)")
    model: ModelSpec = doc_field(doc="sizes and the family's options")
    budgets: BudgetSpec = doc_field(doc="data or compute budgets")
    data: DataSpec = field(default_factory=DataSpec, metadata={"doc": "where data come from"})
    training: TrainingSpec = field(default_factory=TrainingSpec, metadata={"doc": "optimizer, schedule, batches"})
    deepspeed: DeepSpeedSpec = field(default_factory=DeepSpeedSpec, metadata={"doc": "ZeRO stage and precision"})
    resources: ResourceSpec = field(default_factory=ResourceSpec, metadata={"doc": "Ray resources per trial"})
    evaluation: EvalSpec = field(default_factory=EvalSpec, metadata={"doc": "held-out data and evaluation points"})
    probes: ProbeSpec = field(default_factory=ProbeSpec, metadata={"doc": "capability probes (language models)"})
    storage: str | None = doc_field(None, "default results/<name>; a local path or a URI Ray and pyarrow accept")
    max_failures: int = doc_field(2, "retries of a trial whose worker process or node died, from its last "
                                  "checkpoint (Ray Tune's fault tolerance); a trial whose own code raised is not retried")
    checkpoint_every_s: float = doc_field(300.0, "a running trial also checkpoints when this many seconds of training "
                                          "have passed since its last checkpoint (0: at evaluation points only)")
    tracking: TrackingSpec = field(default_factory=TrackingSpec, metadata={"doc": "experiment trackers (MLflow, "
                                                                              "TensorBoard, W&B)"})

    def __post_init__(self) -> None:
        if self.max_failures < -1 or self.checkpoint_every_s < 0:
            raise ValueError("max_failures must be >= 0 (-1: retry forever) and checkpoint_every_s >= 0")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(
                f"name must be non-empty letters, digits, '-', '_' or '.', got {self.name!r}"
            )

    @property
    def model_family(self) -> ModelFamily:
        return get_family(self.family)


def load_spec(path: str | Path) -> tuple[SweepSpec, Located]:
    """Parse and validate a sweep spec file. Raises UserError naming the file, line and field."""
    data, located = load_yaml(path)
    if not isinstance(data, dict):
        raise located.error((), f"expected a mapping of SweepSpec fields, got {type(data).__name__}")
    family = _family(data, located)
    if "model" not in data:
        raise located.error(("model",), "is required")
    model = build_model(family, data["model"], located)
    spec = build(SweepSpec, {k: v for k, v in data.items() if k != "model"}, (), located, built={"model": model})
    return _resolve_paths(spec, located), located


def _family(data: dict, located: Located) -> ModelFamily:
    default = next(f.default for f in dataclasses.fields(SweepSpec) if f.name == "family")
    name = data.get("family", default)
    try:
        return get_family(name) if isinstance(name, str) else get_family("")
    except KeyError:
        raise located.error(("family",), f"unknown model family {name!r}; expected one of {family_names()}") from None


def build_model(family: ModelFamily, data: Any, located: Located) -> ModelSpec:
    """The ``model`` block, parsed by the family's own dataclasses."""
    path = ("model",)
    if not isinstance(data, dict):
        raise located.error(path, f"expected a mapping with sizes and the family's options, got {type(data).__name__}")
    if "sizes" not in data:
        raise located.error(path + ("sizes",), "is required")
    options = build(family.options_type, {k: v for k, v in data.items() if k != "sizes"}, path, located,
                    extra_keys=("sizes",))
    sizes = data["sizes"] if isinstance(data["sizes"], list) else [data["sizes"]]
    built = tuple(_size(family, entry, path + ("sizes", i), located) for i, entry in enumerate(sizes))
    try:
        return ModelSpec(sizes=built, options=options)
    except ValueError as exc:
        raise located.error(path + ("sizes",), str(exc)) from None


def _size(family: ModelFamily, data: Any, path: tuple, located: Located) -> SizeSpec:
    if not isinstance(data, dict):
        raise located.error(path, f"expected a mapping: params, or the shape fields of family {family.name!r}")
    common = {k: v for k, v in data.items() if k in SIZE_KEYS}
    fields = {k: v for k, v in data.items() if k not in SIZE_KEYS}
    if "params" in common and fields:
        raise located.error(path, f"give either params or the shape fields, not both (got params and {sorted(fields)})")
    shape = None if "params" in common else build(family.size_type, fields, path, located, extra_keys=SIZE_KEYS)
    return build(SizeSpec, common, path, located, built={"shape": shape})


def _resolve_paths(spec: SweepSpec, located: Located) -> SweepSpec:
    """Data paths made absolute: relative ones are relative to the spec file where they exist
    there, else to the working directory; a path that exists in neither is an error."""
    if spec.data.source not in (Source.FILES, Source.IMAGES):
        return spec
    base = Path(located.source).resolve().parent
    paths = []
    for i, p in enumerate(spec.data.paths):
        found = [c for c in (base / p, Path(p)) if c.exists()]
        if not found:
            raise located.error(("data", "paths", i), f"file not found: {p}")
        paths.append(str(found[0].resolve()))
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, paths=tuple(paths)))
