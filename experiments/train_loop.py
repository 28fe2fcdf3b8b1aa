"""The per-worker training loop: one DeepSpeed engine trains one model to its data budget.

It knows nothing of Ray, and nothing of any one family: ``cluster.trial`` hands it a
:class:`WorkerContext` whose ``report`` sends a :class:`~experiments.trial_report.TrialReport`
(and a checkpoint directory) to Ray Tune or Ray Train, and whose ``restore_dir`` holds the
checkpoint a restarted trial continues from; everything family-specific goes through the
family's hooks (``models.family.ModelFamily``). The process group must exist before
``run_worker`` is called (Ray Train makes it; ``cluster.trial`` makes a world-size-1 group for
single-worker trials).

At every evaluation point the report holds the family's held-out metrics (``loss`` first),
the probes' (for language models with ``probes``), ``train_loss`` (mean since the last
point), a family's other training losses as ``train_<name>``, ``lr`` and
``data_units_per_s``. The last report is ``done``, with the status: ``completed``,
``diverged`` (a NaN or inf loss, or the family's health check), or ``collapsed`` (the
family's health check at the end). A completed trial's ``artifacts`` (sample grids) go to
``WorkerContext.save_artifact`` first.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from analysis.records import LR, THROUGHPUT, TRAIN_LOSS, TRAIN_PREFIX, DataUnit, Role, Status
from experiments.cache import FileCache
from experiments.data import load_tokens, train_batch, validation_batches
from experiments.image_data import image_train_batch, image_validation_batches, load_images
from experiments.planner import TrialConfig
from experiments.schedules import lr_multiplier
from experiments.trial_report import TrialReport
from models.family import Cache, ModelFamily, Preparation
from models.flops import measured_flops_per_unit

CHECKPOINT_TAG = "ckpt"


class BranchPoints(Protocol):
    """Where a wsd trunk saves, and its branches load, the branch-point checkpoints
    (``cluster.results.BranchCheckpoints``)."""

    def save(self, engine, trunk_id: str, step: int, tag: str, client_state: dict) -> None: ...

    def load(self, engine, trunk_id: str, step: int, tag: str) -> dict: ...


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    report: Callable[[TrialReport, str | None], None]  # (report, checkpoint dir or None)
    restore_dir: str | None = None  # a checkpoint to continue from
    node_id: str = ""  # where this worker runs (recorded in the trials table)
    save_artifact: Callable[[str, bytes], None] | None = None  # (file name, bytes), rank 0 only
    branch_points: BranchPoints | None = None  # wsd trunks save, branches load
    cache: Cache | None = None  # for a family's prepare (default: experiments.cache.FileCache())


def resolve_precision(precision: str) -> str:
    """``auto`` is bf16 on a GPU that supports it and fp32 anywhere else."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def deepspeed_config(cfg: TrialConfig) -> dict:
    tr = cfg.training
    precision = resolve_precision(cfg.precision)
    return {
        "train_batch_size": tr.batch_size,
        "train_micro_batch_size_per_gpu": tr.batch_size // cfg.workers,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no JIT-built fused Adam
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        # Always set: left out, DeepSpeed clips the gradient norm at 1.0 (its default), so
        # grad_clip: 0 would not turn clipping off.
        "gradient_clipping": tr.grad_clip,
    }


def disable_jit_comm_op() -> None:
    """Call before the process group is made. DeepSpeed's CPU accelerator would JIT-compile
    a shared-memory all-reduce (~36 s) on first use; gloo's all-reduce is fine at these
    sizes, so that cost is never paid (GPU runs use NCCL and are unaffected)."""
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(cfg: TrialConfig):
    """(family, engine): one DeepSpeed engine, or for a family with several ``networks`` (a
    GAN) an :class:`~experiments.engine_set.EngineSet` with one engine per network."""
    disable_jit_comm_op()
    family = cfg.model_family
    torch.manual_seed(cfg.seed)
    model = family.build(cfg.shape)
    networks = family.networks(model)
    if networks is None:
        return family, _engine(model, cfg)
    from experiments.engine_set import EngineSet

    return family, EngineSet(model, {name: _engine(net, cfg) for name, net in networks.items()})


def _engine(model: torch.nn.Module, cfg: TrialConfig):
    import deepspeed

    tr = cfg.training
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tr.lr,
        betas=(tr.beta1, tr.beta2),
        foreach=True,  # multi-tensor kernels: torch only defaults to them on CUDA
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(cfg)
    )
    if cfg.workers == 1 and cfg.zero_stage == 0:
        # One rank, no ZeRO: the gradient all-reduce would only copy gradients into buckets,
        # "average" them over a world of one and copy them back (~5% of a small model's step).
        engine.enable_backward_allreduce = False
    # DeepSpeed clips fp32 gradients without ZeRO (the only case in which it calls this) by a
    # norm per parameter and then an all-reduce of the total norm, every step: ~5% of a small
    # model's step on a CPU. Every rank holds the same (all-reduced) gradients there, so
    # torch's multi-tensor clip gives the same norm locally.
    engine.clip_fp32_gradients = lambda: torch.nn.utils.clip_grad_norm_(
        engine.module.parameters(), engine.gradient_clipping(), foreach=True)
    return engine


@dataclass
class _Progress:
    """What the loop carries between evaluation points (and, through checkpoints, restarts)."""

    step: int = 0
    wall_s: float = 0.0  # wall time of earlier runs of this trial
    train_s: float = 0.0  # seconds inside training steps since this run started

    def state(self) -> dict:
        return {"step": self.step, "wall_s": self.wall_s}


_TRIALS_IN_PROCESS = itertools.count()  # Tune reuses a trial's process for the sweep's next trial


def run_worker(cfg: TrialConfig, ctx: WorkerContext) -> TrialReport:
    """Train ``cfg`` on this worker's shard; returns the last report. Everything a trial sets
    up is its own (seeded RNGs, a new engine and optimizer): a process that ran other trials
    before trains exactly as a fresh one, only without their one-off costs."""
    data, family, engine, progress, val, base = _set_up(cfg, ctx)
    clock = _Clock(progress.wall_s)
    losses: list[float] = []
    extra_sums: dict[str, float] = {}  # other training losses (a GAN's d_loss) since the last point
    history: list[dict[str, float]] = []  # evaluation points, for the family's health check
    step = progress.step
    report = _report(cfg, step, clock, base)
    checkpointed = time.perf_counter()  # when this run last checkpointed (or started)
    while step < cfg.steps:
        t0 = time.perf_counter()
        batch = torch.from_numpy(data.batch(step, ctx.rank, ctx.world_size)).to(engine.device)
        out = family.train_step(engine, batch)
        step += 1
        if step in cfg.save_steps:  # a wsd trunk at a branch point
            ctx.branch_points.save(engine, cfg.trial_id, step, CHECKPOINT_TAG, {"step": step, "wall_s": 0.0})
        mean_loss = _mean_over_workers(out.pop("loss").detach().float(), ctx.world_size)
        progress.train_s += time.perf_counter() - t0
        losses.append(mean_loss)
        for key, value in out.items():
            extra_sums[key] = extra_sums.get(key, 0.0) + _mean_over_workers(value.float(), ctx.world_size)
        if not math.isfinite(mean_loss):
            return _finish(ctx, cfg, step, clock, base, status=Status.DIVERGED,
                           error=f"training loss is {mean_loss} at step {step}")
        if step not in cfg.eval_steps:
            if _checkpoint_due(cfg, checkpointed, ctx.world_size):  # by time, between evaluation points
                _report_with_checkpoint(ctx, engine, _report(cfg, step, clock, base),
                                        _Progress(step=step, wall_s=clock.elapsed()))
                checkpointed = time.perf_counter()
            continue
        metrics = _evaluate(family, engine, val, ctx.world_size, cfg)
        metrics.update({TRAIN_LOSS: sum(losses) / len(losses), LR: engine.get_lr()[0],
                        THROUGHPUT: (step - progress.step) * cfg.units_per_step / max(progress.train_s, 1e-9)})
        metrics.update({f"{TRAIN_PREFIX}{k}": v / len(losses) for k, v in extra_sums.items()})
        losses, extra_sums = [], {}
        if not math.isfinite(metrics["loss"]):
            return _finish(ctx, cfg, step, clock, base, metrics=metrics, status=Status.DIVERGED,
                           error=f"held-out loss is {metrics['loss']}")
        history.append({**metrics, "step": step})
        status, caveat = family.health(history)
        if status == Status.DIVERGED:
            return _finish(ctx, cfg, step, clock, base, metrics=metrics, status=status, error=caveat, caveats=caveat)
        if step == cfg.steps:
            _save_artifacts(family, engine, val, cfg, ctx)
            return _finish(ctx, cfg, step, clock, base, metrics=metrics, status=status, caveats=caveat)
        report = _report(cfg, step, clock, base, metrics=metrics, caveats=caveat)
        _report_with_checkpoint(ctx, engine, report, _Progress(step=step, wall_s=report.elapsed_s))
        checkpointed = time.perf_counter()
    return report  # only reached when restored from a checkpoint at the very end


def _set_up(cfg: TrialConfig, ctx: WorkerContext):
    """(data, family, engine, progress, validation batches, the report fields that do not
    change during the run): everything before a trial's first step."""
    started = time.perf_counter()
    process_trials = next(_TRIALS_IN_PROCESS)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    data = TrialData(cfg)
    family, engine = build_engine(cfg)
    first = torch.from_numpy(data.batch(0, 0, 1))
    flops_measured = measured_flops_per_unit(family, cfg.shape, first)
    # Losses that draw randomness (diffusion timesteps and noise, VAE posterior samples) draw
    # it per rank: every rank built the same initial weights from cfg.seed, but must not
    # draw the same noise for its different images. (A trial resumed from a checkpoint draws
    # afresh from here: its noise, unlike its data order, differs from an unbroken run's.)
    torch.manual_seed(cfg.seed * 1_000_003 + 1 + ctx.rank)
    progress = _restore(cfg, ctx, engine)
    shard = (0, 1) if family.shared_evaluation else (ctx.rank, ctx.world_size)
    val = [torch.from_numpy(b).to(engine.device) for b in data.validation(*shard)]
    family.prepare(engine, Preparation(train_data=data.first_units, cache=ctx.cache or FileCache()))
    base = dict(startup_s=time.perf_counter() - started, process_trials=process_trials,
                flops_measured_per_unit=flops_measured, node_id=ctx.node_id, precision=resolve_precision(cfg.precision),
                bytes_per_token=data.bytes_per_token)
    return data, family, engine, progress, val, base


class _Clock:
    """Wall time of the trial, summed over restarts."""

    def __init__(self, before: float) -> None:
        self.offset = before - time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter()


def _restore(cfg: TrialConfig, ctx: WorkerContext, engine) -> _Progress:
    """Where this run starts: a restarted trial's checkpoint, a wsd branch's trunk
    checkpoint, or step 0."""
    progress = _Progress()
    if ctx.restore_dir:
        _, client = engine.load_checkpoint(ctx.restore_dir, tag=CHECKPOINT_TAG)
        # only our own keys: the loaded client state also holds DeepSpeed's metadata (e.g.
        # checkpoint_parallel_dimensions), which save_checkpoint refuses as client state
        client = client or {}
        progress.step, progress.wall_s = int(client.get("step", 0)), float(client.get("wall_s", 0.0))
    elif cfg.role == Role.BRANCH:  # a wsd cooldown: continue the trunk's run from the branch point
        if ctx.branch_points is None:
            raise RuntimeError(f"{cfg.trial_id}: a wsd branch needs its trunk's checkpoints (no results store given)")
        ctx.branch_points.load(engine, cfg.parent, cfg.start_step, CHECKPOINT_TAG)
        progress.step = cfg.start_step
        _set_lr(engine, cfg.start_step)
    return progress


class TrialData:
    """A trial's data: ``batch(step, rank, world)`` and ``validation(rank, world)`` as numpy
    arrays (token windows for language models, uint8 images for image families), and
    ``first_units(n)``, the first n training data units as one tensor (a family's prepare)."""

    def __init__(self, cfg: TrialConfig) -> None:
        self.cfg, tr = cfg, cfg.training
        if cfg.data_unit == DataUnit.TOKENS:
            self.tokens = load_tokens(cfg.data, train_tokens=cfg.data_units + 1,
                                      validation_tokens=cfg.validation_units + tr.seq_len)
        else:
            self.images = load_images(cfg.data, train_samples=cfg.data_units, validation_samples=cfg.validation_units)

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of the validation text per token (NaN for images and synthetic tokens)."""
        return self.tokens.bytes_per_token if self.cfg.data_unit == DataUnit.TOKENS else math.nan

    def batch(self, step: int, rank: int, world: int):
        tr = self.cfg.training
        if self.cfg.data_unit == DataUnit.SAMPLES:
            return image_train_batch(self.images.train, step, tr.batch_size, rank, world)
        rows = train_batch(self.tokens.train, step, tr.batch_size, tr.seq_len, rank, world)
        if self.cfg.probes.tasks:  # capability probes replace some training sequences
            from experiments.probes import mix_into

            rows = mix_into(rows, self.cfg.probes, step, tr.batch_size, rank, world)
        return rows

    def validation(self, rank: int, world: int) -> list:
        tr = self.cfg.training
        if self.cfg.data_unit == DataUnit.SAMPLES:
            return image_validation_batches(self.images.validation, tr.batch_size, rank, world)
        return validation_batches(self.tokens.validation, self.cfg.validation_units, tr.seq_len, tr.batch_size,
                                  rank, world)

    def first_units(self, n: int) -> torch.Tensor:
        """The same for every budget: the first n training images (read anew, so that a small
        budget's trial sees as many as a large one's), or tokens."""
        if self.cfg.data_unit == DataUnit.SAMPLES:
            return torch.from_numpy(load_images(self.cfg.data, train_samples=n, validation_samples=1).train[:n])
        return torch.from_numpy(self.tokens.train[:n])


@torch.no_grad()
def _save_artifacts(family: ModelFamily, engine, val: list[torch.Tensor], cfg: TrialConfig,
                    ctx: WorkerContext) -> None:
    """Sample grids of a completed trial (every rank computes: ZeRO-3 forwards need all)."""
    if cfg.sample_grid < 1:
        return
    engine.eval()
    images = family.artifacts(engine, val, cfg.sample_grid)
    engine.train()
    if ctx.rank == 0 and ctx.save_artifact is not None:
        for caption, png in images.items():
            try:
                ctx.save_artifact(f"{caption}.png", png)
            except OSError as exc:  # a lost sample grid must not cost the trained trial
                print(f"warning: {cfg.trial_id}: cannot save sample grid {caption!r}: {exc}",
                      file=sys.stderr, flush=True)


def _set_lr(engine, step: int) -> None:
    """The LR of optimizer step ``step`` under this trial's schedule (a branch loads the
    trunk's scheduler state, whose last LR was the trunk's, not the cooldown's)."""
    sched = engine.lr_scheduler
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(step)


def _checkpoint_due(cfg: TrialConfig, since: float, world: int) -> bool:
    """Whether ``cfg.checkpoint_every_s`` has passed since ``since``: on any worker, so that
    every worker takes the (collective) checkpoint at the same step."""
    if cfg.checkpoint_every_s <= 0:
        return False
    due = float(time.perf_counter() - since >= cfg.checkpoint_every_s)
    return _mean_over_workers(torch.tensor(due), world) > 0


def _mean_over_workers(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return value.item()


@torch.no_grad()
def _evaluate(family: ModelFamily, engine, val: list[torch.Tensor], world: int, cfg: TrialConfig) -> dict:
    engine.eval()
    metrics = family.evaluate(engine, val)
    probes = {}
    if cfg.probes.tasks:  # every rank scores the same items: no averaging needed
        from experiments.probes import evaluate_probes

        probes = evaluate_probes(lambda tokens: family.next_token_logits(engine, tokens), cfg.probes,
                                 cfg.training.seq_len, engine.device)
    engine.train()
    if world > 1 and not family.shared_evaluation:
        # every worker scored the same number of items: the mean of means is exact
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(values)
        metrics = {k: v / world for k, v in zip(keys, values.tolist())}
    return {**metrics, **probes}


def _report_with_checkpoint(ctx: WorkerContext, engine, report: TrialReport, progress: _Progress) -> None:
    with tempfile.TemporaryDirectory(prefix="scalinglab-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state=progress.state())
        ctx.report(report, tmp)


def _report(cfg: TrialConfig, step: int, clock: _Clock, base: dict, **fields) -> TrialReport:
    """The report at ``step``: D and C trained so far, the wall time, ``base`` (what does not
    change during a run) and ``fields``."""
    units = step * cfg.units_per_step
    return TrialReport(step=step, data_units=units, flops=units * cfg.flops_per_unit, elapsed_s=clock.elapsed(),
                       **base, **fields)


def _finish(ctx: WorkerContext, cfg: TrialConfig, step: int, clock: _Clock, base: dict, **fields) -> TrialReport:
    """Send a trial's last report (``done``; no checkpoint: the trial is over)."""
    report = _report(cfg, step, clock, base, done=True, **fields)
    ctx.report(report, None)
    return report


def set_distributed_env(rank: int, world: int, local_rank: int, local_world: int,
                        master_addr: str, master_port: int) -> None:
    """The variables DeepSpeed reads when it is not started by its own launcher."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(local_world), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
    )
