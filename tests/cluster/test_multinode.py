"""A real two-node Ray cluster on this machine: a head (`ray start --head`, dashboard on
127.0.0.1) and a second node joined to it as separate processes, each with one CPU. A sweep
goes in through the Jobs API (`scalinglab submit`), its trials land on both nodes, and the
tables are complete. Every Ray process the test started is stopped by PID afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from analysis.records import EVALS, TRIALS, Status
from analysis.store import ResultsStore
from tests.cluster.test_sweep_e2e import _descendants
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]
BIN = Path(sys.executable).parent


MARK = "SCALINGLAB_TEST_CLUSTER"  # every process of a test cluster inherits it from `ray start`


def _env(mark: str = "") -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # the job's `python` is this venv's
    env.pop("RAY_ADDRESS", None)
    if mark:
        env[MARK] = mark
    return env


def _ray(*args: str, mark: str) -> None:
    run = subprocess.run([str(BIN / "ray"), *args], env=_env(mark), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def _stop_by_pid(mark: str) -> int:
    """SIGKILL every process that carries this cluster's mark in its environment: the
    processes `ray start` spawned, whatever they renamed themselves to (ray::DashboardAgent),
    and nothing else."""
    mine: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARK) == mark:
                # Agents start with a clean environment: take the whole tree of each
                # marked process while it still holds its children.
                for p in (proc, *proc.children(recursive=True)):
                    mine[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    mine = list(mine.values())
    for proc in mine:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=20)
    return len(mine)


def _agent_ports() -> list[str]:
    return [f"--{name}={free_port()}" for name in
            ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")]


@contextlib.contextmanager
def two_node_cluster(private_dir: Path | None = None):
    """A head and a second node. With ``private_dir``, the second node runs in its own mount
    namespace with an empty tmpfs over that folder: a node-local path, as on a real cluster
    (every other path is shared by the two)."""
    temp = tempfile.mkdtemp(prefix="sl-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard = free_port(), free_port()
    try:
        _ray("start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             "--include-dashboard=true", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp}",
             *_agent_ports(), "--disable-usage-stats", mark=temp)
        # Two nodes on one host: each needs its own agent ports (the defaults would collide)
        # and its own temp dir (a shared one lets one node's runtime-env GC delete the other's
        # working directory).
        second = ["start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp}/node2",
                  *_agent_ports(), "--disable-usage-stats"]
        if private_dir is None:
            _ray(*second, mark=temp)
        else:
            private_dir.mkdir(parents=True, exist_ok=True)
            command = (f"mount -t tmpfs tmpfs {shlex.quote(str(private_dir))} && exec "
                       + " ".join(shlex.quote(a) for a in [str(BIN / "ray"), *second]))
            run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                                 env=_env(temp), capture_output=True, text=True, timeout=180)
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        yield f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", temp
    finally:
        _stop_by_pid(temp)
        shutil.rmtree(temp, ignore_errors=True)


CAN_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """One two-node cluster for the module: (dashboard address, GCS address, a folder that only
    the head sees, or None where a private mount namespace cannot be made)."""
    private = tmp_path_factory.mktemp("node-local") / "local-to-each-node" if CAN_UNSHARE else None
    with two_node_cluster(private_dir=private) as (address, gcs, _):
        yield address, gcs, private


def test_submitted_sweep_runs_on_both_nodes(two_nodes, write_spec, tmp_path):
    address, gcs, _ = two_nodes
    # --dry-run against the live cluster: a worker of 2 CPUs fits no node (each has one)
    big = write_spec("name: big\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\nbudgets: {tokens: [8192]}\n"
                     "training: {batch_size: 4, seq_len: 32}\nresources: {cpus_per_worker: 2}\n", name="big.yaml")
    dry = subprocess.run([str(BIN / "scalinglab"), "sweep", str(big), "--dry-run", "--address", gcs],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert dry.returncode == 2 and "can never run on this cluster" in dry.stderr, dry.stderr[-2000:]
    assert dry.stdout.count(": 1 CPU, 0 GPU") == 2 and "CANNOT RUN" in dry.stdout
    spec = write_spec("""\
        name: multinode
        model:
          sizes:
            - {d_model: 16, n_layers: 1, n_heads: 1}
            - {d_model: 32, n_layers: 1, n_heads: 2}
        budgets: {tokens: [16384]}
        training: {batch_size: 4, seq_len: 32}
        evaluation: {validation_tokens: 1024, points: 2}
        """)
    out = tmp_path / "out"
    started = time.monotonic()
    # tracked from the driver on the head node, while the trials run on both nodes
    run = subprocess.run([str(BIN / "scalinglab"), "submit", str(spec), "--address", address, "--storage", str(out),
                          "--tracking", f"mlflow={tmp_path / 'mlflow'}", "--tracking", "tensorboard"],
                         env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert "submitted sweep multinode (2 trials) as Ray job raysubmit_" in run.stdout
    assert "2 trials: 2 completed" in run.stdout and "SUCCEEDED" in run.stdout
    trials = pd.read_parquet(out / TRIALS.file)
    assert (trials[TRIALS.status] == Status.COMPLETED).all() and trials[TRIALS.final_loss].notna().all()
    # one CPU per node and one CPU per trial: the two trials ran at once, one on each node
    assert trials[TRIALS.node_id].nunique() == 2, trials[[TRIALS.trial_id, TRIALS.node_id]]
    runs = json.loads((out / "run.json").read_text())["runs"]
    assert runs[0]["address"] == "auto" and runs[0]["resources"]["CPU"] == 2
    assert (out / "report.html").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    logged = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])
    assert sorted(r.info.run_name for r in logged if r.info.run_name != "multinode") == sorted(trials[TRIALS.trial_id])
    assert all(r.info.status == "FINISHED" for r in logged)
    assert sorted(p.name for p in (out / "tensorboard" / "multinode").iterdir()) == sorted([*trials[TRIALS.trial_id], "sweep"])
    print(f"two-node submitted sweep: {time.monotonic() - started:.1f} s")

    job_id = run.stdout.split("as Ray job ")[1].split(";")[0]
    status = subprocess.run([str(BIN / "scalinglab"), "jobs", "status", job_id, "--address", address],
                            env=_env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    logs = subprocess.run([str(BIN / "scalinglab"), "jobs", "logs", job_id, "--address", address],
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert "2 trials: 2 completed" in logs.stdout


def test_submit_refuses_a_bad_spec_relative_paths_and_no_dashboard_before_submitting(write_spec, tmp_path, capsys):
    from cluster.cli import main

    def submit(spec, storage) -> str:
        assert main(["submit", str(spec), "--address", "http://127.0.0.1:9", "--storage", str(storage)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        return err

    assert "at least one model size" in submit(write_spec("name: bad\nmodel: {sizes: []}\n"), "/shared/x")
    good = write_spec("name: ok\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\nbudgets: {tokens: [8192]}\n"
                      "training: {batch_size: 4, seq_len: 32}\n", name="ok.yaml")
    assert "relative" in submit(good, "relative/out")
    assert "cannot reach Ray's dashboard" in submit(good, tmp_path / "out")
    (tmp_path / "notes.txt").write_text("some text\n" * 100)
    files = write_spec("name: f\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\nbudgets: {tokens: [8192]}\n"
                       "data: {source: files, paths: [notes.txt]}\ntraining: {batch_size: 4, seq_len: 32}\n", name="f.yaml")
    assert "data.paths.0: notes.txt is relative" in submit(files, tmp_path / "out")


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare(1)")
def test_node_local_storage_is_refused_before_any_trial_runs(two_nodes, write_spec):
    _, gcs, private = two_nodes
    spec = write_spec("name: local\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\n"
                      "budgets: {tokens: [8192]}\ntraining: {batch_size: 4, seq_len: 32}\n")
    run = subprocess.run([str(BIN / "scalinglab"), "sweep", str(spec), "--address", gcs, "--storage",
                          str(private / "out")], env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert "is node-local: 1 of 2 Ray nodes cannot see it" in run.stderr and "s3://" in run.stderr
    assert not (private / "out" / "plan.json").exists() and not (private / "out" / "trials.parquet").exists()


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare(1)")
def test_a_node_local_tracking_folder_is_refused_before_any_trial_runs(two_nodes, write_spec, tmp_path):
    _, gcs, private = two_nodes
    spec = write_spec("name: local\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\n"
                      "budgets: {tokens: [8192]}\ntraining: {batch_size: 4, seq_len: 32}\n")
    run = subprocess.run([str(BIN / "scalinglab"), "sweep", str(spec), "--address", gcs, "--storage", str(tmp_path / "out"),
                          "--tracking", f"tensorboard={private / 'tb'}"],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert "tracking.tensorboard: " in run.stderr and "is node-local: 1 of 2 Ray nodes" in run.stderr
    assert "tracking server's URI" in run.stderr and not (tmp_path / "out" / "trials.parquet").exists()


def test_a_trial_on_a_lost_node_finishes_on_the_head_node(write_spec, tmp_path):
    """Stop the second node (its raylet and everything it runs, by PID) while a trial trains
    there: Tune retries the trial from its last checkpoint on the head node; nothing is lost."""
    spec = write_spec("""\
        name: lost-node
        model:
          sizes:
            - {d_model: 32, n_layers: 2, n_heads: 2}
            - {d_model: 48, n_layers: 2, n_heads: 2}
        budgets: {tokens: [131072]}
        training: {batch_size: 4, seq_len: 32}
        evaluation: {validation_tokens: 1024, points: 4}
        checkpoint_every_s: 2
        """)
    out = tmp_path / "out"
    with two_node_cluster() as (_, gcs, temp):
        driver = subprocess.Popen([str(BIN / "scalinglab"), "sweep", str(spec), "--address", gcs, "--storage", str(out),
                                   "--no-fit", "--no-report"], env=_env(), cwd=REPO,
                                  stdout=(tmp_path / "sweep.log").open("w"), stderr=subprocess.STDOUT)
        try:
            second = _node_processes(temp, "node2")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.5)
                assert driver.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
                if not (out / EVALS.file).exists():
                    continue
                evals = ResultsStore(str(out)).read_table(EVALS.file)  # one read: never torn by a replace
                trained = evals.groupby(EVALS.trial_id)[EVALS.step].max()
                if len(trained) == 2 and any(p.name().startswith("ray::ImplicitFunc") for p in _descendants(second.pid)):
                    break  # both trials past a point, one of them on the second node
            victims = [second, *_descendants(second.pid)]
            for proc in victims:  # the node is lost: its raylet and every process under it
                proc.kill()
            psutil.wait_procs(victims, timeout=30)
            assert driver.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
        finally:
            if driver.poll() is None:
                driver.kill()
    trials = pd.read_parquet(out / TRIALS.file).set_index(TRIALS.trial_id)
    assert (trials[TRIALS.status] == Status.COMPLETED).all()
    assert sorted(trials[TRIALS.restarts]) == [0, 1]
    assert trials[TRIALS.node_id].nunique() == 1  # both ended on the head node
    evals = pd.read_parquet(out / EVALS.file)
    for tid, row in trials.iterrows():  # every trial's last evaluation point is its end
        assert evals[evals[EVALS.trial_id] == tid][EVALS.data_units].max() == row[TRIALS.data_units]
    print(f"lost node: restarted trial lost {trials[TRIALS.data_units_lost].max():.0f} tokens")


def _node_processes(mark: str, node_dir: str) -> psutil.Process:
    """The raylet of the node whose temp dir ends in ``node_dir``, among this cluster's processes."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "raylet" and proc.environ().get(MARK) == mark \
                    and any(node_dir in arg for arg in proc.info["cmdline"] or []):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no raylet of {node_dir}")

