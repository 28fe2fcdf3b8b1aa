"""Experiment tracking (cluster.tracking, cluster.trackers), against the real things: an
``mlflow server`` started here on 127.0.0.1 with an sqlite store and read back with MLflow's
client, TensorBoard event files read with TensorBoard's own reader, W&B offline run files
parsed record by record. No tracker is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.errors import UserError
from analysis.records import EVALS, LOSS, TRIALS, Status
from cluster.tracking import Tracker, mlflow_target, resolve, with_flags
from experiments.spec import MLflowSpec, TrackingSpec, WandbSpec
from tests.conftest import MINIMAL_SPEC, free_port, serve

BIN = Path(sys.executable).parent


# --- flags, defaults, the spec block ------------------------------------------------------

def test_tracking_flags_turn_trackers_on_over_the_spec_block():
    spec = TrackingSpec(mlflow=MLflowSpec(uri="sqlite:////tmp/a.db", experiment="mine"))
    out = with_flags(spec, ["mlflow=http://127.0.0.1:5000", "tensorboard", "wandb=proj"])
    assert out.mlflow == MLflowSpec(uri="http://127.0.0.1:5000", experiment="mine")  # experiment kept
    assert out.tensorboard is not None and out.tensorboard.dir is None
    assert out.wandb == WandbSpec(project="proj")
    assert with_flags(spec, ["mlflow"]).mlflow == spec.mlflow  # a bare KIND keeps the spec's value
    with pytest.raises(UserError, match=r"unknown tracker 'neptune'.*\['mlflow', 'tensorboard', 'wandb'\]"):
        with_flags(spec, ["neptune=x"])
    assert Tracker.values() == ["mlflow", "tensorboard", "wandb"]


def test_defaults_live_under_the_results_store(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    on = with_flags(TrackingSpec(), ["mlflow", "tensorboard", "wandb"])
    targets = resolve(on, "tiny", str(tmp_path / "out"))
    assert targets.mlflow.uri == f"sqlite:///{tmp_path / 'out' / 'mlflow' / 'mlflow.db'}"
    assert targets.mlflow.artifacts == str(tmp_path / "out" / "mlflow" / "artifacts")
    assert targets.mlflow.experiment == "tiny" and targets.tensorboard == tmp_path / "out" / "tensorboard"
    assert targets.wandb.project == "from-env" and targets.wandb.mode == "online"
    with pytest.raises(UserError, match="no default with object-store results"):
        resolve(on, "tiny", "s3://bucket/sweeps/tiny")
    # a server keeps its own artifact store; a folder becomes an sqlite store inside it
    assert mlflow_target("http://host:5000", "x").artifacts is None
    assert mlflow_target(str(tmp_path / "m"), "x").uri == f"sqlite:///{tmp_path / 'm' / 'mlflow.db'}"


def test_the_spec_block_is_typed_and_its_errors_name_the_line(write_spec):
    from experiments.spec import load_spec

    spec, _ = load_spec(write_spec(MINIMAL_SPEC + "tracking:\n  wandb: {mode: offline, project: p}\n  mlflow: {}\n"))
    assert spec.tracking.wandb == WandbSpec(mode="offline", project="p")
    assert spec.tracking.mlflow == MLflowSpec() and spec.tracking.tensorboard is None
    with pytest.raises(UserError, match=r"bad.yaml:11: tracking.wandb.*\['online', 'offline'\], got 'sometimes'"):
        load_spec(write_spec(MINIMAL_SPEC + "tracking:\n  wandb: {mode: sometimes}\n", name="bad.yaml"))


def test_an_unreachable_tracker_is_exit_2_before_anything_runs(scalinglab, write_spec, tmp_path, monkeypatch):
    spec, out = write_spec(MINIMAL_SPEC), tmp_path / "out"
    started = time.monotonic()
    code, _, err = scalinglab("sweep", spec, "--storage", out, "--tracking", f"mlflow=http://127.0.0.1:{free_port()}")
    assert code == 2 and "tracking.mlflow: cannot reach the MLflow tracking store http://127.0.0.1:" in err, err
    assert time.monotonic() - started < 60 and not (out / "plan.json").exists()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    code, _, err = scalinglab("sweep", spec, "--storage", out, "--tracking", "wandb=p")
    assert code == 2 and "tracking.wandb: cannot reach W&B at http://127.0.0.1:" in err and "offline" in err, err
    assert not (out / "plan.json").exists()
    code, _, err = scalinglab("submit", spec, "--address", "http://127.0.0.1:9", "--storage", out,
                              "--tracking", "tensorboard=relative/tb")
    assert code == 2 and "tracking.tensorboard dir 'relative/tb' is relative" in err, err


# --- a real sweep logged to all three ------------------------------------------------------

@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with an sqlite store; stopped (by its PID) afterwards."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = serve([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "server-artifacts")],
                   f"{uri}/health", tmp_path / "server.log", cwd=tmp_path)
    yield uri
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def wandb_records(path: Path):
    """The records of a W&B run file (``run-ID.wandb``): a 7-byte W&B header, then LevelDB's
    log format (32 KiB blocks; each chunk a 7-byte header: CRC, length, type), each record a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_runs(folder: Path) -> dict[str, list[dict]]:
    """Each offline run folder's run id, history rows and exit code, by display name."""
    runs: dict[str, list[dict]] = {}
    for run_file in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        seen = {"history": [], "summary": {}}
        for r in wandb_records(run_file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                seen.update(id=r.run.run_id, group=r.run.run_group,
                            config={i.key: json.loads(i.value_json) for i in r.run.config.update})
                name = r.run.display_name
            elif kind == "history":
                seen["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                        for i in r.history.item})
            elif kind == "summary":
                seen["summary"].update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
            elif kind == "exit":
                seen["exit_code"] = r.exit.exit_code
        runs.setdefault(name, []).append(seen)
    return runs


@pytest.mark.slow
@pytest.mark.ray
def test_a_sweep_logs_every_trial_to_mlflow_tensorboard_and_wandb(mlflow_server, scalinglab, write_spec, tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from analysis.report import fit_and_report
    from cluster.cli import _finish_trackers
    from cluster.sweep import run_sweep
    from cluster.trial import TestHooks

    spec = write_spec(MINIMAL_SPEC + "tracking:\n  wandb: {mode: offline, project: tiny-test}\n")
    out, tb = tmp_path / "out", tmp_path / "tb"
    flags = [f"mlflow={mlflow_server}", f"tensorboard={tb}"]
    bad = "tfm-n12.8k-d8.19k-s0"
    outcome = run_sweep(str(spec), storage=str(out), tracking=flags, hooks=TestHooks(fail=(bad,)))
    fit_and_report(outcome.storage, refit=True, save_fits=True, bootstrap=20, log=lambda m: None)
    _finish_trackers(outcome)
    trials = outcome.trials.set_index(TRIALS.trial_id)
    evals = outcome.evals
    assert trials.loc[bad, TRIALS.status] == Status.FAILED and (trials[TRIALS.status] == Status.COMPLETED).sum() == 3

    # MLflow: a parent run for the sweep, one nested run per trial with its parameters and metrics
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "scalinglab.trial_id" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "scalinglab.trial_id" in r.data.tags}
    assert len(parent) == 1 and parent[0].info.status == "FAILED"  # a trial failed: the sweep did not fully succeed
    assert sorted(children) == sorted(trials.index)
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in children.values())
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"spec.yaml", "fits.json", "report.html"} <= artifacts, artifacts
    for tid, run in children.items():
        row = trials.loc[tid]
        for column in (TRIALS.n_params, TRIALS.data_units, TRIALS.zero_stage, TRIALS.seed):
            assert run.data.params[column] == str(row[column])
        for column in (TRIALS.family, TRIALS.data_unit, TRIALS.schedule, TRIALS.role, TRIALS.precision):
            assert run.data.params[column] == row[column]
        assert float(run.data.params[TRIALS.lr]) == row[TRIALS.lr] and "shape_d_model" in run.data.params
        assert run.data.tags["scalinglab.status"] == row[TRIALS.status]
        if tid == bad:
            assert run.info.status == "FAILED" and "injected failure" in run.data.tags["scalinglab.error"]
            continue
        assert run.info.status == "FINISHED"
        mine = evals[(evals[EVALS.trial_id] == tid) & (evals[EVALS.metric] == LOSS)].sort_values(EVALS.data_units)
        history = sorted(client.get_metric_history(run.info.run_id, LOSS), key=lambda m: m.step)
        assert [m.step for m in history] == mine[EVALS.data_units].tolist()
        assert [m.value for m in history] == pytest.approx(mine[EVALS.value].tolist(), rel=1e-12)
        flops = sorted(client.get_metric_history(run.info.run_id, EVALS.flops), key=lambda m: m.step)
        assert [m.value for m in flops] == pytest.approx(mine[EVALS.flops].tolist(), rel=1e-12)

    # TensorBoard: one folder per trial, the loss against tokens, and the hparams
    for tid in trials.index.drop(bad):
        events = EventAccumulator(str(tb / "tiny" / tid)).Reload()
        mine = evals[(evals[EVALS.trial_id] == tid) & (evals[EVALS.metric] == LOSS)].sort_values(EVALS.data_units)
        scalars = events.Scalars(LOSS)
        assert [s.step for s in scalars] == mine[EVALS.data_units].tolist()
        assert [s.value for s in scalars] == pytest.approx(mine[EVALS.value].tolist(), rel=1e-6)
        assert f"by_gflop/{LOSS}" in events.Tags()["scalars"] and events.Tags()["tensors"]  # hparams, status text
    assert (tb / "tiny" / "sweep").is_dir()

    # W&B offline: one run per trial in the sweep's group, its points, the trial's exit code
    runs_wb = wandb_runs(out)
    assert sorted(k for k in runs_wb if k in trials.index) == sorted(trials.index)
    for tid in trials.index:
        (run,) = runs_wb[tid]
        assert run["group"] == "tiny" and run["config"][TRIALS.n_params] == trials.loc[tid, TRIALS.n_params]
        assert run["exit_code"] == (1 if tid == bad else 0) and run["summary"]["scalinglab.status"] == trials.loc[tid, TRIALS.status]
        if tid != bad:
            losses = [h[LOSS] for h in run["history"] if LOSS in h]
            mine = evals[(evals[EVALS.trial_id] == tid) & (evals[EVALS.metric] == LOSS)].sort_values(EVALS.data_units)
            assert losses == pytest.approx(mine[EVALS.value].tolist(), rel=1e-12)
            assert [h["tokens"] for h in run["history"] if LOSS in h] == mine[EVALS.data_units].tolist()
    assert "tiny (sweep)" in runs_wb
    ids = {tid: runs_wb[tid][0]["id"] for tid in trials.index}

    # Resume (the CLI): only the failed trial runs again, into the same runs; nothing duplicated
    history_before = {tid: len(client.get_metric_history(children[tid].info.run_id, LOSS)) for tid in children}
    code, stdout, err = scalinglab("sweep", spec, "--storage", out, "--resume", "--retry-failed", "--no-report",
                                   "--no-fit", *sum((["--tracking", f] for f in flags), []))
    assert code == 0, err[-3000:]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(trials) + 1  # no new runs
    again = {r.info.run_name: r for r in runs if "scalinglab.trial_id" in r.data.tags}
    assert again[bad].info.status == "FINISHED" and again[bad].info.run_id == children[bad].info.run_id
    assert len(client.get_metric_history(again[bad].info.run_id, LOSS)) == 3  # evaluation points: 3
    for tid in trials.index.drop(bad):
        assert len(client.get_metric_history(again[tid].info.run_id, LOSS)) == history_before[tid]
    runs_wb = wandb_runs(out)
    assert len(runs_wb[bad]) == 2 and {r["id"] for r in runs_wb[bad]} == {ids[bad]}  # the same W&B run resumed
    assert runs_wb[bad][-1]["exit_code"] == 0
    assert all(len(runs_wb[tid]) == 1 for tid in trials.index.drop(bad))
    print(f"tracked sweep: MLflow {len(runs)} runs, W&B {sum(len(v) for v in runs_wb.values())} run folders")


def test_the_tracking_extra_is_what_install_sh_installs():
    """The README's set-up installs the trackers' clients (no step by hand)."""
    import tomllib

    from cluster import tracking

    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].strip() for req in extras["tracking"]}
    assert {"mlflow", "tensorboard", "wandb"} <= names
    install = (Path(__file__).parents[2] / "cluster" / "install.sh").read_text()
    assert 'extras="[tracking]"' in install and 'extras="[tracking,dev]"' in install
    assert tracking.SPEC_TYPES.keys() == set(Tracker)
    assert os.access(BIN / "mlflow", os.X_OK)


def test_a_tracker_that_fails_mid_sweep_warns_once_and_does_not_stop_it(tmp_path, capsys):
    from cluster.trackers import TensorBoardTracker

    tracker = TensorBoardTracker(tmp_path / "tb")
    tracker.begin(None, str(tmp_path), "s", "name: s\n")
    assert (tmp_path / "tb" / "s" / "sweep").is_dir()  # the spec, written at the start
    for _ in range(3):  # not a Tune trial: each hook fails inside the tracker
        tracker.on_trial_start(iteration=0, trials=[], trial=object())
    err = capsys.readouterr().err
    assert err.count("warning: tracking: TensorBoardTracker stopped logging some results") == 1, err
