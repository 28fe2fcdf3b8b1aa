"""Every way a spec can be wrong is rejected before launch, naming the file, line and field."""

import re

import pytest

from analysis.errors import UserError
from cluster.cli import main
from experiments.planner import plan
from experiments.spec import load_spec
from tests.conftest import MINIMAL_SPEC


def _load_and_plan(path):
    spec, located = load_spec(path)
    return plan(spec, located)


def test_minimal_spec_loads_with_documented_defaults(write_spec):
    spec, _ = load_spec(write_spec(MINIMAL_SPEC))
    assert spec.family == "transformer"
    assert spec.deepspeed.zero_stage == 0 and spec.deepspeed.precision == "fp32"
    assert spec.resources.workers == 1 and spec.data.source == "stdlib"
    assert spec.budgets.tokens == (4096.0, 8192.0)


def test_every_shipped_sweep_is_valid():
    from pathlib import Path

    sweeps = sorted(Path("experiments/sweeps").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        assert _load_and_plan(path)


@pytest.mark.parametrize(
    "mutation, field, message",
    [
        (("training: {batch_size: 4, seq_len: 32}", "training: {batch_size: 4, seq_len: 32, lrr: 1}"),
         "training.lrr", "unknown field"),
        (("name: tiny", "name: tiny\ncolour: red"), "colour", "unknown field"),
        (("training: {batch_size: 4, seq_len: 32}", "training: {batch_size: four, seq_len: 32}"),
         "training.batch_size", "expected a number"),
        (("training: {batch_size: 4, seq_len: 32}", "training: {batch_size: 4.5, seq_len: 32}"),
         "training.batch_size", "whole number"),
        (("budgets:\n  tokens: [4096, 8192]", "budgets:\n  tokens: [64, 8192]"),
         "budgets.tokens.0", "one optimizer step needs 128 tokens"),
        (("budgets:\n  tokens: [4096, 8192]", "budgets:\n  kind: isoflop\n  flops: [1e3]"),
         "budgets.flops.0", "too large"),
        (("budgets:\n  tokens: [4096, 8192]", "budgets:\n  kind: isoflop\n  tokens: [1e3]"),
         "budgets", "needs a list of flops"),
        (("    - {d_model: 16, n_layers: 1, n_heads: 1}", "    - {d_model: 18, n_layers: 1, n_heads: 4}"),
         "model.sizes.0", "multiple of n_heads"),
        (("    - {d_model: 16, n_layers: 1, n_heads: 1}", "    - {params: 1e5, d_model: 16}"),
         "model.sizes.0", "either params or"),
        (("name: tiny", "name: tiny\ndeepspeed: {precision: fp16}"),
         "deepspeed.precision", "fp16 needs a GPU"),
        (("name: tiny", "name: tiny\ndeepspeed: {zero_stage: 4}"),
         "deepspeed.zero_stage", "expected one of [0, 1, 2, 3]"),
        (("name: tiny", "name: tiny\nresources: {workers: 3}"),
         "model.sizes.0", "divide evenly over 3 workers"),
        (("name: tiny", "name: tiny\ndata: {source: files, paths: [no/such/file.txt]}"),
         "data.paths.0", "file not found"),
        (("name: tiny", "name: tiny\ndata: {source: hub}"), "data", "needs name"),
        (("name: tiny", "name: tiny\nfamily: gpt9"), "family", "unknown model family"),
        (("name: tiny", "name: 'my sweep'"), "(top level)", "name must be"),
        (("evaluation: {validation_tokens: 1024, points: 3}", "evaluation: {validation_tokens: 8, points: 3}"),
         "evaluation.validation_tokens", "at least one sequence"),
    ],
)
def test_invalid_spec_is_rejected_naming_file_line_and_field(write_spec, mutation, field, message):
    old, new = mutation
    assert old in MINIMAL_SPEC
    path = write_spec(MINIMAL_SPEC.replace(old, new))
    with pytest.raises(UserError) as info:
        _load_and_plan(path)
    text = str(info.value)
    assert text.startswith(f"{path}:"), text
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(field)}: ", text), text
    assert message in text


def test_missing_required_field(write_spec):
    path = write_spec("name: x\nbudgets: {tokens: [1e4]}\n")
    with pytest.raises(UserError, match=r"spec.yaml:1: model: is required"):
        load_spec(path)


def test_duplicate_key_and_bad_yaml_and_missing_file(write_spec, tmp_path):
    with pytest.raises(UserError, match="name: appears twice"):
        load_spec(write_spec(MINIMAL_SPEC + "name: again\n"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(write_spec("name: [unclosed\n"))
    with pytest.raises(UserError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_cli_reports_a_bad_spec_in_one_line_with_exit_status_2(write_spec, capsys):
    path = write_spec(MINIMAL_SPEC.replace("seq_len: 32", "seq_len: 32, momentum: 0.9"))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training.momentum: unknown field" in err
    assert "Traceback" not in err


def test_cli_dry_run_prints_the_plan(write_spec, capsys):
    assert main(["sweep", str(write_spec(MINIMAL_SPEC)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials, total compute" in out
    assert "tfm-n3.31k-d4.1k-s0" in out and "ZeRO-0 fp32" in out
