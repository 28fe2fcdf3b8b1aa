"""The trial driver: what one Ray Tune trial runs.

- ``workers == 1``: the DeepSpeed engine runs (world size 1, its own gloo/NCCL group)
  directly inside the Tune trial, which holds the worker's CPUs and GPUs. A TorchTrainer
  costs ~25 s and ~3 GB per trial on a 2-core machine (NOTES-ray-deepspeed.md).
- ``workers > 1``: the trial holds almost nothing and launches a Ray Train ``TorchTrainer``
  whose workers carry the resources; each worker runs the same loop on its data shard, and
  rank 0's metrics reach Tune through ``TuneReportCallback``.

Checkpoints: single-worker trials checkpoint through Tune, multi-worker ones through Train
under a run name derived from the trial id, so a restarted trial (``--resume``) finds its
latest checkpoint either way and continues from it.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from contextlib import closing

from experiments.planner import TrialConfig

TRIAL_KEY = "trial"  # the Tune config key that holds the TrialConfig as JSON
# Fault injection for testing failure handling on a real cluster: trials whose id contains
# one of these comma-separated strings raise at start (README, "Failures and resume").
FAULT_ENV = "SCALINGLAB_INJECT_FAILURE"


def resources_for(config: dict):
    """Ray resources of the Tune trial itself (see module docstring)."""
    from ray import tune

    cfg = TrialConfig.from_json(config[TRIAL_KEY])
    if cfg.workers == 1:
        return tune.PlacementGroupFactory(
            [{"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}]
        )
    return tune.PlacementGroupFactory([{"CPU": 0.01}])


def run_trial(config: dict, train_storage: str = "", verbose: bool = False,
              finished: dict | None = None, results_uri: str = "") -> None:
    """The Tune function trainable. ``finished`` maps trial ids already finished (in the
    results table) to their final metrics, which are replayed instead of training again.
    Sample grids go to ``results_uri``/samples/<trial id>/ (nowhere when it is empty)."""
    cfg = TrialConfig.from_json(config[TRIAL_KEY])
    if finished and cfg.trial_id in finished:
        from ray import tune

        tune.report(dict(finished[cfg.trial_id], replayed=True))
        return
    faults = [f for f in os.environ.get(FAULT_ENV, "").split(",") if f]
    if any(f in cfg.trial_id for f in faults):
        raise RuntimeError(f"injected failure ({FAULT_ENV}) in trial {cfg.trial_id}")
    _quiet_worker(verbose, cfg)
    if cfg.workers == 1:
        _run_in_process(cfg, results_uri)
    else:
        _run_torch_trainer(cfg, train_storage, verbose, results_uri)


def artifact_saver(results_uri: str, trial_id: str):
    """``save(name, data)`` writing into the results store's ``samples/<trial_id>/``."""
    if not results_uri:
        return None
    from cluster.results import ResultsStore

    store = ResultsStore(results_uri)

    def save(name: str, data: bytes) -> None:
        store.fs.create_dir(store.path(f"samples/{trial_id}"), recursive=True)
        store.write_bytes(f"samples/{trial_id}/{name}", data)

    return save


def branch_points(results_uri: str, cfg: TrialConfig):
    """Where a wsd trunk saves, and its branches find, the branch-point checkpoints."""
    if not results_uri or cfg.role not in ("trunk", "branch"):
        return None
    from cluster.results import BranchCheckpoints

    return BranchCheckpoints(results_uri)


def _run_in_process(cfg: TrialConfig, results_uri: str) -> None:
    import ray
    import torch
    from ray import tune

    from experiments.train_loop import WorkerContext, disable_jit_comm_op, run_worker, set_distributed_env

    set_distributed_env(0, 1, 0, 1, "127.0.0.1", _free_port())
    import deepspeed

    disable_jit_comm_op()
    deepspeed.init_distributed(dist_backend="nccl" if cfg.gpus_per_worker > 0 else "gloo")
    restore = tune.get_checkpoint()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)

    try:
        save, points = artifact_saver(results_uri, cfg.trial_id), branch_points(results_uri, cfg)
        if restore is None:
            run_worker(cfg, WorkerContext(0, 1, report, None, _node_id(ray), save, points))
        else:
            with restore.as_directory() as path:
                run_worker(cfg, WorkerContext(0, 1, report, path, _node_id(ray), save, points))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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

    from experiments.train_loop import WorkerContext, run_worker, set_distributed_env

    cfg = TrialConfig.from_json(loop_config[TRIAL_KEY])
    _quiet_worker(loop_config["verbose"], cfg)
    ctx = ray.train.get_context()
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    set_distributed_env(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(),
                        ctx.get_local_world_size(), master, int(os.environ.get("MASTER_PORT", 29500)))

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    restore = ray.train.get_checkpoint()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    uri = loop_config.get("results_uri", "")
    save = artifact_saver(uri, cfg.trial_id) if rank == 0 else None
    points = branch_points(uri, cfg)
    if restore is None:
        run_worker(cfg, WorkerContext(rank, world, report, None, _node_id(ray), save, points))
    else:
        with restore.as_directory() as path:
            run_worker(cfg, WorkerContext(rank, world, report, path, _node_id(ray), save, points))


def _quiet_worker(verbose: bool, cfg: TrialConfig) -> None:
    if cfg.gpus_per_worker == 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if verbose:
        return
    warnings.filterwarnings("ignore")
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
