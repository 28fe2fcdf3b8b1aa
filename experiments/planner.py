"""Budget planner: a SweepSpec becomes a list of TrialConfigs (one per Ray Tune trial).

Accounting per trial, in the family's data unit (tokens for language models, samples for
image families): data units per optimizer step = batch_size · seq_len (tokens) or batch_size
(samples); steps = floor(planned units / units per step); D = steps · units per step (the
data actually trained on, never more than planned); C = D · training FLOPs per unit of the
model (analytic for the transformer, measured by FlopCounterMode for the others).
Everything that could make a trial impossible is checked here, before anything launches,
and reported against the spec's file, line and field: shapes, budgets, resources, and the
data (files readable, columns present, image sizes).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.records import DataUnit, LRSource, Role, Schedule
from experiments.data import check_token_data, vocab_size
from experiments.image_data import check_image_data
from experiments.spec import DataSpec, LRSearchSpec, ProbeSpec, SizeSpec, SweepSpec, TrainingSpec
from experiments.yamlio import FieldError, Located, from_plain, to_plain
from models.family import DataShape, ModelFamily, family_module, get_family


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """Everything one trial needs, typed; ``to_json``/``from_json`` carry it to Ray workers and
    into ``plan.json`` and the trials table's ``config`` column."""

    trial_id: str
    sweep: str
    family: str
    family_module: str  # the module that registers the family (a worker imports it)
    shape: Any  # the family's shape_type
    n_params: int  # the scaling N
    total_params: int
    data_unit: DataUnit  # what D counts
    data_units: int  # D actually trained: steps * data units per step
    data_units_planned: float
    steps: int
    flops_per_unit: float
    flops: float  # C = flops_per_unit * data_units (the compute the point represents)
    compute_budget: float | None  # the isoflop budget this trial belongs to, if any
    eval_steps: tuple[int, ...]  # optimizer steps after which to evaluate (last == steps)
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    zero_stage: int
    precision: str
    validation_units: int  # held-out data units scored at each evaluation point
    training: TrainingSpec  # its lr is this trial's peak LR (never a search)
    data: DataSpec
    sample_grid: int = 0  # images per sample grid saved at the end (families with artifacts)
    probes: ProbeSpec = ProbeSpec()  # capability probes (language models)
    # A wsd size is a "trunk" (constant LR, a checkpoint at every branch point) and one
    # "branch" per budget (a cooldown from the trunk's checkpoint at start_step).
    role: Role = Role.POINT
    size_index: int = 0  # which spec.model.sizes entry (LR choices are per size)
    parent: str = ""  # branch: its trunk's trial id
    start_step: int = 0  # branch: the trunk step it continues from
    save_steps: tuple[int, ...] = ()  # trunk: steps at which branches start
    warmup_steps: int = -1  # linear warmup from 0; -1: warmup_fraction of this trial's steps
    decay_start: int = 0  # wsd: the step the cooldown starts (a trunk: its end, never)
    flops_paid: float = 0.0  # FLOPs this trial alone trains (a branch: its cooldown only)
    lr_chosen_by: LRSource = LRSource.SPEC
    checkpoint_every_s: float = 0.0  # also checkpoint after this much training since the last one (0: off)

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def units_per_step(self) -> int:
        """Data units per optimizer step (all workers)."""
        return units_per_step(self.training, self.data_unit)

    @property
    def model_family(self) -> ModelFamily:
        return get_family(self.family, self.family_module)

    def to_json(self) -> str:
        return json.dumps(to_plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "TrialConfig":
        d = json.loads(text) if isinstance(text, str) else text
        family = get_family(d["family"], d["family_module"])
        return from_plain(cls, d, "TrialConfig JSON", shape=from_plain(family.shape_type, d["shape"]))


def units_per_step(training: TrainingSpec, unit: DataUnit) -> int:
    return training.batch_size * (training.seq_len if unit == DataUnit.TOKENS else 1)


def plan(spec: SweepSpec, located: Located) -> list[TrialConfig]:
    """All trials of the sweep, largest compute first (so the longest trials do not run alone
    at the end: shorter ones fill in around them). Raises UserError on impossible ones."""
    family = spec.model_family
    _check_global(spec, family, located)
    data = _data_shape(spec, family)
    shapes = [_shape(spec, family, i, size, data, located) for i, size in enumerate(spec.model.sizes)]
    trials: list[TrialConfig] = []
    search = spec.training.lr if isinstance(spec.training.lr, LRSearchSpec) else None
    seeded_specs = [dataclasses.replace(spec, training=dataclasses.replace(spec.training, seed=spec.training.seed + k))
                    for k in range(spec.training.seeds)]  # the spec of each seed's runs
    for i, (size, shape) in enumerate(zip(spec.model.sizes, shapes)):
        fpu = family.flops_per_unit(shape)
        if spec.budgets.kind != "isoflop":  # a grid's budgets, or an adaptive design's candidates
            budgets = [(j, units, None) for j, units in enumerate(spec.budgets.data(family.data_unit))]
        else:
            budgets = [(j, c / fpu, c) for j, c in enumerate(spec.budgets.flops)]
        for seeded in seeded_specs:  # a wsd ladder per seed: each its own trunk
            points = [_trial(seeded, located, family, size, shape, i, j, planned, c) for j, planned, c in budgets]
            if spec.training.schedule == Schedule.WSD:
                points = wsd_ladder(points, seeded, located)
            trials += points
        if search is not None:
            trials += _lr_search_trials(spec, located, family, size, shape, i, search, min(b[1] for b in budgets))
    _dedupe_ids(trials, family)
    return sorted(trials, key=lambda t: (-t.flops, t.trial_id))


def wsd_ladder(points: list[TrialConfig], spec: SweepSpec, located: Located) -> list[TrialConfig]:
    """One size's budgets as a WSD ladder: a trunk at constant LR to the latest branch point,
    and per budget a branch that decays over its last ``cooldown_fraction`` of steps,
    starting from the trunk's checkpoint there (module docstring of ``experiments.schedules``)."""
    tr = spec.training
    warmup = round(tr.warmup_fraction * min(p.steps for p in points))
    starts = {}
    for p in points:
        cooldown = max(1, round(tr.cooldown_fraction * p.steps))
        starts[p.trial_id] = p.steps - cooldown
        if starts[p.trial_id] < max(warmup, 1):
            raise located.error(("budgets",), f"{p.trial_id}: a wsd branch needs its branch point (step "
                                f"{starts[p.trial_id]} of {p.steps}) after the warmup ({warmup} steps); "
                                "raise the smallest budget or lower training.cooldown_fraction / warmup_fraction")
    first = points[0]
    trunk_steps = max(starts.values())
    save = tuple(sorted(set(starts.values())))
    per_step = first.units_per_step
    trunk_id = first.trial_id.replace(f"-d{_si(first.data_units)}-", "-trunk-", 1)
    trunk_flops = first.flops_per_unit * trunk_steps * per_step
    trunk = dataclasses.replace(
        first, trial_id=trunk_id, role=Role.TRUNK, data_units=trunk_steps * per_step,
        data_units_planned=float(trunk_steps * per_step), steps=trunk_steps, flops=trunk_flops, compute_budget=None,
        eval_steps=tuple(sorted(set(eval_steps(trunk_steps, spec.evaluation.points)) | set(save))),
        save_steps=save, warmup_steps=warmup, decay_start=trunk_steps, flops_paid=trunk_flops,
    )
    branches = []
    for p in points:
        b = starts[p.trial_id]
        branches.append(dataclasses.replace(
            # the budget's own log-spaced points that fall in its cooldown (its end, at least): the
            # run before the branch point is the trunk's, which evaluated it
            p, role=Role.BRANCH, parent=trunk_id, start_step=b, warmup_steps=warmup, decay_start=b,
            eval_steps=tuple(s for s in p.eval_steps if s > b),
            flops_paid=p.flops_per_unit * (p.steps - b) * per_step,
        ))
    return [trunk] + branches


def _lr_search_trials(spec, located, family, size, shape, i, search: LRSearchSpec, smallest: float) -> list[TrialConfig]:
    """A size's LR candidates, each one run at the search budget with the sweep's schedule."""
    base = _trial(spec, located, family, size, shape, i, 0, search.budget or smallest, None)
    if spec.training.schedule == Schedule.WSD:
        cooldown = max(1, round(spec.training.cooldown_fraction * base.steps))
        base = dataclasses.replace(base, decay_start=base.steps - cooldown)
    return [dataclasses.replace(base, trial_id=f"{base.trial_id}-lr{lr:g}", role=Role.LR_SEARCH, compute_budget=None,
                                training=dataclasses.replace(base.training, lr=lr), lr_chosen_by=LRSource.CANDIDATE)
            for lr in search.search]


def with_chosen_lrs(trials: list[TrialConfig], final_losses: dict[str, float]) -> tuple[list[TrialConfig], dict]:
    """The trials with each size's LR set to its best LR-search candidate (lowest final loss
    among ``final_losses``, by trial id). Returns (trials, {size_index: (lr, {lr: loss})})."""
    chosen: dict[int, tuple[float | None, dict]] = {}
    for t in trials:
        if t.role == Role.LR_SEARCH:
            _, losses = chosen.setdefault(t.size_index, (None, {}))
            losses[t.training.lr] = final_losses.get(t.trial_id, float("nan"))
    for i, (_, losses) in list(chosen.items()):
        finite = {lr: v for lr, v in losses.items() if np.isfinite(v)}
        if finite:
            chosen[i] = (min(finite, key=finite.get), losses)
    out = []
    for t in trials:
        if t.role != Role.LR_SEARCH and t.size_index in chosen:
            lr = chosen[t.size_index][0]
            t = (dataclasses.replace(t, training=dataclasses.replace(t.training, lr=lr), lr_chosen_by=LRSource.SEARCH)
                 if lr is not None else dataclasses.replace(t, lr_chosen_by=LRSource.FALLBACK))
        out.append(t)
    return out, chosen


def _check_global(spec: SweepSpec, family: ModelFamily, located: Located) -> None:
    unit = family.data_unit
    if spec.budgets.kind != "isoflop" and not spec.budgets.data(unit):
        other = next(u for u in DataUnit if u != unit)
        raise located.error(("budgets", other.value),
                            f"family {spec.family!r} counts data in {unit}: give budgets.{unit}")
    if spec.budgets.kind == "adaptive" and (spec.training.seeds > 1 or isinstance(spec.training.lr, LRSearchSpec)):
        raise located.error(("budgets", "kind"), "an adaptive design chooses single runs of one LR: it needs "
                            "training.seeds 1 and one training.lr (run the LR search as its own sweep first)")
    if spec.probes.tasks and not family.supports_probes:
        raise located.error(("probes", "tasks"), f"capability probes are text tasks for language models; "
                            f"family {spec.family!r} does not score text")
    if spec.probes.tasks and spec.data.tokenizer != "byte":
        raise located.error(("probes", "tasks"), "capability probes are written in bytes: they need tokenizer: byte")
    if unit not in spec.data.source.units:
        usable = [s.value for s in type(spec.data.source) if unit in s.units]
        raise located.error(("data", "source"), f"family {spec.family!r} trains on {unit}; expected one of {usable}")
    if spec.training.schedule == Schedule.WSD and not family.supports_wsd:
        raise located.error(("training", "schedule"), f"family {spec.family!r} trains several networks; "
                            "wsd ladders are built for one: use cosine")
    if spec.deepspeed.precision == "fp16" and spec.resources.gpus_per_worker == 0:
        raise located.error(("deepspeed", "precision"),
                            "fp16 needs a GPU (resources.gpus_per_worker > 0); on CPU use fp32 or bf16")
    try:  # the data: files readable, columns present, image sizes (cheap checks, no full read)
        (check_token_data if unit == DataUnit.TOKENS else check_image_data)(spec.data)
    except FieldError as exc:
        raise located.error(("data",) + exc.path, exc.message) from None


def _data_shape(spec: SweepSpec, family: ModelFamily) -> DataShape:
    """What the data fix about every shape: context and vocabulary, or image size and channels."""
    if family.data_unit == DataUnit.TOKENS:
        return DataShape(context=spec.training.seq_len, vocab=vocab_size(spec.data))
    return DataShape(image_size=spec.data.image_size, channels=spec.data.channels)


def _shape(spec: SweepSpec, family: ModelFamily, i: int, size: SizeSpec, data: DataShape, located: Located) -> Any:
    try:
        if size.params is not None:
            return family.shape_from_params(int(size.params), spec.model.options, data)
        return family.shape(size.shape, spec.model.options, data)
    except (ValueError, TypeError) as exc:
        raise located.error(("model", "sizes", i), str(exc)) from None


def _trial(spec, located, family: ModelFamily, size: SizeSpec, shape, i, j, planned, c) -> TrialConfig:
    tr, res = spec.training, spec.resources
    workers = size.workers or res.workers
    unit = family.data_unit
    per_step = units_per_step(tr, unit)
    if tr.batch_size % workers:
        raise located.error(("model", "sizes", i),
                            f"training.batch_size ({tr.batch_size}) must divide evenly over {workers} workers")
    steps = int(planned // per_step)
    if steps < 1:
        what = f"{planned:.4g} {unit}" if c is None else (
            f"compute {c:.4g} FLOPs buys only {planned:.4g} {unit} for size {i} "
            f"({family.flops_per_unit(shape):.4g} FLOPs per {unit.singular}): the model is too large for it")
        step_units = f"batch_size {tr.batch_size} x seq_len {tr.seq_len}" if unit == DataUnit.TOKENS else "batch_size"
        raise located.error(("budgets", unit.value if c is None else "flops", j),
                            f"{what}; one optimizer step needs {per_step} {unit} ({step_units})")
    validation = spec.evaluation.validation(unit)
    if unit == DataUnit.TOKENS and validation // tr.seq_len < workers:
        raise located.error(("evaluation", "validation_tokens"),
                            f"needs at least one sequence of {tr.seq_len} tokens per worker ({workers} workers)")
    if unit == DataUnit.SAMPLES and validation < workers:
        raise located.error(("evaluation", "validation_samples"), f"needs at least one image per worker ({workers} workers)")
    params = family.num_params(shape)
    units = steps * per_step
    fpu = family.flops_per_unit(shape)
    searching = isinstance(tr.lr, LRSearchSpec)
    if searching:  # a placeholder until the size's search has run
        tr = dataclasses.replace(tr, lr=sorted(tr.lr.search)[len(tr.lr.search) // 2])
    return TrialConfig(
        trial_id=f"{family.tag}-n{_si(params.scaling)}-d{_si(units)}-s{tr.seed}",
        sweep=spec.name, family=spec.family, family_module=family_module(spec.family), shape=shape,
        n_params=params.scaling, total_params=params.total, data_unit=unit,
        data_units=units, data_units_planned=float(planned), steps=steps,
        flops_per_unit=fpu, flops=fpu * units, compute_budget=c,
        eval_steps=eval_steps(steps, spec.evaluation.points),
        workers=workers, cpus_per_worker=res.cpus_per_worker, gpus_per_worker=res.gpus_per_worker,
        zero_stage=_zero_stage(spec, size, params.total),
        precision="fp32" if spec.deepspeed.precision == "auto" and res.gpus_per_worker == 0 else spec.deepspeed.precision,
        validation_units=validation, training=tr, data=spec.data, sample_grid=spec.evaluation.sample_grid,
        probes=spec.probes, size_index=i, flops_paid=fpu * units,
        lr_chosen_by=LRSource.PENDING if searching else LRSource.SPEC, checkpoint_every_s=spec.checkpoint_every_s,
    )


def _zero_stage(spec: SweepSpec, size: SizeSpec, total_params: int) -> int:
    """The size's own stage, else ZeRO-3 above the spec's parameter threshold, else the
    sweep-wide stage."""
    if size.zero_stage is not None:
        return size.zero_stage
    threshold = spec.deepspeed.zero3_above_params
    if threshold is not None and total_params > threshold:
        return 3
    return spec.deepspeed.zero_stage


def eval_steps(steps: int, points: int) -> tuple[int, ...]:
    """``points`` log-spaced steps ending at ``steps`` and starting at ~steps/64 (fewer when
    the trial is too short to hold that many distinct steps)."""
    start = max(1.0, steps / 64)
    grid = np.geomspace(start, steps, points) if points > 1 else np.array([steps])
    return tuple(sorted({int(round(s)) for s in grid} | {steps}))


def _si(x: float) -> str:
    x = float(f"{x:.3g}")  # round first: 999,936 is "1M", not "1e+03k"
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def shape_tag(family: ModelFamily, shape: Any) -> str:
    """The size fields of a shape, compactly: ``d_model64-n_layers2-n_heads4``."""
    return "-".join(f"{f.name}{getattr(shape, f.name)}" for f in dataclasses.fields(family.size_type))


def _dedupe_ids(trials: list[TrialConfig], family: ModelFamily) -> None:
    """Two sizes with the same N would share an id: those get their size fields appended."""
    seen: dict[str, int] = {}
    for k, t in enumerate(trials):
        if t.trial_id in seen:
            trials[k] = dataclasses.replace(t, trial_id=f"{t.trial_id}-{shape_tag(family, t.shape)}")
        seen[trials[k].trial_id] = k
    if len(seen) != len(trials):
        raise AssertionError("two trials share an id even with their shapes: identical sizes?")


def describe(trials: list[TrialConfig]) -> str:
    """The plan as a table: what --dry-run prints."""
    family = trials[0].model_family if trials else None
    head = f"{'trial':<30} {'shape':<32} {'N':>9} {'D':>9} {'C (FLOPs)':>10} {'steps':>6}  resources"
    lines = [head, "-" * len(head)]
    for t in trials:
        res = f"{t.workers}x({t.cpus_per_worker:g} CPU, {t.gpus_per_worker:g} GPU) ZeRO-{t.zero_stage} {t.precision}"
        lines.append(f"{t.trial_id:<30} {shape_tag(family, t.shape):<32} {t.n_params:>9.3g} {t.data_units:>9.3g} "
                     f"{t.flops:>10.3g} {t.steps:>6}  {res}")
    points = sum(t.flops for t in trials if t.role.fit_point)
    paid = sum(t.flops_paid for t in trials)
    unit = trials[0].data_unit if trials else DataUnit.TOKENS
    lines.append(f"{len(trials)} trials, total compute {paid:.3g} FLOPs (D in {unit})" + (
        f"; the fit points represent {points:.3g} FLOPs (wsd branches share their trunk's)"
        if any(t.role != Role.POINT for t in trials) else ""))
    return "\n".join(lines)
