"""Real WSD sweeps: an LR search, trunks and cooldown branches through the CLI, an embedded
Ray and DeepSpeed engines; a failed branch; a driver killed mid-trunk and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

from tests.cluster.test_sweep_e2e import _cli, _descendants
from tests.conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = """\
    name: e2e-wsd
    model:
      sizes: [{d_model: 16, n_layers: 1, n_heads: 1}, {d_model: 32, n_layers: 1, n_heads: 2}]
    budgets: {tokens: [12800, 25600]}
    training: {batch_size: 4, seq_len: 32, schedule: wsd, lr: {search: [1.0e-3, 3.0e-3]}}
    evaluation: {validation_tokens: 1024, points: 3}
    """


def test_wsd_sweep_with_lr_search_trunks_and_branches(write_spec, tmp_path):
    out = tmp_path / "out"
    # one branch fails at start: its sibling and the other size's branches still complete
    run = _cli("sweep", str(write_spec(SPEC)), "--storage", str(out),
               env={"SCALINGLAB_INJECT_FAILURE": "tfm-n12.8k-d25.6k"})
    assert run.returncode == 1, run.stderr[-3000:]  # 1: a trial failed
    assert "phase 3/3: 4 wsd cooldown branches" in run.stderr
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    assert trials["role"].value_counts().to_dict() == {"lr_search": 4, "branch": 4, "trunk": 2}
    assert trials.loc["tfm-n12.8k-d25.6k-s0", "status"] == "failed"
    assert "injected failure" in trials.loc["tfm-n12.8k-d25.6k-s0", "error"]
    ok = trials.drop(index="tfm-n12.8k-d25.6k-s0")
    assert (ok["status"] == "completed").all()

    evals = pd.read_parquet(out / "evals.parquet")
    for size in (0, 1):
        mine = trials[json_size(trials) == size]
        search = mine[mine["role"] == "lr_search"]
        best = search.loc[search["final_loss"].idxmin()]
        runs = mine[mine["role"].isin(["trunk", "branch"])]
        assert (runs["lr"] == best["lr"]).all() and (runs["lr_chosen_by"] == "search").all()
        trunk = mine[mine["role"] == "trunk"]
        assert len(trunk) == 1  # the trunk ran once for both budgets
        trunk_curve = evals[(evals["trial_id"] == trunk.index[0]) & (evals["metric"] == "loss")]
        assert trunk_curve["step"].is_unique and trunk_curve["step"].max() == trunk["steps"].iloc[0]
        for tid, b in mine[mine["role"] == "branch"].iterrows():
            assert b["parent"] == trunk.index[0]
            assert 0 < b["branch_step"] < b["steps"] and b["branch_step"] in json.loads(trunk["config"].iloc[0])["save_steps"]
            assert b["flops_paid"] < b["flops"] == pytest.approx(b["tokens"] * b["flops_per_token"])
            curve = evals[(evals["trial_id"] == tid) & (evals["metric"] == "loss")]
            if b["status"] == "completed":
                assert curve["step"].min() > b["branch_step"] and curve["step"].max() == b["steps"]
        # the search ran an unbroken WSD run of the smallest budget at the chosen LR: the
        # trunk + branch of that budget reproduce it (same data order, schedule and state)
        small = mine[(mine["role"] == "branch") & (mine["tokens"] == 12800)].iloc[0]
        assert small["final_loss"] == pytest.approx(best["final_loss"], rel=1e-5)
    # checkpoints of completed branches are gone; the failed branch's stays for a retry
    left = sorted(p.parent.name + "/" + p.name for p in (out / "checkpoints").glob("*/step-*"))
    assert left == [f"tfm-n12.8k-trunk-s0/step-{int(trials.loc['tfm-n12.8k-d25.6k-s0', 'branch_step'])}"]
    assert "final held-out loss" in run.stdout and "trunk" not in run.stdout.split("scaling-law")[0]


def json_size(trials: pd.DataFrame) -> pd.Series:
    return trials["config"].map(lambda c: json.loads(c)["size_index"])


def test_driver_killed_mid_trunk_resumes_the_trunk_from_its_checkpoint(write_spec, tmp_path):
    spec = write_spec("""\
        name: e2e-wsd-resume
        model:
          sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]
        budgets: {tokens: [25600, 204800]}
        training: {batch_size: 4, seq_len: 32, schedule: wsd}
        resources: {max_concurrent: 1}
        evaluation: {validation_tokens: 1024, points: 12}
        """)
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "cluster.cli", "sweep", str(spec), "--storage", str(out)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    leftovers, killed_at = [], None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and killed_at is None:
            time.sleep(0.3)
            if (out / "evals.parquet").exists():
                evals = pd.read_parquet(out / "evals.parquet")
                steps = evals[(evals["metric"] == "loss") & evals["trial_id"].str.contains("trunk")]["step"]
                if len(steps) >= 4:  # the trunk has checkpointed a few times and is still running
                    leftovers = _descendants(driver.pid)
                    driver.send_signal(signal.SIGKILL)
                    driver.wait(timeout=30)
                    killed_at = int(steps.max())
        assert killed_at is not None, "the trunk never reached its fourth evaluation"
    finally:
        for proc in _descendants(driver.pid) + leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    run = _cli("sweep", str(spec), "--storage", str(out), "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials["status"] == "completed").all() and len(trials) == 3
    # Tune's record of the trunk (appended to across the restart): the resumed run went on
    # from a checkpoint, so its reported steps never fall back to the first evaluation
    lines = (out / "tune" / "tfm-n3.31k-trunk-s0" / "result.json").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert max(steps) > killed_at and steps.count(steps[0]) == 1  # a restart from scratch repeats the first
