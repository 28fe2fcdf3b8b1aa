"""Budget planner: a SweepSpec becomes a list of TrialConfigs (one per Ray Tune trial).

Accounting per trial, in the family's data unit (tokens for language models, samples for
image families): units per optimizer step = batch_size · seq_len (tokens) or batch_size
(samples); steps = floor(planned units / units per step); D = steps · units per step (the
data actually trained on, never more than planned); C = D · training FLOPs per unit of the
model (analytic for the transformer, measured by FlopCounterMode for image families).
The fields named ``tokens`` (``tokens``, ``flops_per_token``) hold D and FLOPs per unit in
whichever unit ``data_unit`` names. Everything that could make a trial impossible is checked here, before
anything launches, and reported against the spec's file, line and field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.data import vocab_size
from experiments.spec import DataSpec, LRSearchSpec, ProbeSpec, SizeSpec, SweepSpec, SyntheticSpec, TrainingSpec
from experiments.yamlio import Located
from models import family_names, get_family


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """Everything one trial needs, in plain values; serialised to JSON for Ray and the tables."""

    trial_id: str
    sweep: str
    family: str
    shape: dict[str, Any]  # the family's shape fields (ints, and strings for options)
    n_params: int  # the scaling N
    total_params: int
    tokens: int  # D actually trained, in data units: steps * units per step
    tokens_planned: float
    steps: int
    flops_per_token: float
    flops: float  # C = flops_per_token * tokens (analytic, FLOPs)
    compute_budget: float | None  # the isoflop budget this trial belongs to, if any
    eval_steps: tuple[int, ...]  # optimizer steps after which to evaluate (last == steps)
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    zero_stage: int
    precision: str
    validation_tokens: int
    training: TrainingSpec
    data: DataSpec
    data_unit: str = "tokens"  # what ``tokens`` counts: "tokens" or "samples"
    sample_grid: int = 0  # images per sample grid saved at the end (image families)
    probes: ProbeSpec = ProbeSpec()  # capability probes (language models)
    # Roles: "point" (one trial, one fit point), "lr_search" (a size's LR candidate), and for
    # the wsd schedule "trunk" (a size's constant-LR run, saving a checkpoint at every
    # branch point) and "branch" (a budget's cooldown, started from its parent trunk's
    # checkpoint at step start_step). Trunks and LR-search runs are not fit points.
    role: str = "point"
    size_index: int = 0  # which spec.model.sizes entry (LR choices are per size)
    parent: str = ""  # branch: its trunk's trial id
    start_step: int = 0  # branch: the trunk step it continues from
    save_steps: tuple[int, ...] = ()  # trunk: steps at which branches start
    warmup_steps: int = -1  # linear warmup from 0; -1: warmup_fraction of this trial's steps
    decay_start: int = 0  # wsd: the step the cooldown starts (a trunk: its end, never)
    flops_paid: float = 0.0  # FLOPs this trial alone trains (a branch: its cooldown only)
    lr_chosen_by: str = "spec"  # "spec", or "search" once the size's LR search has run

    @property
    def paid_steps(self) -> int:
        return self.steps - self.start_step

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def tokens_per_step(self) -> int:
        """Data units per optimizer step (all workers)."""
        return units_per_step(self.training, self.data_unit)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrialConfig":
        d: dict[str, Any] = json.loads(text)
        data = dict(d["data"])
        data["paths"] = tuple(data["paths"])
        data["synthetic"] = SyntheticSpec(**data["synthetic"])
        d["data"] = DataSpec(**data)
        d["training"] = TrainingSpec(**d["training"])
        d["eval_steps"] = tuple(d["eval_steps"])
        d["save_steps"] = tuple(d.get("save_steps", ()))
        if "probes" in d:
            d["probes"] = ProbeSpec(**{**d["probes"], "tasks": tuple(d["probes"]["tasks"])})
        return cls(**d)


def plan(spec: SweepSpec, located: Located) -> list[TrialConfig]:
    """All trials of the sweep, largest compute first (so the longest trials do not run alone
    at the end: shorter ones fill in around them). Raises UserError on impossible ones."""
    _check_global(spec, located)
    family = get_family(spec.family)
    context = _data_context(spec, family)
    shapes = [_shape(spec, i, size, context, located) for i, size in enumerate(spec.model.sizes)]
    trials: list[TrialConfig] = []
    search = spec.training.lr if isinstance(spec.training.lr, LRSearchSpec) else None
    for i, (size, shape) in enumerate(zip(spec.model.sizes, shapes)):
        fpt = family.flops_per_unit(shape)
        if spec.budgets.kind == "grid":
            budgets = [(j, units, None) for j, units in enumerate(spec.budgets.data)]
        else:
            budgets = [(j, c / fpt, c) for j, c in enumerate(spec.budgets.flops)]
        points = [_trial(spec, located, family, size, shape, i, j, tokens_planned, c)
                  for j, tokens_planned, c in budgets]
        if spec.training.schedule == "wsd":
            points = wsd_ladder(points, spec, located)
        trials += points
        if search is not None:
            trials += _lr_search_trials(spec, located, family, size, shape, i, search, min(b[1] for b in budgets))
    _dedupe_ids(trials)
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
    per_step = first.tokens_per_step
    trunk_id = first.trial_id.replace(f"-d{_si(first.tokens)}-", "-trunk-", 1)
    trunk = dataclasses.replace(
        first, trial_id=trunk_id, role="trunk", tokens=trunk_steps * per_step, tokens_planned=float(trunk_steps * per_step),
        steps=trunk_steps, flops=first.flops_per_token * trunk_steps * per_step, compute_budget=None,
        eval_steps=tuple(sorted(set(eval_steps(trunk_steps, spec.evaluation.points)) | set(save))),
        save_steps=save, warmup_steps=warmup, decay_start=trunk_steps,
        flops_paid=first.flops_per_token * trunk_steps * per_step,
    )
    branches = []
    for p in points:
        b = starts[p.trial_id]
        cooldown_evals = {b + round((p.steps - b) * k / spec.evaluation.points)
                          for k in range(1, spec.evaluation.points + 1)}
        branches.append(dataclasses.replace(
            p, role="branch", parent=trunk_id, start_step=b, warmup_steps=warmup, decay_start=b,
            eval_steps=tuple(sorted(s for s in cooldown_evals if s > b)),
            flops_paid=p.flops_per_token * (p.steps - b) * per_step,
        ))
    return [trunk] + branches


def _lr_search_trials(spec, located, family, size, shape, i, search: LRSearchSpec, smallest: float) -> list[TrialConfig]:
    """A size's LR candidates, each one run at the search budget with the sweep's schedule."""
    base = _trial(spec, located, family, size, shape, i, 0, search.budget or smallest, None)
    if spec.training.schedule == "wsd":
        cooldown = max(1, round(spec.training.cooldown_fraction * base.steps))
        base = dataclasses.replace(base, decay_start=base.steps - cooldown)
    return [dataclasses.replace(base, trial_id=f"{base.trial_id}-lr{lr:g}", role="lr_search", compute_budget=None,
                                training=dataclasses.replace(base.training, lr=lr), lr_chosen_by="candidate")
            for lr in search.search]


def with_chosen_lrs(trials: list[TrialConfig], final_losses: dict[str, float]) -> tuple[list[TrialConfig], dict]:
    """The trials with each size's LR set to its best LR-search candidate (lowest final loss
    among ``final_losses``, by trial id). Returns (trials, {size_index: (lr, {lr: loss})})."""
    chosen: dict[int, tuple[float, dict]] = {}
    for t in trials:
        if t.role == "lr_search":
            lr, losses = chosen.get(t.size_index, (None, {}))
            losses[t.training.lr] = final_losses.get(t.trial_id, float("nan"))
            chosen[t.size_index] = (None, losses)
    for i, (_, losses) in list(chosen.items()):
        finite = {lr: v for lr, v in losses.items() if np.isfinite(v)}
        if finite:
            chosen[i] = (min(finite, key=finite.get), losses)
    out = []
    for t in trials:
        if t.role != "lr_search" and t.size_index in chosen:
            lr = chosen[t.size_index][0]
            t = (dataclasses.replace(t, training=dataclasses.replace(t.training, lr=lr), lr_chosen_by="search")
                 if lr is not None else dataclasses.replace(t, lr_chosen_by="search failed: middle candidate"))
        out.append(t)
    return out, chosen


IMAGE_SOURCES = ("digits", "procedural", "images", "hub")
TOKEN_SOURCES = ("stdlib", "synthetic", "files", "hub")


def units_per_step(training: TrainingSpec, data_unit: str) -> int:
    return training.batch_size * (training.seq_len if data_unit == "tokens" else 1)


def _check_global(spec: SweepSpec, located: Located) -> None:
    if spec.family not in family_names():
        raise located.error(("family",), f"unknown model family; expected one of {family_names()}")
    unit = get_family(spec.family).data_unit
    if spec.budgets.kind == "grid" and not getattr(spec.budgets, unit):
        other = "samples" if unit == "tokens" else "tokens"
        raise located.error(("budgets", other),
                            f"family {spec.family!r} counts data in {unit}: give budgets.{unit}")
    if spec.probes.tasks and unit != "tokens":
        raise located.error(("probes", "tasks"), f"capability probes are text tasks for language models; "
                            f"family {spec.family!r} trains on {unit}")
    if spec.probes.tasks and spec.data.tokenizer != "byte":
        raise located.error(("probes", "tasks"), "capability probes are written in bytes: they need tokenizer: byte")
    sources = TOKEN_SOURCES if unit == "tokens" else IMAGE_SOURCES
    if spec.data.source not in sources:
        raise located.error(("data", "source"),
                            f"family {spec.family!r} trains on {unit}; expected one of {list(sources)}")
    if spec.training.schedule == "wsd" and hasattr(get_family(spec.family), "networks"):
        raise located.error(("training", "schedule"), f"family {spec.family!r} trains several networks; "
                            "wsd ladders are built for one: use cosine")
    res, ds = spec.resources, spec.deepspeed
    if ds.precision == "fp16" and res.gpus_per_worker == 0:
        raise located.error(
            ("deepspeed", "precision"),
            "fp16 needs a GPU (resources.gpus_per_worker > 0); on CPU use fp32 or bf16",
        )


def _data_context(spec: SweepSpec, family) -> dict[str, Any]:
    """Shape fields that the data fix: context and vocabulary, or image size and channels."""
    if family.data_unit == "tokens":
        return {"context": spec.training.seq_len, "vocab": vocab_size(spec.data)}
    return {"image_size": spec.data.image_size, "channels": spec.data.channels}


def _shape(spec: SweepSpec, i: int, size: SizeSpec, context: dict, located: Located) -> Any:
    family = get_family(spec.family)
    fields = {f.name for f in dataclasses.fields(family.shape_type)}
    options = spec.model.options()
    for key, name in spec.model.OPTION_FIELDS.items():
        if name in options and name not in fields:
            raise located.error(("model", key), f"family {spec.family!r} has no option {key!r}")
    explicit = size.shape_fields()
    unknown = sorted(set(explicit) - fields)
    if unknown:  # the size fields the family has: not set from the data, by options, or fixed
        expected = sorted(fields - set(context) - set(spec.model.OPTION_FIELDS.values()) - {"timesteps"})
        raise located.error(("model", "sizes", i, unknown[0]),
                            f"not a shape field of family {spec.family!r}; expected {expected}")
    try:
        if size.params is not None:
            return family.shape_from_params(
                int(size.params),
                aspect_ratio=spec.model.aspect_ratio,
                head_dim=spec.model.head_dim,
                **context,
                **options,
            )
        return family.shape_type(**explicit, **context, **options)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if isinstance(exc, TypeError) and "missing" in message:  # a required shape field left out
            message = f"family {spec.family!r} needs {message.split('argument', 1)[-1].strip(': ')}"
        raise located.error(("model", "sizes", i), message) from None


def _trial(spec, located, family, size, shape, i, j, tokens_planned, c) -> TrialConfig:
    tr, res = spec.training, spec.resources
    workers = size.workers or res.workers
    unit = family.data_unit
    per_step = units_per_step(tr, unit)
    budget_field = ("budgets", unit if c is None else "flops", j)
    if tr.batch_size % workers:
        raise located.error(
            ("model", "sizes", i),
            f"training.batch_size ({tr.batch_size}) must divide evenly over {workers} workers",
        )
    steps = int(tokens_planned // per_step)
    if steps < 1:
        what = f"{tokens_planned:.4g} {unit}" if c is None else (
            f"compute {c:.4g} FLOPs buys only {tokens_planned:.4g} {unit} for size {i} "
            f"({family.flops_per_unit(shape):.4g} FLOPs per {unit[:-1]}): the model is too large for it"
        )
        step_units = f"batch_size {tr.batch_size} x seq_len {tr.seq_len}" if unit == "tokens" else "batch_size"
        raise located.error(budget_field, f"{what}; one optimizer step needs {per_step} {unit} ({step_units})")
    if unit == "tokens":
        validation = spec.evaluation.validation_tokens
        if validation // tr.seq_len < workers:
            raise located.error(
                ("evaluation", "validation_tokens"),
                f"needs at least one sequence of {tr.seq_len} tokens per worker ({workers} workers)",
            )
    else:
        validation = spec.evaluation.validation_samples
        if validation < workers:
            raise located.error(("evaluation", "validation_samples"),
                                f"needs at least one image per worker ({workers} workers)")
    params = family.num_params(shape)
    tokens = steps * per_step
    fpt = family.flops_per_unit(shape)
    if isinstance(tr.lr, LRSearchSpec):  # a placeholder until the size's search has run
        tr = dataclasses.replace(tr, lr=sorted(tr.lr.search)[len(tr.lr.search) // 2])
    return TrialConfig(
        trial_id=_trial_id(family, params.scaling, tokens, tr.seed),
        sweep=spec.name,
        family=spec.family,
        shape=dataclasses.asdict(shape),
        n_params=params.scaling,
        total_params=params.total,
        tokens=tokens,
        tokens_planned=float(tokens_planned),
        steps=steps,
        flops_per_token=fpt,
        flops=fpt * tokens,
        compute_budget=c,
        eval_steps=eval_steps(steps, spec.evaluation.points),
        workers=workers,
        cpus_per_worker=res.cpus_per_worker,
        gpus_per_worker=res.gpus_per_worker,
        zero_stage=_zero_stage(spec, size, params.total),
        precision="fp32" if spec.deepspeed.precision == "auto" and res.gpus_per_worker == 0 else spec.deepspeed.precision,
        validation_tokens=validation,
        training=tr,
        data=spec.data,
        data_unit=unit,
        sample_grid=spec.evaluation.sample_grid if unit == "samples" else 0,
        probes=spec.probes,
        size_index=i,
        flops_paid=fpt * tokens,
        lr_chosen_by="search pending" if isinstance(spec.training.lr, LRSearchSpec) else "spec",
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
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _trial_id(family, n: int, tokens: int, seed: int) -> str:
    return f"{getattr(family, 'tag', family.name)}-n{_si(n)}-d{_si(tokens)}-s{seed}"


def _dedupe_ids(trials: list[TrialConfig]) -> None:
    seen: dict[str, int] = {}
    for k, t in enumerate(trials):
        if t.trial_id in seen:
            shape = get_family(t.family).shape_type(**t.shape).tag
            trials[k] = dataclasses.replace(t, trial_id=f"{t.trial_id}-{shape}")
        seen[trials[k].trial_id] = k
    if len(seen) != len(trials):
        raise AssertionError("two trials share an id even with their shapes: identical sizes?")


def describe(trials: list[TrialConfig]) -> str:
    """The plan as a table: what --dry-run prints."""
    head = f"{'trial':<30} {'shape':<24} {'N':>9} {'D':>9} {'C (FLOPs)':>10} {'steps':>6}  resources"
    lines = [head, "-" * len(head)]
    for t in trials:
        shape = get_family(t.family).shape_type(**t.shape).tag
        res = f"{t.workers}x({t.cpus_per_worker:g} CPU, {t.gpus_per_worker:g} GPU) ZeRO-{t.zero_stage} {t.precision}"
        lines.append(
            f"{t.trial_id:<30} {shape:<24} {t.n_params:>9.3g} {t.tokens:>9.3g} {t.flops:>10.3g} "
            f"{t.steps:>6}  {res}"
        )
    points = sum(t.flops for t in trials if t.role in ("point", "branch"))
    paid = sum(t.flops_paid for t in trials)
    unit = trials[0].data_unit if trials else "tokens"
    lines.append(f"{len(trials)} trials, total compute {paid:.3g} FLOPs (D in {unit})" + (
        f"; the fit points represent {points:.3g} FLOPs (wsd branches share their trunk's)"
        if any(t.role != "point" for t in trials) else ""))
    return "\n".join(lines)
