"""Experiment trackers of a sweep: which are on, where each logs, and whether it can be reached.

A sweep logs to the trackers its spec's ``tracking`` block names, with ``--tracking
KIND[=VALUE]`` flags applied on top (``with_flags``). ``targets`` resolves each one's defaults
against the results store and checks it can be reached (a ``UserError``, exit 2, before anything
runs); ``cluster.trackers`` holds the Ray Tune callbacks that log. What is logged, and where, is
in docs/tracking.md.

Everything here runs on the driver: the trackers log from the driver's process (W&B's from Ray
actors pinned to the driver's node), so trials on other nodes never talk to a tracker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from analysis.errors import UserError
from analysis.records import Closed
from cluster.storage_check import local_path
from experiments.spec import MLflowSpec, TensorBoardSpec, TrackingSpec, WandbSpec


class Tracker(Closed):
    """A tracker a sweep can log to (``--tracking KIND[=VALUE]``, a key of ``tracking``)."""

    def __new__(cls, value: str, flag_field: str, meaning: str) -> "Tracker":
        member = str.__new__(cls, value)
        member._value_, member.flag_field, member.meaning = value, flag_field, meaning
        return member

    MLFLOW = "mlflow", "uri", "MLflow: VALUE is a folder, file://…, sqlite:///… or a server's http(s)://…"
    TENSORBOARD = "tensorboard", "dir", "TensorBoard: VALUE is the event files' folder"
    WANDB = "wandb", "project", "Weights & Biases: VALUE is the project"


SPEC_TYPES = {Tracker.MLFLOW: MLflowSpec, Tracker.TENSORBOARD: TensorBoardSpec, Tracker.WANDB: WandbSpec}
SQLITE = "sqlite:///"  # MLflow's sqlite store URI: SQLITE + a path (absolute when it starts with /)
CHECK_TIMEOUT_S = 10.0  # a tracker that does not answer within this is unreachable


def with_flags(tracking: TrackingSpec, flags: Sequence[str]) -> TrackingSpec:
    """The spec's tracking block with each ``--tracking KIND[=VALUE]`` turned on; VALUE sets
    the tracker's ``flag_field`` and its other fields stay as the spec has them."""
    for flag in flags:
        kind, _, value = flag.partition("=")
        try:
            tracker = Tracker(kind.strip())
        except ValueError:
            raise UserError(f"--tracking {flag}: unknown tracker {kind.strip()!r}; expected KIND or KIND=VALUE with "
                            f"KIND one of {Tracker.values()}") from None
        current = getattr(tracking, tracker.value) or SPEC_TYPES[tracker]()
        if value.strip():
            current = dataclasses.replace(current, **{tracker.flag_field: value.strip()})
        tracking = dataclasses.replace(tracking, **{tracker.value: current})
    return tracking


@dataclass(frozen=True)
class MLflowTarget:
    uri: str  # what MlflowClient is given
    artifacts: str | None  # an experiment's artifact location, when we choose it (local stores)
    experiment: str
    folder: Path | None  # the local folder it writes, if any


@dataclass(frozen=True)
class Targets:
    """Where each tracker that is on logs, with its defaults resolved."""

    mlflow: MLflowTarget | None
    tensorboard: Path | None
    wandb: WandbSpec | None  # project, entity, mode and dir all set

    @property
    def any(self) -> bool:
        return bool(self.mlflow or self.tensorboard or self.wandb)

    def local_folders(self) -> list[tuple[str, Path]]:
        """(what, folder) of every tracker that writes local files."""
        found = [("tracking.mlflow", self.mlflow.folder) if self.mlflow and self.mlflow.folder else None,
                 ("tracking.tensorboard", self.tensorboard) if self.tensorboard else None,
                 ("tracking.wandb dir", Path(self.wandb.dir)) if self.wandb else None]
        return [f for f in found if f]


def targets(tracking: TrackingSpec, flags: Sequence[str], sweep: str, storage: str, *,
            folders: bool = True) -> Targets:
    """The trackers a sweep logs to (its spec's block with ``flags`` applied), resolved and
    checked; raises UserError before anything runs when one cannot be reached. ``folders``
    False checks only trackers over the network (``submit``, whose folders are on the cluster)."""
    resolved = resolve(with_flags(tracking, flags), sweep, storage)
    check_reachable(resolved, folders=folders)
    return resolved


def refuse_relative(tracking: TrackingSpec, flags: Sequence[str]) -> None:
    """A submitted sweep runs in a temporary folder on the cluster: a relative tracking folder
    would land there (as a relative storage path would)."""
    tracking = with_flags(tracking, flags)
    given = {"tracking.mlflow uri": tracking.mlflow and tracking.mlflow.uri,
             "tracking.tensorboard dir": tracking.tensorboard and tracking.tensorboard.dir,
             "tracking.wandb dir": tracking.wandb and tracking.wandb.dir}
    for what, value in given.items():
        path = local_path(value.removeprefix(SQLITE)) if value else None
        if path is not None and not path.expanduser().is_absolute():
            raise UserError(f"submit: {what} {value!r} is relative; on the cluster it would land in the job's "
                            "temporary working directory. Give an absolute path on a shared filesystem or a "
                            "server's URI")


def resolve(tracking: TrackingSpec, sweep: str, storage: str) -> Targets:
    """Each tracker's defaults (folders under the results store, the sweep's name); a default
    that would need a local results store when the store is an object store is an error."""
    store = local_path(storage)

    def under_store(name: str, what: str) -> Path:
        if store is None:
            raise UserError(f"tracking: {what} has no default with object-store results ({storage}); give it "
                            "explicitly (the spec's tracking block, or --tracking KIND=VALUE)")
        return (store / name).resolve()

    mlflow = None
    if tracking.mlflow:
        uri = tracking.mlflow.uri or str(under_store("mlflow", "mlflow's uri"))
        mlflow = mlflow_target(uri, tracking.mlflow.experiment or sweep)
    tensorboard = Path(tracking.tensorboard.dir or under_store("tensorboard", "tensorboard's dir")).resolve() \
        if tracking.tensorboard else None
    wandb = None
    if tracking.wandb:
        w = tracking.wandb
        mode = w.mode or os.environ.get("WANDB_MODE") or "online"
        if mode not in ("online", "offline"):
            raise UserError(f"tracking.wandb: mode (or WANDB_MODE) {mode!r} is not one of ['online', 'offline']")
        folder = Path(w.dir).resolve() if w.dir else under_store(".", "wandb's dir")  # W&B adds wandb/
        wandb = WandbSpec(project=w.project or os.environ.get("WANDB_PROJECT") or sweep,
                          entity=w.entity or os.environ.get("WANDB_ENTITY"), mode=mode, dir=str(folder))
    return Targets(mlflow, tensorboard, wandb)


def mlflow_target(uri: str, experiment: str) -> MLflowTarget:
    """A folder or ``file://`` URI becomes an sqlite store ``mlflow.db`` in that folder, with
    artifacts beside it (MLflow's file store is in maintenance mode and refuses to open);
    an ``sqlite:///`` file keeps its artifacts in ``mlartifacts`` beside it; a server's
    ``http(s)://`` and other databases keep MLflow's own artifact location."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return MLflowTarget(uri, None, experiment, None)
    if scheme == "sqlite":
        db = Path(uri.removeprefix(SQLITE))
        if not db.is_absolute():
            db = db.resolve()
        return MLflowTarget(f"{SQLITE}{db}", str(db.parent / "mlartifacts"), experiment, db.parent)
    folder = local_path(uri)
    if folder is None:
        return MLflowTarget(uri, None, experiment, None)  # postgresql://, databricks, …: MLflow's own
    folder = folder.expanduser().resolve()
    return MLflowTarget(f"{SQLITE}{folder / 'mlflow.db'}", str(folder / "artifacts"), experiment, folder)


def check_reachable(targets: Targets, folders: bool = True) -> None:
    """Raise UserError naming the tracker and what to do when one cannot be reached or
    written; creates local folders and MLflow's experiment on the way."""
    for what, folder in targets.local_folders() if folders else []:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".scalinglab-write-check"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"{what}: cannot write to {folder}: {exc}") from None
    if targets.mlflow and (folders or targets.mlflow.folder is None):
        _check_mlflow(targets.mlflow)
    if targets.wandb and targets.wandb.mode == "online":
        _check_wandb_online()


def _check_mlflow(target: MLflowTarget) -> None:
    from mlflow import MlflowClient

    from cluster.runtime import quiet_known_warnings

    quiet_known_warnings()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines about creating tables
    with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(CHECK_TIMEOUT_S))):
        try:
            client = MlflowClient(target.uri)
            if client.get_experiment_by_name(target.experiment) is None:
                client.create_experiment(target.experiment, artifact_location=target.artifacts)
        except Exception as exc:  # any failure to talk to the store: connection, auth, a bad URI
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"tracking.mlflow: cannot reach the MLflow tracking store {target.uri} ({first}); "
                            "start the server, or fix the spec's tracking.mlflow.uri / --tracking mlflow=URI") from None


def _check_wandb_online() -> None:
    import wandb

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        with contextlib.suppress(Exception):
            key = wandb.Api(timeout=int(CHECK_TIMEOUT_S)).api_key  # a `wandb login` on this machine
    if not key:
        raise UserError("tracking.wandb: online mode needs an API key (`wandb login`, or WANDB_API_KEY); or log "
                        "offline (tracking.wandb.mode: offline, or WANDB_MODE=offline) and `wandb sync` later")
    url = urlparse(base)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CHECK_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"tracking.wandb: cannot reach W&B at {base} ({exc}); check the network or "
                        "WANDB_BASE_URL, or log offline (mode: offline) and `wandb sync` later") from None


@contextlib.contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
