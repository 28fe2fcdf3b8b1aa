"""Sweeps as Ray Jobs: ``scalinglab submit`` and ``scalinglab jobs status|logs|stop``.

A submitted sweep is the ordinary ``scalinglab sweep SPEC --address auto`` run as the job's
entrypoint on the cluster's head node, with scalinglab's packages shipped as the job's
``py_modules`` (``cluster.runtime.runtime_env``) and the spec's text in an environment
variable of the job. Everything is checked on the laptop first (the spec, its plan and the
storage), so a bad spec never becomes a job.

Storage must outlive the job and be visible from every node: an object-store URI
(``s3://…``, ``gs://…``) or an absolute path on a filesystem shared by all nodes. The
job's own working directory is neither, so a relative path is refused here, and the sweep
refuses a path that some node cannot see (``storage_check.check_shared``).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from analysis.errors import UserError
from cluster.runtime import runtime_env

SPEC_ENV = "SCALINGLAB_SPEC_TEXT"  # the submitted spec, as text
SPEC_FROM_ENV = f"env:{SPEC_ENV}"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
FINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except (OSError, RuntimeError, ValueError) as exc:  # ConnectionError, or a RuntimeError wrapping one
        raise UserError(f"--address {address}: cannot reach Ray's dashboard (the Jobs API, usually "
                        f"http://HEAD:8265): {exc}") from None


def submit(spec_path: str, *, address: str | None, storage: str | None, wait: bool = True,
           resume: bool = False, max_concurrent: int | None = None, verbose: bool = False,
           tracking: Sequence[str] = (), out=sys.stdout) -> int:
    """Validate locally, submit, print the job id; follow the logs unless ``wait`` is False.
    Returns 0 when the job succeeded (or was only submitted), 1 when it failed or stopped.
    Trackers (``tracking`` flags and the spec's block) are checked from here as well as on the
    cluster: a tracker this machine cannot reach is refused before anything is submitted."""
    from cluster.sweep import prepare
    from cluster.tracking import refuse_relative, targets

    spec, trials, _ = prepare(spec_path, storage)
    target = storage or spec.storage
    if not target:
        raise UserError("submit: a submitted sweep needs storage that outlives the job: give --storage "
                        "(or the spec's storage) as an object-store URI (s3://…, gs://…) or an absolute "
                        "path on a filesystem every node mounts")
    if "://" not in target and not Path(target).expanduser().is_absolute():
        raise UserError(f"submit: storage {target!r} is relative; on the cluster it would land in the job's "
                        "temporary working directory. Give an absolute path on a shared filesystem or a URI")
    args = ["python", "-m", "cluster.cli", "sweep", SPEC_FROM_ENV, "--address", "auto", "--storage", target]
    args += ["--resume"] if resume else []
    args += ["--max-concurrent", str(max_concurrent)] if max_concurrent else []
    args += ["--verbose"] if verbose else []
    for flag in tracking:
        args += ["--tracking", flag]
    _refuse_relative_data_paths(spec_path)
    refuse_relative(spec.tracking, tracking)
    targets(spec.tracking, tracking, spec.name, target, folders=False)
    env = runtime_env({SPEC_ENV: Path(spec_path).read_text()})
    jobs = client(address)
    job_id = _submit_when_ready(jobs, entrypoint=" ".join(shlex.quote(a) for a in args), runtime_env=env,
                                metadata={"scalinglab_sweep": spec.name})
    print(f"submitted sweep {spec.name} ({len(trials)} trials) as Ray job {job_id}; results -> {target}", file=out)
    if not wait:
        print(f"follow it with: scalinglab jobs logs {job_id} --follow", file=out)
        return 0
    return follow(jobs, job_id, out=out)


def _submit_when_ready(jobs, timeout_s: float = 90, **job) -> str:
    """Submit; a cluster that has just started answers "No available agent" for a few
    seconds until its job agent is up, so that answer is retried."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return jobs.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise UserError(f"submit: the cluster refused the job: {exc}") from None
            time.sleep(2)


def _refuse_relative_data_paths(spec_path: str) -> None:
    """A submitted spec travels as text: its data paths must mean the same on the cluster."""
    from experiments.yamlio import load_yaml

    data, located = load_yaml(spec_path)
    paths = ((data or {}).get("data") or {}).get("paths") or []
    for i, p in enumerate(paths if isinstance(paths, list) else [paths]):
        if not Path(str(p)).is_absolute():
            raise located.error(("data", "paths", i), f"{p} is relative; a submitted sweep reads its data on "
                                "the cluster: give an absolute path on a filesystem every node mounts")


def materialize_spec(arg: str) -> str:
    """Inside a job: a spec given as ``env:SCALINGLAB_SPEC_TEXT`` becomes a temporary file;
    any other argument is returned unchanged."""
    if arg != SPEC_FROM_ENV:
        return arg
    text = os.environ.get(SPEC_ENV)
    if text is None:
        raise UserError(f"{arg}: the environment has no {SPEC_ENV} (only submitted jobs set it)")
    import tempfile

    fd, path = tempfile.mkstemp(prefix="submitted-spec-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def follow(jobs, job_id: str, *, out=sys.stdout) -> int:
    """Print the job's logs as they come, then its final status; 0 if it succeeded."""

    async def tail():
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", file=out, flush=True)

    asyncio.run(tail())
    status = _wait_final(jobs, job_id)
    info = jobs.get_job_info(job_id)
    print(f"Ray job {job_id}: {status}" + (f" ({info.message})" if info.message and status != "SUCCEEDED" else ""),
          file=out)
    return 0 if status == "SUCCEEDED" else 1


def _wait_final(jobs, job_id: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    status = str(jobs.get_job_status(job_id).value)
    while status not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(jobs.get_job_status(job_id).value)
    return status


def jobs_command(action: str, job_id: str, *, address: str | None, follow_logs: bool = False,
                 out=sys.stdout) -> int:
    jobs = client(address)
    try:
        if action == "status":
            info = jobs.get_job_info(job_id)
            print(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""), file=out)
            return 0
        if action == "logs":
            if follow_logs:
                return follow(jobs, job_id, out=out)
            print(jobs.get_job_logs(job_id), end="", file=out)
            return 0
        if action == "stop":
            stopped = jobs.stop_job(job_id)
            print(f"{job_id}: {'stop requested' if stopped else 'already finished'}", file=out)
            return 0
    except RuntimeError as exc:  # the SDK's error for an unknown job id
        raise UserError(f"jobs {action} {job_id}: {exc}") from None
    raise UserError(f"jobs: unknown action {action!r}; expected status, logs or stop")
