"""The per-worker training loop: one DeepSpeed engine trains one model to its data budget.

It knows nothing of Ray: ``cluster.trial`` hands it a :class:`WorkerContext` whose
``report`` sends metrics (and a checkpoint directory) to Ray Tune or Ray Train, and whose
``restore_dir`` holds the checkpoint a restarted trial continues from. The process group
must exist before ``run_worker`` is called (Ray Train makes it; ``cluster.trial`` makes a
world-size-1 group for single-worker trials).

Every evaluation point reports: ``step``, ``tokens`` (data units trained so far, all
workers: tokens, or samples for image families), ``flops`` (units · FLOPs/unit),
``train_loss`` (mean over the steps since the last point), the family's held-out metrics
(``loss`` in the family's ``loss_unit``, …), ``lr``, ``tokens_per_s`` (units per second of
training steps, all workers) and ``elapsed_s``. The last report also has ``done``,
``status`` (``completed`` or ``diverged``; a family with ``health`` may also say
``collapsed``) and ``error``; ``caveats`` says why a family's health check flagged it.
A family with several ``networks`` (a GAN) trains one engine per network through its own
``train_step``; its other training losses are reported as ``train_<name>`` (``train_d_loss``). A completed trial of a family with
``artifacts`` (sample grids) hands each image to ``WorkerContext.save_artifact`` first.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from experiments.data import load_tokens, train_batch, validation_batches
from experiments.image_data import image_train_batch, image_validation_batches, load_images
from experiments.planner import TrialConfig
from experiments.schedules import cosine, lr_multiplier
from models import get_family
from models.flops import measured_flops_per_unit

CHECKPOINT_TAG = "ckpt"


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    report: Callable[[dict, str | None], None]  # (metrics, checkpoint dir or None)
    restore_dir: str | None = None  # a checkpoint to continue from
    node_id: str = ""  # where this worker runs (recorded in the trials table)
    save_artifact: Callable[[str, bytes], None] | None = None  # (file name, bytes), rank 0 only
    branch_points: Any = None  # wsd: cluster.results.BranchCheckpoints (trunks save, branches load)


def lr_factor(step: int, steps: int, warmup_fraction: float, min_ratio: float) -> float:
    """The cosine schedule's multiplier with warmup over round(warmup_fraction·steps) steps."""
    return cosine(step, steps, round(warmup_fraction * steps), min_ratio)


def resolve_precision(precision: str) -> str:
    """``auto`` is bf16 on a GPU that supports it and fp32 anywhere else."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def deepspeed_config(cfg: TrialConfig) -> dict:
    tr = cfg.training
    precision = resolve_precision(cfg.precision)
    config = {
        "train_batch_size": tr.batch_size,
        "train_micro_batch_size_per_gpu": tr.batch_size // cfg.workers,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no JIT-built fused Adam
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    # Always set: left out, DeepSpeed clips the gradient norm at 1.0 (its default), so
    # grad_clip: 0 would not turn clipping off.
    config["gradient_clipping"] = tr.grad_clip
    return config


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
    family = get_family(cfg.family)
    torch.manual_seed(cfg.seed)
    model = family.build(family.shape_type(**cfg.shape))
    networks = getattr(family, "networks", None)
    if networks is None:
        return family, _engine(model, cfg)
    from experiments.engine_set import EngineSet

    return family, EngineSet(model, {name: _engine(net, cfg) for name, net in networks(model).items()})


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
    return engine


def run_worker(cfg: TrialConfig, ctx: WorkerContext) -> dict:
    """Train ``cfg`` on this worker's shard; returns the last metrics reported."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    next_batch, validation = trial_batches(cfg)
    family, engine = build_engine(cfg)
    first = torch.from_numpy(next_batch(0, 0, 1))
    units = first[:, 1:].numel() if cfg.data_unit == "tokens" else first.shape[0]
    flops_measured = measured_flops_per_unit(family, family.shape_type(**cfg.shape), first, units=units)
    # Losses that draw randomness (diffusion timesteps and noise, VAE posterior samples) draw
    # it per rank: every rank built the same initial weights from cfg.seed, but must not
    # draw the same noise for its different images. (A trial resumed from a checkpoint draws
    # afresh from here: its noise, unlike its data order, differs from an unbroken run's.)
    torch.manual_seed(cfg.seed * 1_000_003 + 1 + ctx.rank)
    state = {"step": 0, "wall_s": 0.0, "train_s": 0.0}
    if ctx.restore_dir:
        _, client = engine.load_checkpoint(ctx.restore_dir, tag=CHECKPOINT_TAG)
        # only our own keys: the loaded client state also holds DeepSpeed's metadata (e.g.
        # checkpoint_parallel_dimensions), which save_checkpoint refuses as client state
        state.update({k: v for k, v in (client or {}).items() if k in state})
    elif cfg.role == "branch":  # a wsd cooldown: continue the trunk's run from the branch point
        if ctx.branch_points is None:
            raise RuntimeError(f"{cfg.trial_id}: a wsd branch needs its trunk's checkpoints (no results store given)")
        ctx.branch_points.load(engine, cfg.parent, cfg.start_step, CHECKPOINT_TAG)
        state["step"] = cfg.start_step
        _set_lr(engine, cfg.start_step)
    shared = getattr(family, "shared_evaluation", False)  # every rank scores every held-out item
    val = [torch.from_numpy(b).to(engine.device) for b in validation(*((0, 1) if shared else (ctx.rank, ctx.world_size)))]
    if hasattr(family, "prepare"):  # dataset-level state for the metrics (a GAN's feature network)
        family.prepare(engine, torch.from_numpy(feature_images(cfg)))
    startup_s = time.perf_counter() - started
    fixed = {"startup_s": startup_s, "flops_measured_per_token": flops_measured,
             "node_id": ctx.node_id, "precision": resolve_precision(cfg.precision)}
    wall_before = state["wall_s"] - time.perf_counter()  # wall time accumulates over restarts
    losses: list[float] = []
    extra_sums: dict[str, float] = {}  # other training losses (a GAN's d_loss) since the last point
    history: list[dict] = []  # evaluation points, for families that judge their own health
    metrics: dict = {}
    step = state["step"]
    while step < cfg.steps:
        t0 = time.perf_counter()
        batch = torch.from_numpy(next_batch(step, ctx.rank, ctx.world_size)).to(engine.device)
        loss, extras = _train_step(family, engine, batch)
        step += 1
        if step in cfg.save_steps:  # a wsd trunk at a branch point
            ctx.branch_points.save(engine, cfg.trial_id, step, CHECKPOINT_TAG,
                                   {"step": step, "wall_s": 0.0, "train_s": 0.0})
        mean_loss = _mean_over_workers(loss.detach().float(), ctx.world_size)
        state["train_s"] += time.perf_counter() - t0
        losses.append(mean_loss)
        for key, value in extras.items():
            extra_sums[key] = extra_sums.get(key, 0.0) + _mean_over_workers(value.float(), ctx.world_size)
        if not math.isfinite(mean_loss):
            return _finish(ctx, cfg, metrics, step, "diverged", f"training loss is {mean_loss} at step {step}",
                           wall_before, fixed)
        if step in cfg.eval_steps:
            metrics = _evaluate(family, engine, val, ctx.world_size, cfg.probes, cfg.training.seq_len)
            metrics.update(_progress(cfg, step, losses, engine, state, wall_before, fixed))
            metrics.update({f"train_{k}": v / max(1, len(losses)) for k, v in extra_sums.items()})
            losses, extra_sums = [], {}
            if not math.isfinite(metrics["loss"]):
                return _finish(ctx, cfg, metrics, step, "diverged", f"held-out loss is {metrics['loss']}",
                               wall_before, fixed)
            history.append(metrics)
            status, caveat = family.health(history) if hasattr(family, "health") else ("completed", "")
            metrics["caveats"] = caveat  # a GAN's mode collapse or instability, in the trials table
            if status == "diverged":
                return _finish(ctx, cfg, metrics, step, status, caveat, wall_before, fixed)
            if step == cfg.steps:
                _save_artifacts(family, engine, val, cfg, ctx)
                return _finish(ctx, cfg, metrics, step, status, caveat, wall_before, fixed)
            state.update(step=step, wall_s=metrics["elapsed_s"])
            _report_with_checkpoint(ctx, engine, metrics, state)
    return metrics  # only reached when restored from a checkpoint at the very end


def _train_step(family, engine, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(training loss, other losses) of one optimizer step: the family's own ``train_step``
    where it has one (a GAN's alternating step over its engines), else loss, backward, step."""
    if hasattr(family, "train_step"):
        out = family.train_step(engine, batch)
        return out.pop("loss"), out
    loss = family.loss(engine, batch)
    engine.backward(loss)
    engine.step()
    return loss, {}


def feature_images(cfg: TrialConfig):
    """The training images a family's ``prepare`` learns from: the same for every budget
    (the procedural source's first images, or the whole training split of the others)."""
    from models.gan_metrics import FEATURE_NET_IMAGES

    return load_images(cfg.data, train_samples=FEATURE_NET_IMAGES, validation_samples=1).train


def trial_batches(cfg: TrialConfig):
    """(batch(step, rank, world) -> array, validation(rank, world) -> list of arrays) for
    the trial's data: token windows for language models, uint8 images for image families."""
    tr = cfg.training
    if cfg.data_unit == "tokens":
        data = load_tokens(cfg.data, train_tokens=cfg.tokens + 1,
                           validation_tokens=cfg.validation_tokens + tr.seq_len)

        def batch(step: int, rank: int, world: int):
            rows = train_batch(data.train, step, tr.batch_size, tr.seq_len, rank, world)
            if cfg.probes.tasks:  # capability probes replace some training sequences
                from experiments.probes import mix_into

                rows = mix_into(rows, cfg.probes, step, tr.batch_size, rank, world)
            return rows

        return batch, lambda rank, world: validation_batches(
            data.validation, cfg.validation_tokens, tr.seq_len, tr.batch_size, rank, world)
    images = load_images(cfg.data, train_samples=cfg.tokens, validation_samples=cfg.validation_tokens)
    return (
        lambda step, rank, world: image_train_batch(images.train, step, tr.batch_size, rank, world),
        lambda rank, world: image_validation_batches(images.validation, tr.batch_size, rank, world),
    )


@torch.no_grad()
def _save_artifacts(family, engine, val: list[torch.Tensor], cfg: TrialConfig, ctx: WorkerContext) -> None:
    """Sample grids of a completed trial (every rank computes: ZeRO-3 forwards need all)."""
    make = getattr(family, "artifacts", None)
    if make is None or cfg.sample_grid < 1:
        return
    engine.eval()
    images = make(engine, val, cfg.sample_grid)
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


def _mean_over_workers(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return value.item()


@torch.no_grad()
def _evaluate(family, engine, val: list[torch.Tensor], world: int, probes=None, context: int = 0) -> dict:
    engine.eval()
    metrics = family.evaluate(engine, val)
    if probes is not None and probes.tasks:  # every rank scores the same items: no averaging needed
        from experiments.probes import evaluate_probes

        metrics_probes = evaluate_probes(engine, probes, context, engine.device)
    else:
        metrics_probes = {}
    engine.train()
    if world > 1:  # every worker scored the same number of tokens: the mean of means is exact
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(values)
        metrics = {k: v / world for k, v in zip(keys, values.tolist())}
    return {**metrics, **metrics_probes}


def _progress(cfg, step, losses, engine, state, wall_before, fixed) -> dict:
    tokens = step * cfg.tokens_per_step
    return {
        "step": step,
        "tokens": tokens,
        "flops": tokens * cfg.flops_per_token,
        "train_loss": sum(losses) / max(1, len(losses)),
        "lr": engine.get_lr()[0],
        "tokens_per_s": (step - cfg.start_step) * cfg.tokens_per_step / state["train_s"] if state["train_s"] > 0 else 0.0,
        "elapsed_s": wall_before + time.perf_counter(),
        "done": False,
        **fixed,
    }


def _report_with_checkpoint(ctx: WorkerContext, engine, metrics: dict, state: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="scalinglab-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state=dict(state))
        ctx.report(metrics, tmp)


def _finish(ctx, cfg, metrics, step, status, error, wall_before, fixed) -> dict:
    final = dict(metrics)
    final.update(
        step=step,
        tokens=step * cfg.tokens_per_step,
        flops=step * cfg.tokens_per_step * cfg.flops_per_token,
        done=True,
        status=status,
        error=error,
        elapsed_s=wall_before + time.perf_counter(),
        **fixed,
    )
    ctx.report(final, None)
    return final


def set_distributed_env(rank: int, world: int, local_rank: int, local_world: int,
                        master_addr: str, master_port: int) -> None:
    """The variables DeepSpeed reads when it is not started by its own launcher."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(local_world), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
    )
