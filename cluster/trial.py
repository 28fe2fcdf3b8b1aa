"""The trial driver: what one Ray Tune trial runs.

- ``workers == 1``: the DeepSpeed engine runs (world size 1, its own gloo/NCCL group)
  directly inside the Tune trial, which holds the worker's CPUs and GPUs. A TorchTrainer
  costs ~25 s and ~3 GB per trial on a 2-core machine (NOTES-ray-deepspeed.md).
- ``workers > 1``: the trial holds no CPU (``DRIVER_BUNDLE``) and launches a Ray Train
  ``TorchTrainer`` whose workers carry the resources; each worker runs the same loop on its
  data shard, and rank 0's metrics reach Tune through ``TuneReportCallback``.

Tune reuses a finished trial's process for the next trial of the same resources
(``reuse_actors``): the second and later trials of a process skip its start, imports and
data loading (``process_trials`` in trials.parquet counts them).

Checkpoints: single-worker trials checkpoint through Tune, multi-worker ones through Train
under a run name derived from the trial id, so a restarted trial (``--resume``) finds its
latest checkpoint either way and continues from it.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import closing
from dataclasses import dataclass

from experiments.planner import TrialConfig
from experiments.train_loop import WorkerContext

TRIAL_KEY = "trial"  # the Tune config key that holds the TrialConfig as JSON
# A Tune result key: the trial's own code raised (this error) and it must not be retried. Sent
# just before the exception, so the driver (cluster.monitor) sees it before Tune decides.
NO_RETRY_KEY = "scalinglab_no_retry"
# What a multi-worker trial's own process holds: no CPU, so that its workers can take every CPU
# (0.01 CPU left 2 one-CPU workers waiting forever on a 2-CPU node); a bundle cannot be empty.
DRIVER_BUNDLE = {"CPU": 0, "memory": 64 << 20}


@dataclass(frozen=True)
class TestHooks:
    """Test hooks, passed explicitly to ``run_sweep`` (never read from the environment):
    trials whose id contains one of the ``fail`` substrings raise at start, which exercises
    failure handling on a real cluster (docs/contributing.md)."""

    fail: tuple[str, ...] = ()

    __test__ = False  # not a pytest test class


def resources_for(config: dict):
    """Ray resources of the Tune trial itself (see module docstring)."""
    from ray import tune

    cfg = TrialConfig.from_json(config[TRIAL_KEY])
    if cfg.workers == 1:
        return tune.PlacementGroupFactory(
            [{"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}]
        )
    return tune.PlacementGroupFactory([DRIVER_BUNDLE])


def run_trial(config: dict, train_storage: str = "", verbose: bool = False, finished: frozenset = frozenset(),
              results_uri: str = "", hooks: TestHooks = TestHooks()) -> None:
    """The Tune function trainable. Trials in ``finished`` (already finished in the results
    table) return at once instead of training again. Sample grids and wsd checkpoints go to
    the results store at ``results_uri``."""
    cfg = TrialConfig.from_json(config[TRIAL_KEY])
    if cfg.trial_id in finished:
        return
    try:
        if any(f in cfg.trial_id for f in hooks.fail):
            raise RuntimeError(f"injected failure (TestHooks.fail) in trial {cfg.trial_id}")
        _quiet_worker(verbose, cfg)
        if cfg.workers == 1:
            _run_in_process(cfg, results_uri)
        else:
            _run_torch_trainer(cfg, train_storage, verbose, results_uri)
    except Exception as exc:
        if not worker_died(exc):  # a bug, a bad config: retrying would fail the same way
            from ray import tune

            tune.report({NO_RETRY_KEY: f"{type(exc).__name__}: {exc}"[:500]})
        raise


def worker_died(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a Ray worker process dying or hanging: a
    ``RayActorError`` (also as the failure of Ray Train's health check of a worker), or that
    health check timing out, alone or among a worker group's failures, at any depth."""
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckTimeoutError

    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, (RayActorError, WorkerHealthCheckTimeoutError)):
            return True
        pending += [error.__cause__, error.__context__, getattr(error, "health_check_failure", None),
                    *(getattr(error, "worker_failures", None) or {}).values()]
    return False


def worker_context(cfg: TrialConfig, results_uri: str, rank: int, world: int, report, restore_dir, node_id: str):
    """The loop's context: sample grids into ``samples/<trial_id>/`` of the results store (rank
    0), and a wsd trial's branch-point checkpoints there."""
    from analysis.records import SAMPLES_DIR, Role
    from analysis.store import ResultsStore
    from cluster.results import BranchCheckpoints

    save = None
    if results_uri and rank == 0:
        store = ResultsStore(results_uri)

        def save(name: str, data: bytes) -> None:
            store.write_bytes(f"{SAMPLES_DIR}/{cfg.trial_id}/{name}", data)

    points = BranchCheckpoints(results_uri) if results_uri and cfg.role in (Role.TRUNK, Role.BRANCH) else None
    return WorkerContext(rank, world, report, restore_dir, node_id, save, points)


def _run_in_process(cfg: TrialConfig, results_uri: str) -> None:
    """One worker, in the Tune trial's own process. Its (world size 1) process group is made
    once per process and kept: Tune reuses the process for the sweep's next trial, and
    DeepSpeed caches the groups it derives from it (a destroyed and remade group is refused
    as "not registered")."""
    import ray
    import torch
    from ray import tune

    if not torch.distributed.is_initialized():
        from experiments.train_loop import disable_jit_comm_op, set_distributed_env

        set_distributed_env(0, 1, 0, 1, "127.0.0.1", _free_port())
        import deepspeed

        disable_jit_comm_op()
        deepspeed.init_distributed(dist_backend="nccl" if cfg.gpus_per_worker > 0 else "gloo")
    _train(cfg, tune, results_uri, 0, 1, _node_id(ray))


def _run_torch_trainer(cfg: TrialConfig, train_storage: str, verbose: bool, results_uri: str) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = cfg.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker=_train_worker,
        train_loop_config={TRIAL_KEY: cfg.to_json(), "verbose": verbose, "results_uri": results_uri},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if gpu else {})},
        ),
        run_config=RunConfig(
            name=cfg.trial_id,  # stable: a restarted trial finds this run's checkpoints
            storage_path=train_storage,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=0),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _train_worker(loop_config: dict) -> None:
    """Body of every Ray Train worker of a multi-worker trial."""
    import ray
    import ray.train

    from experiments.train_loop import set_distributed_env

    cfg = TrialConfig.from_json(loop_config[TRIAL_KEY])
    _quiet_worker(loop_config["verbose"], cfg)
    ctx = ray.train.get_context()
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    set_distributed_env(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(),
                        ctx.get_local_world_size(), master, int(os.environ.get("MASTER_PORT", 29500)))
    _train(cfg, ray.train, loop_config["results_uri"], ctx.get_world_rank(), ctx.get_world_size(), _node_id(ray))


def _train(cfg: TrialConfig, api, results_uri: str, rank: int, world: int, node_id: str) -> None:
    """The training loop, reporting through ``api`` (``ray.tune`` in a one-worker trial,
    ``ray.train`` in each worker of a multi-worker one), from the start or from the checkpoint
    that ``api`` holds for a restarted trial."""
    from experiments.train_loop import run_worker

    def report(result, checkpoint_dir: str | None) -> None:
        ckpt = api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        api.report(result.to_tune(), checkpoint=ckpt)

    restore = api.get_checkpoint()
    if restore is None:
        run_worker(cfg, worker_context(cfg, results_uri, rank, world, report, None, node_id))
        return
    with restore.as_directory() as path:
        run_worker(cfg, worker_context(cfg, results_uri, rank, world, report, path, node_id))


def _quiet_worker(verbose: bool, cfg: TrialConfig) -> None:
    """DeepSpeed's CPU accelerator without a GPU; and, unless ``verbose``, the libraries'
    INFO logging off (their warnings stay on: each known, harmless one is filtered by name in
    ``cluster.runtime.quiet_known_warnings``)."""
    from cluster.runtime import quiet_known_warnings

    if cfg.gpus_per_worker == 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    quiet_known_warnings()
    if verbose:
        return
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    import deepspeed  # its logger is (re)configured at import: quiet it afterwards

    deepspeed.utils.logger.setLevel(logging.ERROR)
    for name in ("torch.distributed", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_id(ray) -> str:
    return ray.get_runtime_context().get_node_id()
