"""Ray itself: an embedded local Ray sized to this machine, or an existing cluster.

``--address`` takes what ``ray.init`` takes: ``ray://HOST:10001`` (Ray Client), ``HOST:6379``
or ``auto``. On a cluster, scalinglab's four packages travel to every worker as Ray
``py_modules``, taken from wherever they are imported from: a checkout or an installed wheel
alike, and nothing else of the machine (no results folder, no virtualenv).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGES = ("cluster", "experiments", "models", "analysis")

# Environment that every Ray process (workers included) starts with.
WORKER_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # faster TorchTrainer teardown
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0, Tune then prints nothing of its own
    # Tune snapshots its experiment state (which names each trial's latest checkpoint) at the end
    # of every step, not every >= 10 s: with a trial checkpointing more often than that, a driver
    # killed between snapshots left a state naming a checkpoint already rotated away
    # (num_to_keep in cluster.sweep), and --resume failed on it. Read by the driver's TuneController.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
}

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a submitted job's driver

# Warnings we know and leave out of a sweep's output, each by its text and category (seen in
# workers with --verbose on torch 2.13 and DeepSpeed 0.19.8: ZeRO-2's gather calls a torch API
# that torch deprecates); everything else is shown, nothing is silenced wholesale.
KNOWN_WARNINGS = [
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning),
    # MLflow 3.17's sqlite store configures SQLAlchemy 2.1 mappers with a deprecated loader option
    (r"The ``noload`` loader strategy is deprecated", DeprecationWarning),
]


def quiet_known_warnings() -> None:
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def package_dirs() -> list[str]:
    """The folders of scalinglab's packages, wherever they are imported from (a checkout or
    an installed wheel): what Ray's ``py_modules`` ships, each as the package of its name."""
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in PACKAGES]


def runtime_env(extra_env: dict[str, str] | None = None) -> dict:
    """The runtime environment of a cluster's jobs and workers: our packages and env."""
    return {"py_modules": package_dirs(), "env_vars": {**WORKER_ENV, **(extra_env or {})},
            "excludes": ["__pycache__"]}


def start_ray(address: str | None, *, verbose: bool = False, num_cpus: int | None = None) -> bool:
    """Start (or connect to) Ray. Returns whether this call started it (and so should stop it:
    a caller that finds Ray already running, as the test suite's shared one, leaves it be)."""
    import ray

    _set_worker_env()
    if ray.is_initialized():
        return False
    kwargs: dict = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "configure_logging": True,
    }
    if address and os.environ.get(JOB_CONFIG_ENV):
        # Inside a submitted Ray Job: the job already carries our packages and the
        # environment (cluster.jobs); a runtime_env here would replace the job's.
        ray.init(address=address, **kwargs)
    elif address:
        ray.init(address=address, runtime_env=runtime_env(), **kwargs)
    else:
        # An embedded cluster for this process only: no dashboard (memory), no auth token.
        # Its workers import our packages from where this process does.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 runtime_env={"env_vars": dict(WORKER_ENV)}, **kwargs)
    return True


def _set_worker_env() -> None:
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


# The thread that ran ray.init must outlive the connection: once it had exited, the driver's
# next GCS call (ray.cluster_resources) hung and Ray aborted the process after 60 s (Ray 2.x).
# An idle pool thread does, for as long as this module is loaded.
_RAY_THREAD = ThreadPoolExecutor(1, thread_name_prefix="ray-start")


class RayStart:
    """``start_ray`` on a thread. ``ray.init`` takes ~5 s on a 2-core laptop, most of it waiting
    for Ray's own processes (GCS, raylet, API server) to come up; a command's imports and
    planning (~3 s) run meanwhile. ``wait()`` gives ``start_ray``'s answer (or raises its error);
    a command that fails before using Ray calls ``abandon()`` (``abandoned_on_error``)."""

    def __init__(self, address: str | None, *, verbose: bool = False) -> None:
        _set_worker_env()  # before any import of Ray Tune on the main thread reads it
        # ray.init makes SIGTERM exit through Python (finally blocks run) only from the main thread
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        self._started = _RAY_THREAD.submit(start_ray, address, verbose=verbose)

    def wait(self) -> bool:
        return self._started.result()

    def abandon(self) -> None:
        try:
            owns = self.wait()
        except Exception:  # it never started: nothing to stop
            return
        if owns:
            stop_ray()


@contextlib.contextmanager
def abandoned_on_error(ray_start: RayStart | None):
    """Work done while Ray starts: if it raises (a bad spec, Ctrl-C), Ray is stopped again."""
    try:
        yield
    except BaseException:
        if ray_start:
            ray_start.abandon()
        raise


def cluster_resources() -> dict:
    import ray

    return ray.cluster_resources()


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
