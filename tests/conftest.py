"""Shared fixtures: spec files written on the fly, and the environment every test runs in."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# DeepSpeed picks its CPU accelerator without probing for GPUs; Ray's embedded cluster
# needs no auth token; Hugging Face libraries stay offline (tests never touch a hub).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# GAN feature networks are cached per test session (removed at exit), not in ~/.cache.
if "SCALINGLAB_CACHE" not in os.environ:  # experiments.cache.CACHE_ENV
    os.environ["SCALINGLAB_CACHE"] = tempfile.mkdtemp(prefix="scalinglab-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SCALINGLAB_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def process_group():
    """A world-size-1 gloo process group for DeepSpeed engines built in the test process."""
    import socket

    import deepspeed
    import torch

    from experiments.train_loop import disable_jit_comm_op, set_distributed_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_distributed_env(0, 1, 0, 1, "127.0.0.1", port)
    disable_jit_comm_op()
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray shared by every in-process sweep test, so that no sweep pays a Ray
    start of its own (a sweep uses the Ray it finds and leaves it running). What a killed
    driver or a new process does is tested by running the CLI in a subprocess instead."""
    from cluster.runtime import start_ray, stop_ray

    started = start_ray(None)
    yield
    if started:
        stop_ray()


@pytest.fixture
def scalinglab(ray_session, capsys):
    """``scalinglab ARGS`` in this process, on the shared Ray: (exit status, stdout, stderr)."""
    from cluster.cli import main

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def write_spec(tmp_path):
    """Write a YAML spec (dedented) to a temporary file and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(command: list[str], url: str, log: Path, timeout_s: float = 120, **popen) -> subprocess.Popen:
    """Start a server (its output to ``log``) and wait until ``url`` answers; the test fails,
    with the log's tail, when the server exits or does not answer within ``timeout_s``."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"), **popen)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"{command[0]} did not start: " + log.read_text()[-2000:])
            time.sleep(0.3)


MINIMAL_SPEC = """\
name: tiny
model:
  sizes:
    - {d_model: 16, n_layers: 1, n_heads: 1}
    - {d_model: 32, n_layers: 1, n_heads: 2}
budgets:
  tokens: [4096, 8192]
training: {batch_size: 4, seq_len: 32}
evaluation: {validation_tokens: 1024, points: 3}
"""
