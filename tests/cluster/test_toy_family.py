"""Adding a family is one module: this test module defines a toy family, registers it, and a
real sweep plans, trains and fits it, with no edit anywhere else (not in experiments/spec.py,
not in the registry's table). Ray workers find the family through the module recorded in each
trial's config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.fit import fit_laws
from analysis.records import TRIALS, DataUnit, Metric, Status
from cluster.sweep import run_sweep
from experiments.planner import plan
from experiments.spec import load_spec
from models.family import ModelFamily, doc_field, family_names, register


@dataclass(frozen=True, kw_only=True)
class BigramSize:
    width: int = doc_field(doc="embedding width: the rank of the bigram table")


@dataclass(frozen=True, kw_only=True)
class BigramShape:
    width: int
    vocab: int = 256
    context: int = 32


class LowRankBigram(nn.Module):
    def __init__(self, shape: BigramShape) -> None:
        super().__init__()
        self.embed = nn.Embedding(shape.vocab, shape.width)
        self.out = nn.Linear(shape.width, shape.vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(idx))


@register("toy-bigram")
class BigramFamily(ModelFamily):
    """Next token from the current one through a rank-``width`` table."""

    tag = "toy"
    data_unit = DataUnit.TOKENS
    loss_unit = "nats/token"
    metrics = (Metric("loss", "nats/token", "held-out next-token cross-entropy"),)
    size_type, shape_type = BigramSize, BigramShape

    def build(self, shape: BigramShape) -> nn.Module:
        return LowRankBigram(shape)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(batch[:, :-1]).float().flatten(0, 1), batch[:, 1:].flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        losses = [(self.loss(model, b).item(), b[:, 1:].numel()) for b in batches]
        return {"loss": sum(v * n for v, n in losses) / sum(n for _, n in losses)}

    def example_batch(self, shape: BigramShape, batch_size: int) -> torch.Tensor:
        return torch.randint(0, shape.vocab, (batch_size, shape.context + 1))

    def tiny(self) -> BigramShape:
        return BigramShape(width=4)


SPEC = """\
name: toy
family: toy-bigram
model:
  sizes: [{width: 2}, {width: 4}, {width: 8}, {width: 32}]
budgets: {tokens: [8192]}
training: {batch_size: 8, seq_len: 16, lr: 3.0e-2}
evaluation: {validation_tokens: 2048, points: 2}
"""


def test_the_toy_family_is_registered_and_its_sizes_parse_through_its_own_dataclass(write_spec):
    assert "toy-bigram" in family_names()
    trials = plan(*load_spec(write_spec(SPEC)))
    assert len(trials) == 4 and {t.shape.width for t in trials} == {2, 4, 8, 32}
    assert all(t.shape.context == 16 and t.family_module == __name__ for t in trials)
    assert trials[0].trial_id.startswith("toy-n")
    bad = write_spec(SPEC.replace("{width: 2}", "{width: 2, depth: 3}"), name="bad.yaml")
    with pytest.raises(ValueError, match=r"model.sizes.0.depth: unknown field; expected one of "
                                         r"\['params', 'width', 'workers', 'zero_stage'\]"):
        load_spec(bad)


@pytest.mark.ray
@pytest.mark.slow
def test_a_family_registered_in_a_test_module_plans_trains_and_fits(write_spec, tmp_path, ray_session):
    outcome = run_sweep(str(write_spec(SPEC)), storage=str(tmp_path / "out"))
    trials = outcome.trials
    assert outcome.ok, trials[[TRIALS.trial_id, TRIALS.status, TRIALS.error]]
    assert (trials[TRIALS.family] == "toy-bigram").all() and set(trials[TRIALS.shape("width")]) == {2, 4, 8, 32}
    # trained: every model beats the uniform guess, and the widest beats the narrowest
    assert (trials[TRIALS.final_loss] < torch.log(torch.tensor(256.0)).item()).all()
    by_n = trials.sort_values(TRIALS.n_params)[TRIALS.final_loss].to_numpy()
    assert by_n[-1] < by_n[0], by_n
    (fit,) = fit_laws(trials, laws=["kaplan_N"], bootstrap=20, log=lambda m: None)
    assert fit.n_points == 4 and fit.params["alpha"].value > 0 and fit.params["alpha"].low < fit.params["alpha"].high
    assert isinstance(trials, pd.DataFrame) and (trials[TRIALS.status] == Status.COMPLETED).all()
    assert dataclasses.is_dataclass(BigramShape)
