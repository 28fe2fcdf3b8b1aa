"""Capability probes through a real sweep (the CLI on the shared embedded Ray, DeepSpeed), then
the detector on the results folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.records import EVALS, capability_metric, chance_of, stderr_of

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_probe_metrics_land_in_the_tables_and_the_detector_reads_them(write_spec, tmp_path, scalinglab):
    spec = write_spec("""\
        name: e2e-probes
        model:
          sizes:
            - {d_model: 16, n_layers: 1, n_heads: 1}
            - {d_model: 32, n_layers: 1, n_heads: 2}
        budgets: {tokens: [8192]}
        probes: {tasks: [addition, recall], mix_rate: 0.5, eval_items: 32}
        training: {batch_size: 4, seq_len: 32}
        evaluation: {validation_tokens: 1024, points: 3}
        """)
    out = tmp_path / "out"
    code, _, stderr = scalinglab("sweep", spec, "--storage", out, "--no-fit")
    assert code == 0, stderr[-3000:]
    evals = pd.read_parquet(out / EVALS.file)
    metrics = {capability_metric(t, m) for t in ("addition", "recall") for m in ("exact_match", "logprob", "token_accuracy")}
    assert metrics | {stderr_of(m) for m in metrics} | {chance_of(m) for m in metrics} <= set(evals[EVALS.metric])
    assert {"addition/answer_tokens", "recall/answer_tokens"} <= set(evals[EVALS.metric])
    recall = evals[evals[EVALS.metric] == "recall/exact_match"]
    assert all(steps == [1, 8, 64] for steps in recall.groupby(EVALS.trial_id)[EVALS.step].apply(list))  # every point
    acc = evals[evals[EVALS.metric].str.endswith("/exact_match")][EVALS.value]
    assert ((acc >= 0) & (acc <= 1)).all()
    assert "Emergence" in (out / "report.html").read_text()
    code, stdout, stderr = scalinglab("emergence", out, "--format", "json")
    assert code == 0, stderr
    results = json.loads(stdout)["results"]
    assert {r["metric"] for r in results} == metrics
    assert {r["verdict"] for r in results} == {"not_enough_data"}  # two sizes, one budget
    assert json.loads((out / "emergence.json").read_text())["results"] == results


def test_the_emergence_quickstart_shows_a_jump_in_exact_match_with_a_smooth_log_prob(tmp_path, scalinglab):
    """The shipped quickstart spec, run as a user would (about 80 s on 2 CPU cores): walk's exact
    match is called emergent against N, with the mirage check's share, while its log-prob is not."""
    out = tmp_path / "emq"
    code, _, stderr = scalinglab("sweep", "emergence_quickstart", "--storage", out, "--no-fit", "--no-report")
    assert code == 0, stderr[-3000:]
    code, stdout, stderr = scalinglab("emergence", out, "--format", "json")
    assert code == 0, stderr
    by_metric = {r["metric"]: r for r in json.loads(stdout)["results"] if r["axis"] == "n_params"}
    exact, logprob = by_metric["walk/exact_match"], by_metric["walk/logprob"]
    assert exact["verdict"] == "emergent", exact
    assert exact["threshold"]["low"] < exact["threshold"]["high"]
    assert exact["subset"] == "all completed trials"  # one budget: every trial is at the largest D
    # the mirage check: token_accuracy^17 explains part of the jump, not all (docs/emergence.md)
    assert 0 < exact["scores"]["mirage_token_accuracy"] < 1
    assert any("metric-induced (Schaeffer et al. 2023): token_accuracy^17" in c for c in exact["caveats"])
    assert logprob["verdict"] == "smooth", logprob
    # task prediction on the same real folder: one token budget, so step 1 is the law in N
    code, stdout, stderr = scalinglab("task", out, "--predict", "N=8e5,D=4e5", "--bootstrap", "100", "--format", "json")
    assert code == 0, stderr
    tasks = {t["task"]: t for t in json.loads(stdout)["tasks"]}
    assert set(tasks) == {"walk/exact_match", "walk/token_accuracy"}
    exact = tasks["walk/exact_match"]
    assert exact["step1"]["law"] == "power_N" and exact["n_runs"] == 6 and exact["predictable"], exact["reasons"]
    assert "standard error" in exact["noise"]["source"]  # 6 log-spaced points: too few late in a run
    assert exact["chance"] < 1e-20 and exact["held_out"]["n_held_out"] == 1
    (p,) = exact["predictions"]
    assert p["accuracy"]["low"] <= p["accuracy"]["value"] <= p["accuracy"]["high"] and p["extrapolation"] > 1.9
