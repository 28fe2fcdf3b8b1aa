"""The GPU path: a bf16 trial on CUDA through Ray and DeepSpeed. Skipped without a GPU (CI)."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from analysis.records import TRIALS, Status
from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_trial_on_one_gpu(write_spec, tmp_path):
    spec = write_spec("""\
        name: gpu
        model:
          sizes: [{d_model: 128, n_layers: 2, n_heads: 4}]
        budgets: {tokens: [65536]}
        training: {batch_size: 16, seq_len: 64}
        deepspeed: {precision: bf16, zero_stage: 1}
        resources: {gpus_per_worker: 1, cpus_per_worker: 1}
        evaluation: {validation_tokens: 4096, points: 2}
        """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "DS_ACCELERATOR"}
    run = subprocess.run([sys.executable, "-m", "cluster.cli", "sweep", str(spec), "--storage", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    row = pd.read_parquet(tmp_path / "out" / TRIALS.file).iloc[0]
    assert row[TRIALS.status] == Status.COMPLETED and row[TRIALS.precision] == "bf16" and row[TRIALS.gpus_per_worker] == 1
