"""``scalinglab fit``: tables in, one JSON document or a readable summary out; bad input exits 2."""

import json

import numpy as np
import pandas as pd
import pytest

from cluster.cli import main
from tests.analysis.test_laws import chinchilla_points


@pytest.fixture
def points_csv(tmp_path):
    df = chinchilla_points(0, 0.0025).rename(columns={"n_params": "params", "data_units": "tokens", "final_loss": "loss"})
    df.loc[0, "loss"] = np.nan
    df.loc[1, "params"] = -5
    path = tmp_path / "points.csv"
    df.to_csv(path, index=False)
    return path


def test_fit_json_is_one_document_in_the_documented_shape(points_csv, capsys):
    code = main(["fit", str(points_csv), "--law", "chinchilla", "--n-col", "params", "--d-col", "tokens",
                 "--loss-col", "loss", "--predict", "N=1e11,D=2e12", "--predict", "C=1e24",
                 "--bootstrap", "40", "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)  # exactly one JSON document on stdout
    (fit,) = doc["fits"]
    assert fit["law"] == "chinchilla" and fit["n_points"] == 34 and fit["dropped"] == 2
    assert set(fit["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert set(fit["derived"]) >= {"a", "b"}
    for iv in fit["params"].values():
        assert set(iv) == {"value", "low", "high"} and iv["low"] <= iv["value"] <= iv["high"]
    assert 0.9 < fit["r2_log"] <= 1
    first, second = fit["predictions"]
    assert first["N"] == 1e11 and first["D"] == 2e12 and first["C"] == pytest.approx(1.2e24)
    # the largest ratio over the axes: C = 1.2e24 against 6e22 in the data (N alone: 10x)
    assert first["extrapolation"] == pytest.approx(20.0) and first["extrapolation_by_axis"]["N"] == pytest.approx(10.0)
    assert set(first["loss"]) == {"value", "low", "high"}
    assert second["C"] == 1e24 and "N" in second
    # the split's N, D and tokens per parameter stay numbers, their intervals beside them
    for key in ("N", "D", "D_per_N"):
        iv = second[f"{key}_interval"]
        assert isinstance(second[key], float) and iv["low"] <= second[key] <= iv["high"]
    # no FLOPs column: the 6ND fallback, said
    assert fit["diagnostics"]["compute"]["convention"] == "6ND"
    assert "approaches" in doc  # null here: one approach only
    assert "dropped 2 row(s)" in err  # warnings go to stderr


def test_fit_default_laws_and_text_summary(points_csv, capsys):
    code = main(["fit", str(points_csv), "--n-col", "params", "--d-col", "tokens", "--loss-col", "loss", "--bootstrap", "0"])
    out = capsys.readouterr().out
    assert code == 0
    for law in ("chinchilla:", "power_N:", "power_D:", "kaplan_C:"):
        assert law in out
    assert "alpha" in out and "held-out" in out


def test_the_bootstrap_gives_the_same_intervals_on_one_process_or_two(points_csv, capsys):
    fits = []
    for jobs in ("1", "2"):
        code = main(["fit", str(points_csv), "--law", "chinchilla", "--n-col", "params", "--d-col", "tokens",
                     "--loss-col", "loss", "--bootstrap", "100", "--jobs", jobs, "--format", "json"])
        assert code == 0
        fits.append(json.loads(capsys.readouterr().out)["fits"][0])
    one, two = fits  # equal but for summation order (each worker's Newton batch has other rows)
    for group in ("params", "derived"):
        for name, iv in one[group].items():
            assert iv == pytest.approx(two[group][name], rel=1e-9), name
    assert one["diagnostics"]["bootstrap_check"] == two["diagnostics"]["bootstrap_check"]


@pytest.mark.parametrize("args, message", [
    (["--n-col", "nope"], "missing column(s) 'nope' (N)"),
    (["--law", "quadratic"], "unknown law"),
    (["--predict", "X=3"], "expected comma-separated"),
    (["--jobs", "0"], "--jobs 0: expected a number of processes >= 1"),
])
def test_fit_bad_input_exits_2_with_one_line(points_csv, capsys, args, message):
    code = main(["fit", str(points_csv), "--loss-col", "loss", "--n-col", "params", "--d-col", "tokens", *args,
                 "--bootstrap", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_a_compute_only_table_fits_the_compute_laws_and_a_named_column_must_exist(tmp_path, capsys):
    c = np.geomspace(1e15, 1e20, 8)
    table = tmp_path / "published.csv"
    pd.DataFrame({"flops": c, "final_loss": 2.0 + 30 * c ** -0.1}).to_csv(table, index=False)
    assert main(["fit", str(table), "--bootstrap", "0", "--format", "json"]) == 0
    laws = [f["law"] for f in json.loads(capsys.readouterr().out)["fits"]]
    assert laws == ["power_C", "kaplan_C"]
    assert main(["fit", str(table), "--n-col", "params", "--bootstrap", "0"]) == 2
    assert "missing column(s) 'params' (N)" in capsys.readouterr().err


def test_fit_rejects_non_numeric_and_missing_files(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"n_params": ["a", "b"], "data_units": [1, 2], "final_loss": [1, 2]}).to_csv(bad, index=False)
    assert main(["fit", str(bad)]) == 2
    assert "not numeric" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_n_count_total_fits_every_parameter_and_says_which(tmp_path, capsys):
    df = chinchilla_points(0, 0.0025)
    df["total_params"] = df["n_params"] * 1.5 + 1e6
    df["flops"] = 6 * df["n_params"] * df["data_units"] * 1.2
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    assert main(["fit", str(path), "--law", "chinchilla", "--bootstrap", "0", "--format", "json"]) == 0
    scaling = json.loads(capsys.readouterr().out)["fits"][0]
    assert main(["fit", str(path), "--law", "chinchilla", "--bootstrap", "0", "--n-count", "total",
                 "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["fits"][0]
    assert scaling["diagnostics"]["n_column"] == "n_params" and total["diagnostics"]["n_column"] == "total_params"
    assert total["params"]["alpha"]["value"] != pytest.approx(scaling["params"]["alpha"]["value"], rel=1e-3)
    assert scaling["diagnostics"]["compute"]["convention"] == "flops column"
    assert main(["fit", str(path), "--law", "chinchilla", "--bootstrap", "0"]) == 0
    assert "C = the FLOPs the trials cost" in capsys.readouterr().out
