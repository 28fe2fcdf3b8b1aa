"""The rows the driver writes: every contract column, shape fields under their own names, and
a TrialConfig of every kind through its JSON form and back."""

from __future__ import annotations

import dataclasses

import pytest

from analysis.records import SHAPE_PREFIX, TRIALS, Role
from cluster.results import planned_row, trials_frame
from experiments.planner import TrialConfig, plan
from experiments.spec import load_spec

DIFFUSION = """\
name: noise
family: diffusion
model:
  noise_schedule: linear
  sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]
budgets: {samples: [1024]}
data: {source: procedural}
training: {batch_size: 16}
evaluation: {validation_samples: 64}
"""
KINDS = {
    "point": "name: p\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\nbudgets: {tokens: [8192]}\n"
             "training: {batch_size: 4, seq_len: 32}\nevaluation: {validation_tokens: 1024}\n",
    "wsd + lr search": "name: w\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\n"
                       "budgets: {tokens: [12800, 25600]}\n"
                       "training: {batch_size: 4, seq_len: 32, schedule: wsd, lr: {search: [1.0e-3, 3.0e-3]}}\n"
                       "evaluation: {validation_tokens: 1024}\n",
    "probes": "name: pr\nmodel: {sizes: [{params: 2e4}]}\nbudgets: {tokens: [8192]}\n"
              "probes: {tasks: [walk, recall], mix_rate: 0.5, eval_items: 32}\n"
              "training: {batch_size: 4, seq_len: 32}\nevaluation: {validation_tokens: 1024}\n",
    "isoflop": "name: i\nmodel: {sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]}\n"
               "budgets: {kind: isoflop, flops: [1e10]}\ntraining: {batch_size: 4, seq_len: 32}\n"
               "evaluation: {validation_tokens: 1024}\n",
    "images": DIFFUSION,
    "vae": "name: v\nfamily: vae\nmodel: {likelihood: bernoulli, iw_samples: 2, sizes: [{width: 4, depth: 1, latent: 4}]}\n"
           "budgets: {samples: [256]}\ndata: {source: digits}\ntraining: {batch_size: 16}\n",
    "gan": "name: g\nfamily: gan\nmodel: {gan_loss: ns, sizes: [{width: 4, depth: 1, latent: 8, workers: 2}]}\n"
           "budgets: {samples: [256]}\ndata: {source: digits}\ntraining: {batch_size: 16}\n",
}


def test_a_diffusion_noise_schedule_does_not_overwrite_the_lr_schedule(write_spec):
    """Shape fields once spread into the row and then lost to the sweep's own columns: a
    diffusion sweep with noise_schedule linear recorded schedule cosine."""
    (trial,) = plan(*load_spec(write_spec(DIFFUSION)))
    row = planned_row(trial)
    assert row[TRIALS.shape("noise_schedule")] == "linear"
    assert row[TRIALS.schedule] == "cosine"
    frame = trials_frame({trial.trial_id: row})
    assert frame[TRIALS.shape("noise_schedule")].iloc[0] == "linear" and frame[TRIALS.schedule].iloc[0] == "cosine"


@pytest.mark.parametrize("kind", KINDS)
def test_rows_hold_every_contract_column_and_the_shape_under_its_prefix(kind, write_spec):
    for trial in plan(*load_spec(write_spec(KINDS[kind]))):
        row = planned_row(trial)
        TRIALS.check_row(row)  # every column, nothing else but shape columns
        shape = {k[len(SHAPE_PREFIX):]: v for k, v in row.items() if k.startswith(SHAPE_PREFIX)}
        assert shape == dataclasses.asdict(trial.shape)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_trial_config_round_trips_through_json(kind, write_spec):
    trials = plan(*load_spec(write_spec(KINDS[kind])))
    for trial in trials:
        back = TrialConfig.from_json(trial.to_json())
        assert back == trial and type(back.shape) is type(trial.shape)
        assert isinstance(back.role, Role) and back.to_json() == trial.to_json()
    if kind == "wsd + lr search":
        assert {t.role for t in trials} == {Role.TRUNK, Role.BRANCH, Role.LR_SEARCH}


def test_check_row_names_what_is_missing_and_what_is_foreign(write_spec):
    (trial,) = plan(*load_spec(write_spec(KINDS["point"])))
    row = planned_row(trial)
    with pytest.raises(KeyError, match="missing \\['final_loss'\\]"):
        TRIALS.check_row({k: v for k, v in row.items() if k != TRIALS.final_loss})
    with pytest.raises(KeyError, match="not in the contract \\['d_model'\\]"):
        TRIALS.check_row({**row, "d_model": 16})


def test_the_summary_averages_a_points_seeds_and_adds_bits_per_byte(write_spec):
    import math

    from analysis.records import Status
    from cluster.cli import summary_table

    spec, located = load_spec(write_spec(KINDS["point"].replace("training: {", "training: {seeds: 2, ")))
    rows = {t.trial_id: planned_row(t) for t in plan(spec, located)}
    for i, row in enumerate(rows.values()):  # two seeds of one point: losses 2.0 and 3.0
        row.update({TRIALS.status: Status.COMPLETED.value, TRIALS.final_loss: 2.0 + i, TRIALS.bytes_per_token: 2.0,
                    TRIALS.final_bpb: (2.0 + i) / math.log(2) / 2.0})
    text = summary_table(trials_frame(rows))
    assert "(mean of up to 2 seeds)" in text and "2.5000" in text
    assert "bits per byte" in text and f"{2.5 / math.log(2) / 2:.4f}" in text
