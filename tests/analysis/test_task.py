"""Task-performance prediction: the fitters of each step, the checks, and ``scalinglab task`` on
tables and results folders (bad input included)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.errors import UserError
from analysis.laws import LAWS, fit_lse_law, resample_weights
from analysis.points import Points
from analysis.task import SNR_MIN, Ladder, SigmoidAxis, fit_two_steps, noise_check, predict_task
from analysis.task_models import fit_loss_to_loss, fit_sigmoid, loss_to_loss, sigmoid
from analysis.task_simulation import SCENARIOS, simulate, target
from analysis.task_tables import TASKS_FILE
from tests.analysis.report_data import make_results

FAST = {"held_out": False, "check_resamples": 0}


def test_the_sigmoid_fit_recovers_a_known_curve_with_the_floor_fixed_or_free():
    loss = np.linspace(0.8, 2.0, 80)
    truth = np.array([0.25, 0.6, 1.3, 0.1])
    acc = sigmoid(truth, loss)
    for floor in (0.25, None):
        got = fit_sigmoid(loss, acc, np.ones((1, 80)), floor)[0]
        assert np.allclose(got, truth, rtol=0.02, atol=0.005), (floor, got)
        assert np.abs(sigmoid(got, loss) - acc).max() < 0.003


def test_the_sigmoid_keeps_its_ceiling_at_most_one_and_a_flat_ladder_gets_no_rise():
    loss = np.linspace(1.5, 2.0, 40)
    steep = np.clip(0.25 + 3.0 * (2.0 - loss), 0, 1)  # a line that would run past 1 at the target
    got = fit_sigmoid(loss, steep, np.ones((1, 40)), 0.25)[0]
    assert got[0] + got[1] <= 1 + 1e-12 and float(sigmoid(got, 0.5)) <= 1 + 1e-12
    flat = np.full(40, 0.25) + np.random.default_rng(0).normal(0, 0.01, 40)
    got = fit_sigmoid(loss, flat, np.ones((1, 40)), 0.25)[0]
    assert float(sigmoid(got, 0.5)) < 0.3, got  # no evidence of a rise: no rise beyond the data either


def test_a_sigmoid_in_log_loss_reaches_its_ceiling_as_the_loss_goes_to_zero():
    ladder, _ = simulate(0, "mid")
    frame = ladder.frame.copy()
    frame["acc"] = sigmoid(np.array([0.0, 0.98, np.log(0.3), 0.4]), np.log(frame["loss"] - 0.9))  # exact match-like
    frame["loss"] -= 0.9  # task losses from 0.1 to 1.5
    doc = predict_task(Ladder("log", frame, chance=0.0), [target()], bootstrap=0, sigmoid_in="log-loss", **FAST)
    assert doc["step2"]["sigmoid_in"] == SigmoidAxis.LOG_LOSS and doc["step2"]["r2"] > 0.999
    assert doc["step2"]["params"]["mid"]["value"] == pytest.approx(np.log(0.3), abs=0.02)
    linear = predict_task(Ladder("lin", frame, chance=0.0), [target()], bootstrap=0, **FAST)
    assert linear["step2"]["r2"] < doc["step2"]["r2"]


def test_loss_to_loss_recovers_a_shifted_power_law_and_keeps_the_floor_non_negative():
    general = np.linspace(2.2, 3.5, 20)
    task = loss_to_loss(np.array([0.3, 0.8, 1.7]), general, 2.0)
    got = fit_loss_to_loss(general, task, np.array([2.0]), np.ones((1, 20)))[0]
    assert np.allclose(got, [0.3, 0.8, 1.7], rtol=0.02), got
    falling = 0.5 - 0.4 * (general - 2.0)  # a floor would have to be negative: it stops at 0
    assert fit_loss_to_loss(general, np.abs(falling), np.array([2.0]), np.ones((1, 20)))[0][0] >= 0


def test_loss_to_loss_chains_a_general_loss_law_into_the_task_loss():
    ladder, truth = simulate(2, "mid")
    frame = ladder.frame.copy()
    general = 1.0 + ((frame["loss"] - 0.1) / 0.9) ** (1 / 1.3)  # so task = 0.1 + 0.9·(general − 1)^1.3
    frame["general"] = general * np.exp(np.random.default_rng(0).normal(0, 0.002, len(frame)))
    doc = predict_task(Ladder("via", frame, chance=0.25), [target()], via=True, bootstrap=100, seed=0, **FAST)
    step1 = doc["step1"]
    assert step1["law"] == "loss_to_loss" and step1["general"]["law"] == "chinchilla"
    assert step1["r2_log"] > 0.99 and step1["params"]["E_task"]["value"] >= 0
    for name, true in (("kappa", 1.3), ("K", 0.9)):
        assert step1["params"][name]["low"] <= true <= step1["params"][name]["high"], step1["params"]
    at = doc["predictions"][0]["task_loss"]
    assert at["low"] <= truth["task_loss"] <= at["high"]


def test_both_steps_refit_on_the_same_resample_of_runs():
    ladder, _ = simulate(3, "mid")
    two = fit_two_steps(ladder, np.arange(16), law="chinchilla", via=False, bootstrap=64, seed=5, skip_early=0.1,
                        check_resamples=0)
    finals = ladder.finals()
    w = resample_weights(np.arange(16), 64, 5)
    law = fit_lse_law(LAWS["chinchilla"], Points(finals[["N", "D", "C", "loss"]]), bootstrap=64, weights=w,
                      held_out=False, check_resamples=0)
    assert np.allclose(law.samples["alpha"], two.law.samples["alpha"])
    rows = ladder.frame[ladder.frame["D"] >= 0.1 * ladder.frame.groupby("run")["D"].transform("max")]
    run_of_row = pd.Index(finals["run"]).get_indexer(rows["run"])
    sig = fit_sigmoid(rows["loss"].to_numpy(), rows["acc"].to_numpy(), w[:, run_of_row], ladder.chance)
    assert np.allclose(sig, two.sigmoid_draws)
    # a run left out of a resample takes all its checkpoints with it
    assert (w == 0).any() and ((w[:, run_of_row] == 0).sum(axis=1) % 10 == 0).all()


def test_the_noise_check_measures_checkpoint_noise_and_falls_back_to_the_items_standard_error():
    mid, _ = simulate(0, "mid")
    noise = noise_check(mid)
    binomial = np.sqrt(0.5 * 0.5 / 1000)
    assert 0.5 * binomial < noise["checkpoint_sd"] < 1.5 * binomial and noise["snr"] > SNR_MIN
    assert noise["runs_measured"] == 16
    flat, _ = simulate(0, "noise_only")
    assert noise_check(flat)["snr"] < SNR_MIN
    last = mid.frame[mid.frame["step"].isin([1, 5, 10])].assign(stderr=0.02)  # too few checkpoints late in a run
    coarse = noise_check(Ladder("coarse", last, chance=0.25))
    assert coarse["runs_measured"] == 0 and coarse["checkpoint_sd"] == pytest.approx(0.02)
    assert "standard error" in coarse["source"]


def test_a_prediction_holds_intervals_a_held_out_check_and_the_curve():
    ladder, truth = simulate(1, "mid")
    doc = predict_task(ladder, [target(), {"C": 3e22}], bootstrap=200, seed=0)
    assert doc["predictable"] and doc["reasons"] == []
    assert doc["step1"]["law"] == "chinchilla" and doc["step2"]["floor_fixed"]
    at = doc["predictions"][0]
    assert at["accuracy"]["low"] <= truth["accuracy"] <= at["accuracy"]["high"]
    assert at["task_loss"]["low"] <= truth["task_loss"] <= at["task_loss"]["high"]
    assert at["extrapolation"] == pytest.approx(10) and at["C"] == pytest.approx(6 * at["N"] * at["D"])
    split = doc["predictions"][1]  # C alone: split by step 1's Chinchilla law
    assert split["C"] == 3e22 and split["N"] * split["D"] * 6 == pytest.approx(3e22, rel=1e-6)
    held = doc["held_out"]
    assert held["n_held_out"] == 1 and held["accuracy_max_abs_error"] < 0.1
    assert len(doc["step2"]["curve"]["low"]) == len(doc["step2"]["curve"]["task_loss"])


def test_a_ladder_at_chance_is_refused_and_its_wide_interval_still_says_where_the_truth_may_be():
    ladder, truth = simulate(0, "floor")
    doc = predict_task(ladder, [target()], bootstrap=200, seed=0, **FAST)
    assert not doc["predictable"] and "too noisy" in doc["reasons"][0]
    acc = doc["predictions"][0]["accuracy"]
    assert acc["high"] - acc["low"] > 0.3 and acc["low"] <= truth["accuracy"] <= acc["high"]
    assert any("part of the curve no checkpoint constrains" in w for w in doc["warnings"])


def test_one_token_budget_falls_back_to_the_law_in_n_and_says_what_it_cannot_do():
    ladder, _ = simulate(0, "mid")
    one_d = ladder.frame[ladder.frame["run"].str.endswith("-x100")].copy()
    one_d["D"] *= 1.2e11 / one_d.groupby("run")["D"].transform("max")  # every run ends at D = 1.2e11
    doc = predict_task(Ladder("one-d", one_d.reset_index(drop=True), chance=0.25), [{"N": 4e9, "D": 1e12}],
                       bootstrap=0, **FAST)
    assert doc["step1"]["law"] == "power_N"
    assert any("the ladder has one D" in w for w in doc["warnings"])
    with pytest.raises(UserError, match=r"--predict C=1e\+22: give N and D .*one-d.s step 1 is power_N"):
        predict_task(Ladder("one-d", one_d.reset_index(drop=True), chance=0.25), [{"C": 1e22}], bootstrap=0, **FAST)


def _table(tmp_path, scenario="mid", seed=0):
    ladder, truth = simulate(seed, scenario)
    path = tmp_path / f"{scenario}.csv"
    ladder.frame.rename(columns={"run": "model", "N": "params", "D": "tokens", "loss": "bpb",
                                 "acc": "acc"}).drop(columns="C").to_csv(path, index=False)
    return path, truth


COLS = ["--run-col", "model", "--n-col", "params", "--d-col", "tokens"]


def test_the_command_on_a_table_writes_the_json_document(tmp_path, scalinglab):
    path, truth = _table(tmp_path)
    t = target()
    code, out, err = scalinglab("task", path, *COLS, "--loss-col", "bpb", "--acc-col", "acc", "--chance", "0.25",
                                "--predict", f"N={t['N']},D={t['D']}", "--bootstrap", "100", "--format", "json")
    assert code == 0, err
    (task,) = json.loads(out)["tasks"]
    assert {"task", "n_runs", "n_checkpoints", "step1", "step2", "noise", "predictable", "warnings", "predictions",
            "held_out"} <= set(task)
    assert task["n_runs"] == 16 and task["n_checkpoints"] == 160 and task["chance"] == 0.25
    assert set(task["step1"]) >= {"law", "params", "r2_log"} and set(task["step2"]) >= {"params", "r2"}
    (p,) = task["predictions"]
    assert set(p) >= {"N", "D", "C", "task_loss", "accuracy", "extrapolation"}
    assert set(p["accuracy"]) == {"value", "low", "high"} and p["C"] == pytest.approx(6 * t["N"] * t["D"])
    assert "task acc: 16 runs, 160 checkpoints" in err


def test_several_tasks_as_column_pairs_or_a_long_table(tmp_path, scalinglab):
    path, _ = _table(tmp_path)
    wide = pd.read_csv(path)
    wide["bpb2"], wide["acc2"] = wide["bpb"] * 1.1, wide["acc"]
    wide.to_csv(path, index=False)
    code, out, err = scalinglab("task", path, *COLS, "--task", "bpb:acc", "--task", "bpb2:acc2", "--chance", "0.25",
                                "--chance", "0.2", "--bootstrap", "0", "--format", "json")
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert [t["task"] for t in tasks] == ["acc", "acc2"] and [t["chance"] for t in tasks] == [0.25, 0.2]
    long = pd.concat([wide.assign(benchmark="a"), wide.assign(benchmark="b", bpb=wide["bpb2"])])
    long.to_parquet(tmp_path / "long.parquet")
    code, out, err = scalinglab("task", tmp_path / "long.parquet", *COLS, "--task-col", "benchmark", "--loss-col", "bpb",
                                "--acc-col", "acc", "--bootstrap", "0", "--format", "json")
    assert code == 0, err
    assert [(t["task"], t["n_runs"]) for t in json.loads(out)["tasks"]] == [("a", 16), ("b", 16)]


def test_bad_input_names_what_is_wrong(tmp_path, scalinglab):
    path, _ = _table(tmp_path)
    code, _, err = scalinglab("task", path, "--loss-col", "bpb", "--acc-col", "acc")
    assert code == 2 and "'n_params' (--n-col)" in err and "'trial_id' (--run-col)" in err
    code, _, err = scalinglab("task", path, *COLS)
    assert code == 2 and "--loss-col COL --acc-col COL" in err
    code, _, err = scalinglab("task", path, *COLS, "--task", "hellaswag_bpb:acc")
    assert code == 2 and "'hellaswag_bpb' (task 1's loss)" in err and "(task 1's accuracy)" not in err
    code, _, err = scalinglab("task", path, *COLS, "--task", "bpb")
    assert code == 2 and "LOSS_COL:ACC_COL" in err
    code, _, err = scalinglab("task", path, *COLS, "--task", "bpb:acc", "--chance", "0.1", "--chance", "0.2",
                              "--chance", "0.3")
    assert code == 2 and "--chance given 3 times" in err
    code, _, err = scalinglab("task", path, *COLS, "--loss-col", "bpb", "--acc-col", "acc", "--predict", "N=1e9")
    assert code == 2 and "give N and D, or C alone" in err
    table = pd.read_csv(path)
    table.loc[:4, "acc"] = 7.0  # not a fraction
    table.loc[5:6, "bpb"] = np.nan
    table.to_csv(path, index=False)
    code, out, err = scalinglab("task", path, *COLS, "--loss-col", "bpb", "--acc-col", "acc", "--bootstrap", "0",
                                "--format", "json")
    (task,) = json.loads(out)["tasks"]
    assert code == 0 and task["dropped"] == 7 and "dropped 7 row(s)" in task["warnings"][0]


def test_on_a_results_folder_every_probe_task_is_predicted_and_the_report_draws_it(tmp_path, scalinglab):
    folder = make_results(tmp_path / "sweep", samples=False)
    code, out, err = scalinglab("task", folder, "--predict", "N=1e9,D=2e10", "--bootstrap", "50")
    assert code == 0, err
    assert "addition/exact_match:" in out and "predict N=1e+09, D=2e+10" in out
    saved = json.loads((folder / TASKS_FILE).read_text())
    (task,) = saved["tasks"]  # the folder's probe records exact match only
    assert task["task"] == "addition/exact_match" and task["step1"]["law"] == "chinchilla"
    assert task["n_runs"] == 20  # the failed trial is not a run of the ladder
    code, _, err = scalinglab("report", folder, "--bootstrap", "0")
    assert code == 0, err
    page = (folder / "report.html").read_text()
    assert "Task predictions" in page and "fig-task_0" in page


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_simulated_truths_are_what_the_docstring_says(scenario):
    ladder, truth = simulate(0, scenario)
    finals = ladder.finals()
    assert 0.95 < finals["loss"].min() < 1.05 and 1.7 < finals["loss"].max() < 1.9 and 0.8 < truth["task_loss"] < 0.9
