"""The emergence detector on synthetic series with known answers, and its CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.emergence import LEVEL, MetricSpec, analyse_series, big_bench_scores
from analysis.emergence_tables import detect
from analysis.errors import UserError

X = np.logspace(18, 23, 11)  # 11 scales, half a decade apart
U = np.log10(X)
SE = np.full(11, 0.01)


def _run(y, se=SE, **spec):
    return analyse_series(X, np.asarray(y, float), MetricSpec("task/acc", **spec), axis="flops",
                          se=se if se is not None else None)


def test_big_bench_scores_follow_their_definitions():
    linear = np.arange(6, dtype=float)  # I = 5, every step 1
    assert big_bench_scores(linear) == {"linearity": 5.0, "breakthroughness": 5.0}
    step = np.array([0, 0, 0, 1, 1, 1], dtype=float)  # one step of 1 among five
    s = big_bench_scores(step)
    assert s["linearity"] == pytest.approx(1 / math.sqrt(1 / 5))
    # the median squared step is 0: the denominator is floored (at 1e-3 of the range, or at
    # the step noise alone makes, sqrt(2)·se), so the score is large and defined
    assert s["breakthroughness"] == pytest.approx(1000.0)
    assert big_bench_scores(step, np.full(6, 0.05))["breakthroughness"] == pytest.approx(1 / (math.sqrt(2) * 0.05))
    # the issue's case: half the steps exactly zero, the most breakthrough-like series there is
    sharp = big_bench_scores(np.array([0, 0, 0, 0, 0.8, 0.8]))
    assert sharp["breakthroughness"] > 100 * sharp["linearity"] > 0
    falling = big_bench_scores(np.array([3.0, 2.0, 1.0, 0.0]))
    assert falling["linearity"] == pytest.approx(-3.0)  # argmax before argmin: negative
    assert big_bench_scores(np.ones(5)) == {"linearity": 0.0, "breakthroughness": 0.0}


def test_sigmoid_with_known_midpoint_and_width():
    width_decades = 0.6
    scale = width_decades / (2 * math.log(9))
    y = 0.25 + 0.7 / (1 + np.exp(-(U - 21.0) / scale))
    r = _run(y, chance=0.25)
    assert r.verdict == "emergent"
    assert math.log10(r.midpoint) == pytest.approx(21.0, abs=0.05)
    assert r.width_decades == pytest.approx(width_decades, rel=0.15)
    assert r.scores["midpoint_low"] <= 1e21 <= r.scores["midpoint_high"]
    t = r.threshold
    assert t["low"] <= t["x"] <= t["high"] and t["x"] < r.midpoint  # the onset precedes the midpoint
    assert r.scores["best_model"] == "sigmoid" and r.scores["breakthroughness"] > r.scores["linearity"]


def test_pure_power_law_is_smooth():
    r = _run(0.05 * (X / 1e18) ** 0.25)
    assert r.verdict == "smooth" and r.threshold is None and r.midpoint is None


def test_constant_and_noise_only_are_flat():
    assert _run(np.full(11, 0.3)).verdict == "flat"
    rng = np.random.default_rng(3)
    noisy = 0.25 + rng.normal(0, 0.01, 11)
    assert _run(noisy, chance=0.25).verdict == "flat"


def test_rise_then_fall_back_is_non_monotone_but_a_partial_decline_stays_emergent():
    bump = 0.25 + 0.5 * np.exp(-((U - 20.5) / 0.6) ** 2)
    assert _run(bump, chance=0.25).verdict == "non_monotone"
    partial = np.array([0.25, 0.25, 0.26, 0.25, 0.25, 0.75, 0.8, 0.8, 0.7, 0.65, 0.65])
    r = _run(partial, chance=0.25)
    assert r.verdict == "emergent"
    assert any("declines after the jump" in c for c in r.caveats)
    assert r.threshold["low"] == X[4] and r.threshold["high"] == X[5]


def test_noisy_small_benchmark_series_with_given_standard_errors():
    # published-style: 8 models, 250 items, chance 25%; sampling noise of several points
    x = np.array([1e8, 4e8, 1e9, 4e9, 1e10, 4e10, 1e11, 5e11])
    n = 250
    noise_only = np.array([0.26, 0.22, 0.29, 0.24, 0.27, 0.23, 0.28, 0.25])
    r = analyse_series(x, noise_only, MetricSpec("acc", n_items=n, chance=0.25), axis="params")
    assert r.verdict == "flat"
    jump = np.array([0.26, 0.23, 0.27, 0.25, 0.28, 0.52, 0.61, 0.66])
    r = analyse_series(x, jump, MetricSpec("acc", n_items=n, chance=0.25), axis="params")
    assert r.verdict == "emergent" and r.threshold["low"] == 1e10 and r.threshold["high"] == 4e10
    assert r.threshold["x"] == pytest.approx(2e10)  # geometric mean of the bracket
    # the same jump with standard errors three times larger is not significant
    se = 3 * np.sqrt(jump * (1 - jump) / n)
    r = analyse_series(x, jump, MetricSpec("acc", stderr_column="se", chance=0.25), axis="params", se=se * 2)
    assert r.verdict != "emergent"
    # a step that never rises significantly above chance is not emergent either
    low = np.array([0.25, 0.25, 0.25, 0.25, 0.25, 0.27, 0.27, 0.27])
    r = analyse_series(x, low, MetricSpec("acc", n_items=n, chance=0.25), axis="params")
    assert r.verdict == "flat"


def test_without_errors_the_scatter_decides_and_a_caveat_says_so():
    y = 0.25 + 0.7 / (1 + np.exp(-(U - 21.0) / 0.1)) + np.random.default_rng(1).normal(0, 0.005, 11)
    r = _run(y, se=None, chance=0.25)
    assert r.verdict == "emergent"
    assert any("estimated from the residuals of a sigmoid fitted" in c for c in r.caveats)


def test_too_few_points_ties_and_bad_x():
    r = analyse_series(X[:3], np.array([0.1, 0.2, 0.9]), MetricSpec("acc"), axis="N", se=SE[:3])
    assert r.verdict == "not_enough_data" and r.threshold is None
    x = np.array([1e9, 1e9, 1e10, 1e10, 1e11, 1e12, -5.0, np.nan])
    y = np.array([0.2, 0.3, 0.25, 0.25, 0.26, 0.9, 0.5, 0.5])
    r = analyse_series(x, y, MetricSpec("acc"), axis="N", se=np.full(8, 0.01))
    assert r.n_points == 4
    assert any("2 row(s) with a missing or non-positive N dropped" in c for c in r.caveats)
    assert any("their mean is used" in c for c in r.caveats)


def test_metric_induced_and_shared_jump_caveats():
    exact = 0.0 + 0.9 / (1 + np.exp(-(U - 21.0) / 0.05))
    logprob = -3 + 0.4 * (U - 18)  # improves smoothly
    table = pd.DataFrame({"flops": X, "add/exact_match": exact, "add/logprob": logprob, "se": 0.01})
    results, _ = detect(table, "flops", [MetricSpec("add/exact_match", stderr_column="se", chance=0.0),
                                         MetricSpec("add/logprob", stderr_column="se")])
    by = {r.metric: r for r in results}
    assert by["add/exact_match"].verdict == "emergent" and by["add/logprob"].verdict == "smooth"
    assert any("metric-induced" in c and "add/logprob" in c for c in by["add/exact_match"].caveats)
    # two tasks that both jump: generic learning?
    both = pd.DataFrame({"flops": X, "a/acc": exact, "b/acc": exact * 0.8, "se": 0.01})
    results, _ = detect(both, "flops", [MetricSpec("a/acc", stderr_column="se"), MetricSpec("b/acc", stderr_column="se")])
    assert all(r.verdict == "emergent" for r in results)
    assert all(any("every task given (a, b) jumps" in c for c in r.caveats) for r in results)
    # one task whose continuous metric jumps too: evidence against an artefact, and not "generic"
    one = pd.DataFrame({"flops": X, "a/exact_match": exact, "a/logprob": -3 + 2.5 * exact, "se": 0.01})
    results, _ = detect(one, "flops", [MetricSpec("a/exact_match", stderr_column="se", chance=0.0),
                                       MetricSpec("a/logprob", stderr_column="se")])
    by = {r.metric: r for r in results}
    assert by["a/logprob"].verdict == "emergent"
    assert any("jump(s) too: evidence against a metric artefact" in c for c in by["a/exact_match"].caveats)
    assert not any("generic" in c for r in results for c in r.caveats)


def test_the_mirage_check_measures_how_much_of_the_jump_the_per_token_metric_explains():
    """Exact match over 10-token answers against token accuracy (Schaeffer et al. 2023): when
    exact match is token_accuracy^10 the per-token metric explains the whole jump; when token
    accuracy barely moves it explains almost none."""
    token = 0.6 + 0.4 / (1 + np.exp(-(U - 21.0) / 0.3))
    table = pd.DataFrame({"flops": X, "t/exact_match": token**10, "t/token_accuracy": token, "se": 0.005})
    specs = [MetricSpec("t/exact_match", stderr_column="se", chance=0.0, answer_tokens=10),
             MetricSpec("t/token_accuracy", stderr_column="se")]
    exact = next(r for r in detect(table, "flops", specs)[0] if r.metric == "t/exact_match")
    assert exact.verdict == "emergent"
    assert exact.scores["mirage_token_accuracy"] == pytest.approx(1.0)
    assert any(c.startswith("metric-induced (Schaeffer et al. 2023): token_accuracy^10") for c in exact.caveats)
    flat_token = 0.95 + 0.001 * (U - 18)  # the per-token metric hardly improves
    jump = np.where(U >= 21, 0.8, 0.0)
    table = pd.DataFrame({"flops": X, "t/exact_match": jump, "t/token_accuracy": flat_token, "se": 0.005})
    exact = next(r for r in detect(table, "flops", specs)[0] if r.metric == "t/exact_match")
    assert exact.verdict == "emergent" and exact.scores["mirage_token_accuracy"] < 0.1
    assert any(c.startswith("not metric-induced") for c in exact.caveats)


def test_the_issues_examples():
    x = np.logspace(8, 10.5, 6)
    # the only large step is to the last point: one point of evidence, not emergent
    edge = analyse_series(x, np.array([.02, .01, .02, .03, .02, .15]), MetricSpec("acc", n_items=256))
    assert edge.verdict == "late_jump" and edge.threshold["high"] == x[-1]
    assert any("one point of evidence" in c for c in edge.caveats)
    # a clear jump with no standard errors: the jump does not inflate the estimated errors
    assert analyse_series(x, np.array([0, 0, 0, .5, .9, 1]), MetricSpec("acc")).verdict == "emergent"
    # a flat start far above chance is not a plateau near chance
    high = np.array([.80, .81, .95, .97, .98, .98])
    assert analyse_series(x, high, MetricSpec("acc", n_items=256, chance=0.0)).verdict == "smooth"
    unknown = analyse_series(x, high, MetricSpec("acc", n_items=256))
    assert unknown.verdict != "emergent" or any("no chance level given" in c for c in unknown.caveats)


def test_several_series_share_the_level():
    """Bonferroni: each of the k series tested at once runs its step test at level / k."""
    table = pd.DataFrame({"flops": X, **{f"t{i}/acc": 0.3 + 0.01 * i * (U - 18) for i in range(4)}})
    results, _ = detect(table, "flops", [MetricSpec(f"t{i}/acc", n_items=1000) for i in range(4)], level=0.02)
    assert [r.scores["level"] for r in results] == [0.005] * 4
    with pytest.raises(UserError, match="--level 1.5: expected a probability"):
        detect(table, "flops", [MetricSpec("t0/acc")], level=1.5)


def test_loss_axis_reads_lower_loss_as_more_scale():
    loss = np.linspace(4.0, 2.0, 11)  # falls with scale
    acc = 0.9 / (1 + np.exp(-(3.0 - loss) / 0.05))  # turns on below loss 3
    r = analyse_series(loss, acc, MetricSpec("acc", chance=0.0), axis="loss", se=SE, loss_axis=True)
    assert r.verdict == "emergent"
    assert 2.8 < r.threshold["x"] < 3.2 and r.midpoint == pytest.approx(3.0, abs=0.1)


def test_bad_tables_raise_analysis_errors():
    table = pd.DataFrame({"flops": X, "acc": ["x"] + [0.5] * 10})
    with pytest.raises(UserError, match="column 'acc' holds non-numeric values"):
        detect(table, "flops", [MetricSpec("acc")])
    with pytest.raises(UserError, match=r"column\(s\) \['nope'\] not in the table"):
        detect(table, "flops", [MetricSpec("nope")])
    with pytest.raises(UserError, match="se: standard errors must be finite and >= 0"):
        analyse_series(X, np.linspace(0, 1, 11), MetricSpec("acc", stderr_column="se"), axis="C", se=-SE)
    with pytest.raises(UserError, match="binomial errors of accuracies in \\[0, 1\\]"):
        analyse_series(X, np.linspace(0, 50, 11), MetricSpec("acc", n_items=100), axis="C")


@pytest.fixture
def _cli(capsys):
    """``scalinglab emergence ARGS`` in this process: its exit status, stdout and stderr."""
    from types import SimpleNamespace

    from cluster.cli import main

    def run(*args):
        code = main(["emergence", *map(str, args)])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run


@pytest.mark.slow
def test_cli_on_a_table_prints_one_json_document(tmp_path, _cli):
    rng = np.random.default_rng(0)
    acc = 0.25 + 0.6 / (1 + np.exp(-(U - 21.5) / 0.1))
    measured = rng.binomial(400, acc) / 400
    rows = pd.DataFrame({"flops": np.concatenate([X, [0.0]]), "acc": np.concatenate([measured, [0.3]]),
                         "acc_se": np.concatenate([np.sqrt(acc * (1 - acc) / 400), [0.02]]),
                         "logprob": np.concatenate([-3 + 0.3 * (U - 18), [-3.0]]), "lp_se": 0.02, "family": "m"})
    path = tmp_path / "models.csv"
    rows.to_csv(path, index=False)
    run = _cli(str(path), "--x-col", "flops", "--y-col", "acc", "--y-col", "logprob", "--stderr-col", "acc_se",
               "--stderr-col", "lp_se", "--chance", "0.25", "--chance", "-10", "--metric-kind", "discontinuous",
               "--metric-kind", "continuous", "--group-col", "family", "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)  # exactly one JSON document
    assert [r["metric"] for r in doc["results"]] == ["acc", "logprob"]
    acc_r = doc["results"][0]
    assert acc_r["verdict"] == "emergent" and acc_r["group"] == "m" and acc_r["axis"] == "flops"
    assert set(acc_r) == {"group", "metric", "axis", "subset", "n_points", "verdict", "threshold", "midpoint",
                          "width_decades", "scores", "caveats"}
    assert doc["tests"] == 2 and doc["results"][0]["scores"]["level"] == doc["level"] / 2
    assert {"breakthroughness", "linearity"} <= set(acc_r["scores"])
    assert "1 row(s) with a missing or non-positive flops dropped" in run.stderr
    assert doc["results"][1]["verdict"] == "smooth"
    assert any("metric-induced" in c for c in acc_r["caveats"])
    # --n-items once applies to every --y-col
    once = _cli(str(path), "--x-col", "flops", "--y-col", "acc", "--n-items", "400", "--chance", "0.25")
    assert once.returncode == 0 and "acc vs flops (11 points, all rows): emergent" in once.stdout


def test_cli_exit_status_2_for_bad_tables(tmp_path, _cli):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"flops": X, "acc": ["oops"] * 11}).to_csv(path, index=False)
    run = _cli(str(path), "--x-col", "flops", "--y-col", "acc")
    assert run.returncode == 2 and "non-numeric" in run.stderr
    run = _cli(str(path), "--x-col", "flops", "--y-col", "missing")
    assert run.returncode == 2 and "not in the table" in run.stderr
    run = _cli(str(path), "--x-col", "flops", "--y-col", "acc", "--y-col", "acc", "--chance", "1", "--chance", "2",
               "--chance", "3")
    assert run.returncode == 2 and "--chance is given 3 times for 2 --y-col" in run.stderr


@pytest.mark.slow
def test_cli_on_a_sweep_folder_writes_emergence_json_for_the_report(tmp_path, _cli):
    from tests.analysis.report_data import make_results

    folder = make_results(tmp_path / "sweep", budgets=np.geomspace(1e17, 1e20, 7), sizes_per_budget=3, samples=False)
    (folder / "emergence.json").unlink()
    run = _cli(str(folder), "--format", "json", "--bootstrap", "50")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert json.loads((folder / "emergence.json").read_text()) == doc
    axes = {r["axis"] for r in doc["results"]}
    assert axes == {"n_params", "data_units", "flops", "final_loss"}
    flops = {r["metric"]: r for r in doc["results"] if r["axis"] == "flops"}
    # the synthetic exact match rises from 5% to 95% between C = 1e18 and 1e19 (midpoint 3e18)
    # while its log-probability rises smoothly; against C, on the compute frontier (one trial a budget)
    exact = flops["addition/exact_match"]
    assert exact["verdict"] == "emergent" and exact["subset"].startswith("the compute frontier (")
    assert exact["threshold"]["low"] < 3e18 < exact["midpoint"] * 3 and exact["midpoint"] < 1e19
    assert any("metric-induced" in c for c in exact["caveats"])
    assert flops["addition/logprob"]["verdict"] == "smooth"
    assert doc["tests"] == sum(r["verdict"] != "not_enough_data" for r in doc["results"])


def test_a_grid_sweep_tests_n_at_the_largest_d_and_records_the_subset(tmp_path):
    """On a grid, each N's metric is read at the largest D (a blend over D would hide the
    jump), D at the largest N, and the JSON says which subset each verdict used."""
    from analysis.emergence_tables import detect_sweep
    from analysis.records import EVALS, TRIALS, chance_of, stderr_of
    from tests.analysis.report_data import _row

    sizes, budgets = [1e5, 2e5, 4e5, 8e5, 1.6e6, 3.2e6], [1e8, 1e9]
    trials, evals = [], []
    for n in sizes:
        for d in budgets:
            tid = f"t-{n:.0e}-{d:.0e}"
            trials.append(_row(tid, n, d, 6 * n * d, 3.0 - 0.1 * np.log10(n * d)))
            acc = 0.9 if (d == budgets[-1] and n >= 8e5) else 0.0  # only the long runs of the large sizes
            for metric, value in (("add/exact_match", acc), (stderr_of("add/exact_match"), 0.01),
                                  (chance_of("add/exact_match"), 0.0)):
                evals.append((tid, 1, d, 6 * n * d, metric, value))
    pd.DataFrame(trials).to_parquet(tmp_path / TRIALS.file, index=False)
    pd.DataFrame(evals, columns=EVALS.names).to_parquet(tmp_path / EVALS.file, index=False)
    results, _, tests = detect_sweep(str(tmp_path), bootstrap=0)
    by_axis = {r.axis: r for r in results}
    n_axis = by_axis[TRIALS.n_params]
    assert n_axis.subset == "trials at the largest data_units (1e+09)" and n_axis.n_points == len(sizes)
    assert n_axis.verdict == "emergent" and (n_axis.threshold["low"], n_axis.threshold["high"]) == (4e5, 8e5)
    assert by_axis[TRIALS.data_units].subset.startswith("trials at the largest n_params")
    assert by_axis[TRIALS.data_units].verdict == "not_enough_data"  # two budgets
    assert tests == sum(r.verdict != "not_enough_data" for r in results)
    assert n_axis.scores["level"] == pytest.approx(LEVEL / tests)


def test_published_style_curves_with_item_counts():
    """Eight sizes as a published family (125M to 175B), accuracies over many items. Item
    counts give each score's sampling error, not the model-to-model scatter: the errors are
    scaled up to the scatter (quasi-likelihood), so a wobbly flat task stays flat and a jump
    stays a jump."""
    x = np.array([125e6, 350e6, 760e6, 1.3e9, 2.7e9, 6.7e9, 13e9, 175e9])
    flat = analyse_series(x[:6], np.array([.25, .26, .24, .26, .25, .27]), MetricSpec("acc", n_items=14000, chance=.25))
    assert flat.verdict == "flat" and any("scatter" in c and "scaled up" in c for c in flat.caveats)
    jump = analyse_series(x, np.array([.25, .26, .24, .26, .27, .30, .45, .60]), MetricSpec("acc", n_items=14000, chance=.25))
    assert jump.verdict == "emergent" and jump.threshold["high"] <= 13e9
    # a rise caught mid-way: its first point is weak (2.6 se), the sigmoid through it is sharp
    late = analyse_series(x, np.array([.01, .01, .02, .01, .02, .03, .35, .8]), MetricSpec("acc", n_items=1000, chance=0.0))
    assert late.verdict == "emergent" and late.scores["transition"] == "sigmoid"
    assert (late.threshold["low"], late.threshold["high"]) == (6.7e9, 13e9)
    smooth = analyse_series(x, np.array([.43, .54, .60, .64, .67, .70, .72, .76]), MetricSpec("acc", n_items=5153))
    assert smooth.verdict == "smooth"
