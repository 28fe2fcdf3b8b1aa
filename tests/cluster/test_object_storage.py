"""Results in object storage, through a real S3 API: moto's standalone S3 server, started here
on 127.0.0.1, with credentials and the endpoint in the usual AWS environment variables. The
sweep (real Ray, real DeepSpeed, a WSD ladder so branch checkpoints go there too) runs as a
separate process, is SIGKILLed mid-sweep and resumed from the bucket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from analysis.records import EVALS, TRIALS, Status
from analysis.store import ResultsStore
from tests.cluster.test_sweep_e2e import _descendants, kill_tree
from tests.conftest import REPO, free_port, serve

BIN = Path(sys.executable).parent
BUCKET = "scalinglab-test"

SPEC = """\
name: s3-wsd
model:
  sizes: [{d_model: 16, n_layers: 1, n_heads: 1}, {d_model: 32, n_layers: 1, n_heads: 2}]
budgets: {tokens: [16384, 32768]}
training: {batch_size: 4, seq_len: 32, schedule: wsd}
evaluation: {validation_tokens: 1024, points: 4}
"""


@pytest.fixture
def s3(tmp_path):
    """A moto S3 server with one bucket; yields the environment that points the AWS SDK at it
    (fresh random credentials, so a test can look for them in everything written)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], endpoint, tmp_path / "moto.log")
    env = {"AWS_ACCESS_KEY_ID": f"AKIA{uuid.uuid4().hex[:16].upper()}", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex * 2,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield env, server
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.kill()
        server.wait(timeout=20)


def _sweep(spec, uri, log: Path, *extra) -> subprocess.Popen:
    """``scalinglab sweep`` in a process of its own (its own embedded Ray), output to ``log``."""
    return subprocess.Popen([str(BIN / "scalinglab"), "sweep", str(spec), "--storage", uri, *extra], cwd=REPO,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"}, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.ray
def test_a_sweep_in_s3_is_readable_mid_sweep_resumes_after_a_kill_and_never_writes_the_credentials(s3, write_spec,
                                                                                                     tmp_path):
    env, _ = s3
    spec = write_spec(SPEC)
    uri = f"s3://{BUCKET}/sweeps/s3-wsd"
    driver = _sweep(spec, uri, tmp_path / "first.log")
    read_mid_sweep = None
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(1)
            try:  # pandas, through the same URI (pyarrow's S3 filesystem, the same environment)
                trials = pd.read_parquet(f"{uri}/{TRIALS.file}")
            except (OSError, ValueError):  # not there yet, or replaced between pyarrow's footer and body reads
                continue
            if (trials[TRIALS.status] == Status.COMPLETED).sum() >= 1:  # a trunk done: kill the driver
                read_mid_sweep = trials
                break
    finally:
        leftovers = _descendants(driver.pid)  # its Ray: taken down with it, as a kill -9 of the machine's job would
        kill_tree(driver, leftovers)
    assert read_mid_sweep is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert len(read_mid_sweep) == 6  # 2 trunks, 4 branches

    resumed = _sweep(spec, uri, tmp_path / "resumed.log", "--resume")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    store = ResultsStore(uri)
    trials = pd.read_parquet(f"{uri}/{TRIALS.file}")
    assert (trials[TRIALS.status] == Status.COMPLETED).all() and len(trials) == 6
    evals = store.read_table(EVALS.file)
    assert set(evals[EVALS.trial_id]) == set(trials[TRIALS.trial_id])
    assert store.exists("report.html") and store.exists("run.json")
    # everything the sweep wrote (the bucket's objects, its output) holds neither credential
    import boto3

    objects = boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]
    assert any("/tune/" in o["Key"] for o in objects)  # Tune's state and checkpoints went there too
    secrets = [env["AWS_SECRET_ACCESS_KEY"].encode(), env["AWS_ACCESS_KEY_ID"].encode()]
    for o in objects:
        body = boto3.client("s3").get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        assert not any(s in body for s in secrets), o["Key"]
    for log in ("first.log", "resumed.log"):
        assert not any(s in (tmp_path / log).read_bytes() for s in secrets)
    print(f"s3 sweep: {len(objects)} objects, {len(trials)} trials completed after a kill and --resume")


def test_an_unreachable_store_is_exit_2_before_anything_runs(scalinglab, write_spec, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    started = time.monotonic()
    code, _, err = scalinglab("sweep", write_spec(SPEC), "--storage", f"s3://{BUCKET}/nowhere")
    assert code == 2 and f"storage: cannot reach s3://{BUCKET}/nowhere" in err, err
    print(f"unreachable store refused in {time.monotonic() - started:.1f} s")


def test_a_transient_store_outage_mid_write_is_retried_and_leaves_whole_files(s3):
    """The S3 server frozen (SIGSTOP) while a table is written, thawed a few seconds later:
    the write goes through, whole, and no temporary object is left."""
    _, server = s3
    store = ResultsStore(f"s3://{BUCKET}/outage")
    store.write_table(TRIALS.file, pd.DataFrame({"a": [1]}))
    frame = pd.DataFrame({"a": range(100_000)})
    os.kill(server.pid, signal.SIGSTOP)
    threading.Timer(4.0, os.kill, (server.pid, signal.SIGCONT)).start()
    started = time.monotonic()
    store.write_table(TRIALS.file, frame)
    waited = time.monotonic() - started
    assert waited >= 3.5  # it did meet the outage
    assert store.read_table(TRIALS.file)["a"].tolist() == frame["a"].tolist()
    assert store.listdir() == [TRIALS.file]
    print(f"write through a 4 s outage: {waited:.1f} s")


def test_a_write_that_fails_is_tried_again_and_lands_whole(tmp_path):
    """A real OSError on the first attempt (a file where the folder must go), gone a moment
    later: the write is retried and lands; an error that stays is raised after the last try."""
    store = ResultsStore(tmp_path / "out")
    blocker = tmp_path / "out" / "sub"
    blocker.parent.mkdir()
    blocker.write_text("in the way")
    threading.Timer(0.5, blocker.unlink).start()
    store.write_bytes("sub/x.json", b'{"whole": true}')
    assert (tmp_path / "out" / "sub" / "x.json").read_bytes() == b'{"whole": true}'
    (tmp_path / "out" / "other").write_text("stays in the way")
    started = time.monotonic()
    with pytest.raises(OSError):
        store.write_bytes("other/y.json", b"{}")
    assert time.monotonic() - started >= 5.5  # waited 1 + 2 + 3 s between its 4 attempts
