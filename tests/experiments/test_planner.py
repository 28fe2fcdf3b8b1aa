
import pytest

from experiments.planner import TrialConfig, eval_steps, plan
from experiments.spec import load_spec
from models import get_family
from tests.conftest import MINIMAL_SPEC

FAMILY = get_family("transformer")


def _plan(write_spec, text):
    spec, located = load_spec(write_spec(text))
    return plan(spec, located)


def test_grid_is_every_size_times_every_budget_with_exact_accounting(write_spec):
    trials = _plan(write_spec, MINIMAL_SPEC)
    assert len(trials) == 4 and len({t.trial_id for t in trials}) == 4
    for t in trials:
        assert t.units_per_step == 4 * 32
        assert t.data_units == t.steps * t.units_per_step <= t.data_units_planned
        assert t.data_units_planned - t.data_units < t.units_per_step
        shape = t.shape
        assert t.flops_per_unit == FAMILY.flops_per_unit(shape)
        assert t.flops == pytest.approx(t.flops_per_unit * t.data_units)
        assert t.n_params == FAMILY.num_params(shape).scaling
    assert {t.data_units_planned for t in trials} == {4096.0, 8192.0}
    # largest compute first, so long trials start early
    assert [t.flops for t in trials] == sorted((t.flops for t in trials), reverse=True)


def test_isoflop_derives_tokens_from_compute_and_flops_per_token(write_spec):
    text = MINIMAL_SPEC.replace("budgets:\n  tokens: [4096, 8192]", "budgets:\n  kind: isoflop\n  flops: [2e9, 8e9]")
    trials = _plan(write_spec, text)
    assert len(trials) == 4
    for t in trials:
        assert t.compute_budget in (2e9, 8e9)
        assert t.data_units_planned == pytest.approx(t.compute_budget / t.flops_per_unit)
        # the trial spends its budget to within one optimizer step
        assert t.compute_budget - t.units_per_step * t.flops_per_unit < t.flops <= t.compute_budget
    small = [t for t in trials if t.compute_budget == 2e9]
    big_model, small_model = sorted(small, key=lambda t: -t.n_params)
    assert big_model.data_units < small_model.data_units  # same compute: bigger model sees fewer tokens


def test_sizes_from_params_use_the_aspect_ratio_rule(write_spec):
    text = MINIMAL_SPEC.replace(
        "    - {d_model: 16, n_layers: 1, n_heads: 1}\n    - {d_model: 32, n_layers: 1, n_heads: 2}",
        "    - {params: 2e5}\n    - {params: 2e6}")
    text += "model_extra: 1\n"
    with pytest.raises(Exception, match="model_extra"):
        _plan(write_spec, text)
    trials = _plan(write_spec, text.replace("model_extra: 1\n", ""))
    for t in trials:
        assert t.shape.d_model % 16 == 0
    ns = sorted({t.n_params for t in trials})
    assert 0.6 < ns[0] / 2e5 < 1.6 and 0.6 < ns[1] / 2e6 < 1.6


def test_per_size_workers_and_zero_stage_override(write_spec):
    text = MINIMAL_SPEC.replace("{d_model: 32, n_layers: 1, n_heads: 2}",
                                "{d_model: 32, n_layers: 1, n_heads: 2, workers: 2, zero_stage: 2}")
    trials = _plan(write_spec, text)
    big = [t for t in trials if t.shape.d_model == 32]
    assert all(t.workers == 2 and t.zero_stage == 2 for t in big)
    assert all(t.workers == 1 and t.zero_stage == 0 for t in trials if t not in big)


def test_eval_steps_are_log_spaced_and_end_at_the_budget():
    steps = eval_steps(1000, 6)
    assert steps[-1] == 1000 and len(steps) == 6
    ratios = [b / a for a, b in zip(steps, steps[1:])]
    assert max(ratios) / min(ratios) < 1.3  # geometric spacing
    assert eval_steps(3, 6) == (1, 2, 3)  # short trials: as many distinct points as exist
    assert eval_steps(50, 1) == (50,)


def test_trial_config_survives_json(write_spec):
    for t in _plan(write_spec, MINIMAL_SPEC):
        assert TrialConfig.from_json(t.to_json()) == t


def test_seeds_replicate_every_point_with_its_own_seed(write_spec):
    one = _plan(write_spec, MINIMAL_SPEC)
    three = _plan(write_spec, MINIMAL_SPEC.replace("training: {batch_size: 4, seq_len: 32}",
                                                           "training: {batch_size: 4, seq_len: 32, seeds: 3}"))
    assert len(three) == 3 * len(one) and len({t.trial_id for t in three}) == len(three)
    by_point = {}
    for t in three:
        by_point.setdefault((t.n_params, t.data_units), []).append(t.seed)
    assert all(sorted(seeds) == [0, 1, 2] for seeds in by_point.values())
    assert {t.trial_id.rsplit("-s", 1)[1] for t in three} == {"0", "1", "2"}
