"""Every built-in family honours the protocol (models.family.ModelFamily): one test covers
them all, and a new one gets it for free once it is in ``models.family.BUILTIN``. (Families
registered by other test modules, such as the toy one, are left out: the parameters must not
depend on which modules pytest collected first.)"""

import dataclasses
import math

import pytest
import torch

from analysis.records import SHAPE_PREFIX, TRIALS, DataUnit
from experiments.cache import FileCache
from models import ModelFamily, get_family
from models.family import BUILTIN, SIZE_KEYS, DataShape, Preparation, register

FAMILIES = sorted(BUILTIN)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_conforms_to_protocol(name):
    family = get_family(name)
    assert isinstance(family, ModelFamily)
    assert family.name == name and isinstance(family.data_unit, DataUnit)
    assert [m.name for m in family.metrics][0] == "loss" and family.loss_unit and family.tag
    shape = family.tiny()
    assert isinstance(shape, family.shape_type)
    model = family.build(shape)
    counts = family.num_params(shape)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert 0 < counts.scaling <= counts.total
    assert family.flops_per_unit(shape) > 6 * counts.scaling * 0.9


@pytest.mark.parametrize("name", FAMILIES)
def test_family_config_is_frozen_documented_dataclasses(name):
    family = get_family(name)
    for kind in (family.size_type, family.options_type, family.shape_type):
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen
    for kind in (family.size_type, family.options_type):  # what the spec reference prints
        assert all(f.metadata.get("doc") for f in dataclasses.fields(kind)), kind
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(family.options_type))
    assert not {f.name for f in dataclasses.fields(family.size_type)} & set(SIZE_KEYS)
    # the tiny shape's size and options rebuild it through the spec's path
    tiny = family.tiny()
    size = family.size_type(**{f.name: getattr(tiny, f.name) for f in dataclasses.fields(family.size_type)})
    data = DataShape(**{f.name: getattr(tiny, f.name) for f in dataclasses.fields(DataShape) if hasattr(tiny, f.name)})
    assert family.shape(size, family.options_type(), data) == tiny
    # no shape column can collide with a contract column
    assert not {SHAPE_PREFIX + f.name for f in dataclasses.fields(family.shape_type)} & set(TRIALS.names)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_trains_and_evaluates_the_metrics_it_declares(name):
    family = get_family(name)
    shape = family.tiny()
    torch.manual_seed(0)
    model = family.build(shape)
    batch = family.example_batch(shape, 4)
    family.prepare(model, Preparation(train_data=lambda n: batch[:n], cache=FileCache()))
    before = family.evaluate(model, [batch])  # deterministic, unlike a noisy training loss
    assert list(before)[0] == "loss" and set(before) <= {m.name for m in family.metrics}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss = family.loss(model, batch)
        assert loss.dim() == 0 and math.isfinite(loss.item())
        loss.backward()
        opt.step()
    after = family.evaluate(model, [batch])
    assert math.isfinite(after["loss"])
    if family.networks(model) is not None:
        # adversarial (gan): two players, no joint objective that 20 steps on 4 images must
        # lower; training must still move the metric (test_gan.py checks the real step)
        assert after["loss"] != before["loss"]
    else:
        assert after["loss"] < before["loss"]  # it can fit one batch


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(KeyError, match="transformer"):
        get_family("no-such-family")


def test_the_registry_is_lazy_a_transformer_sweep_does_not_import_gan_metrics():
    import subprocess
    import sys

    code = ("import sys; from models import get_family; get_family('transformer'); "
            "print(sorted(m for m in sys.modules if m.startswith('models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "models.transformer" in out and "models.gan" not in out and "models.gan_metrics" not in out


def test_a_size_field_named_like_a_spec_key_is_refused_at_registration():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class BadSize:
        workers: int = 1

    class Bad(ModelFamily):
        size_type = shape_type = BadSize

    with pytest.raises(ValueError, match="size fields \\['workers'\\] are the spec's own keys"):
        register("bad-family")(Bad)
