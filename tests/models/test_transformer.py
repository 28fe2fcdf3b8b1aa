import math

import pytest
import torch

from models import get_family
from models.family import DataShape
from models.flops import measured_flops_per_unit
from models.transformer import TransformerOptions, TransformerShape

FAMILY = get_family("transformer")
SHAPES = [
    TransformerShape(d_model=32, n_layers=2, n_heads=2, context=32),
    TransformerShape(d_model=64, n_layers=3, n_heads=4, context=64),
    TransformerShape(d_model=128, n_layers=2, n_heads=8, context=128, vocab=512),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s.d_model}-l{s.n_layers}")
def test_param_counts_match_the_built_model(shape):
    model = FAMILY.build(shape)
    counts = FAMILY.num_params(shape)
    assert counts.total == sum(p.numel() for p in model.parameters())
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    assert counts.scaling == counts.total - embeddings  # Kaplan's non-embedding N


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s.d_model}-l{s.n_layers}")
def test_analytic_flops_within_10_percent_of_flop_counter(shape):
    batch = torch.randint(0, shape.vocab, (2, shape.context + 1))
    measured = measured_flops_per_unit(FAMILY, shape, batch)
    analytic = FAMILY.flops_per_unit(shape)
    assert abs(measured - analytic) / measured < 0.10, (measured, analytic)


def test_flops_per_token_is_six_n_plus_attention_and_head():
    shape = SHAPES[1]
    n = FAMILY.num_params(shape).scaling
    expected = 6 * n + 12 * shape.n_layers * shape.context * shape.d_model + 6 * shape.d_model * shape.vocab
    assert FAMILY.flops_per_unit(shape) == expected


@pytest.mark.parametrize("target", [1e4, 1e5, 1e6, 1e7])
def test_shape_from_params_lands_near_target_with_the_aspect_rule(target):
    shape = FAMILY.shape_from_params(int(target), TransformerOptions(aspect_ratio=32, head_dim=16),
                                     DataShape(context=128, vocab=256))
    n = FAMILY.num_params(shape).scaling
    assert 0.6 < n / target < 1.6
    assert shape.d_model % 16 == 0 and shape.n_heads == shape.d_model // 16
    if target >= 1e6:  # the rule d ≈ 32·L holds once depth can be more than 1
        assert 16 <= shape.d_model / shape.n_layers <= 64


def test_attention_is_causal():
    shape = FAMILY.tiny()
    model = FAMILY.build(shape).eval()
    x = torch.randint(0, shape.vocab, (1, shape.context))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % shape.vocab
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_evaluate_is_token_weighted_mean_in_nats():
    shape = FAMILY.tiny()
    model = FAMILY.build(shape)
    batches = [torch.randint(0, shape.vocab, (3, shape.context + 1)), torch.randint(0, shape.vocab, (1, 9))]
    metrics = FAMILY.evaluate(model, batches)
    with torch.no_grad():
        per_token = torch.cat([
            torch.nn.functional.cross_entropy(
                model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten(), reduction="none")
            for b in batches])
    assert metrics["loss"] == pytest.approx(per_token.mean().item(), rel=1e-5)
    assert metrics["bits_per_token"] == pytest.approx(metrics["loss"] / math.log(2))
    # an untrained model is close to uniform over the vocabulary
    assert abs(metrics["loss"] - math.log(shape.vocab)) < 0.5


def test_bad_shapes_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        TransformerShape(d_model=30, n_layers=1, n_heads=4)
    with pytest.raises(ValueError, match="n_layers"):
        TransformerShape(d_model=32, n_layers=0, n_heads=2)
