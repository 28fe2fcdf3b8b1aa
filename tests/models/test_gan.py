"""The GAN family: its sample-quality metric (RotNet FD/KID), the feature network's cache,
failure flags, and the alternating step on real DeepSpeed engines."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from analysis.records import Status
from experiments.cache import FileCache
from experiments.image_data import load_images
from experiments.spec import DataSpec
from models import get_family
from models.gan import GANShape
from models.gan_metrics import distances, feature_network, health

FAMILY = get_family("gan")


@pytest.fixture(scope="module")
def digits():
    data = load_images(DataSpec(source="digits"), train_samples=1, validation_samples=256)
    return torch.from_numpy(data.train), torch.from_numpy(data.validation)


@pytest.fixture(scope="module")
def rotnet(digits):
    return feature_network(digits[0], FileCache())


def _signed(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1


@pytest.mark.slow
def test_feature_network_is_cached_by_content_hash(digits, tmp_path):
    cache = FileCache(tmp_path)
    train = digits[0][:512]
    first = feature_network(train, cache)
    assert not first.cache_hit and (tmp_path / first.cache_key).is_file() and "rotnet-" in first.cache_key
    again = feature_network(train, cache)
    assert again.cache_hit and again.cache_key == first.cache_key
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other = train.clone()
    other[0, 0, 0, 0] ^= 1  # one pixel of one image: another data set, another network
    assert feature_network(other, cache).cache_key != first.cache_key
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # written atomically


def test_fd_of_real_images_is_near_zero_against_themselves_and_large_against_noise(digits, rotnet):
    train, held_out = digits
    real = _signed(held_out)
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    same = distances(rotnet, real, real)
    other_digits = distances(rotnet, real, _signed(train[: len(real)]))
    vs_noise = distances(rotnet, real, noise)
    assert abs(same["fd"]) < 1e-3 * vs_noise["fd"]
    # KID is an unbiased estimate over random subsets drawn from each side: zero in expectation
    assert abs(same["kid"]) < 0.02 * vs_noise["kid"]
    assert same["diversity"] == pytest.approx(1.0)
    # other real digits (a different sample of the same distribution) sit far closer than noise
    assert other_digits["fd"] < 0.05 * vs_noise["fd"]
    assert vs_noise["fd"] > 10 * other_digits["fd"] and vs_noise["kid"] > 0


def test_metrics_are_deterministic_for_the_same_weights(digits, rotnet):
    torch.manual_seed(0)
    gan = FAMILY.build(GANShape(width=8, depth=1, latent=16)).eval()
    gan.context["features"] = rotnet
    val = [digits[1][:128], digits[1][128:]]
    first = FAMILY.evaluate(gan, val)
    torch.manual_seed(123)  # the global RNG plays no part
    second = FAMILY.evaluate(gan, val)
    assert first == second
    assert first["loss"] == first["fd_rotnet"] > 0
    assert {"kid_rotnet", "diversity", "d_loss", "g_loss", "d_accuracy"} <= set(first)


def test_a_generator_that_draws_one_image_is_flagged_as_collapsed(digits, rotnet):
    torch.manual_seed(0)
    gan = FAMILY.build(GANShape(width=8, depth=1, latent=16)).eval()
    gan.context["features"] = rotnet
    with torch.no_grad():  # the output conv: zero weights leave tanh(bias), one image
        gan.generator.body[-2].weight.zero_()
    metrics = FAMILY.evaluate(gan, [digits[1]])
    assert metrics["diversity"] < 1e-6
    status, caveat = health([{**metrics, "step": 100}])
    assert status == Status.COLLAPSED and "mode collapse" in caveat and "step 100" in caveat


def test_health_flags_divergence_and_passes_a_healthy_run():
    point = {"diversity": 0.9, "step": 1}
    assert health([{**point, "fd_rotnet": 30.0}, {**point, "fd_rotnet": 10.0}]) == (Status.COMPLETED, "")
    status, caveat = health([{**point, "fd_rotnet": 10.0}, {**point, "fd_rotnet": 31.0, "step": 7}])
    assert status == Status.DIVERGED and "rose from 10 to 31" in caveat and "step 7" in caveat
    assert health([{**point, "fd_rotnet": float("nan")}])[0] == Status.DIVERGED


def test_inception_fid_needs_its_weights_on_disk(digits, rotnet, tmp_path):
    shape = dataclasses.replace(FAMILY.tiny(), inception_weights=str(tmp_path / "missing.pth"))
    gan = FAMILY.build(shape).eval()
    gan.context["features"] = rotnet
    with pytest.raises(ValueError, match="model.inception_weights: no such file .*missing.pth"):
        FAMILY.evaluate(gan, [digits[1][:32]])


def test_inception_weights_are_a_spec_option_recorded_in_the_trial_config(write_spec, tmp_path):
    from experiments.planner import TrialConfig, plan
    from experiments.spec import load_spec

    weights = tmp_path / "pt_inception.pth"
    spec = write_spec(f"""\
        name: g
        family: gan
        model:
          inception_weights: {weights}
          sizes: [{{width: 4, depth: 1, latent: 8}}]
        budgets: {{samples: [256]}}
        data: {{source: digits}}
        training: {{batch_size: 16}}
        evaluation: {{validation_samples: 32}}
        """)
    (trial,) = plan(*load_spec(spec))
    assert trial.shape.inception_weights == str(weights)
    assert TrialConfig.from_json(trial.to_json()).shape.inception_weights == str(weights)


def test_counts_n_as_the_generator_and_records_the_discriminator():
    shape = GANShape(width=8, depth=1, latent=32)
    model = FAMILY.build(shape)
    counts = FAMILY.num_params(shape)
    assert counts.scaling == sum(p.numel() for p in model.generator.parameters())
    assert counts.total - counts.scaling == sum(p.numel() for p in model.discriminator.parameters()) > 0
    # one measured step covers both networks: more than the generator's 6N per image alone
    assert FAMILY.flops_per_unit(shape) > 6 * counts.total


def _engines(gan, zero_stage: int, lr: float = 1e-2):
    import deepspeed

    from experiments.engine_set import EngineSet

    config = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": zero_stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1,
              "gradient_clipping": 0.0}  # DeepSpeed's default clips at 1.0
    engines = {}
    for name, net in FAMILY.networks(gan).items():
        opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.0, 0.99), weight_decay=0.0)
        engines[name], *_ = deepspeed.initialize(model=net, optimizer=opt, config=config)
    return EngineSet(gan, engines)


def _reference_steps(gan, batches, seed: int, lr: float = 1e-2) -> None:
    """The alternating step written out with plain torch optimizers."""
    from models.gan import discriminator_loss, generator_loss

    g, d = gan.generator, gan.discriminator
    opt_g = torch.optim.AdamW(g.parameters(), lr=lr, betas=(0.0, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(d.parameters(), lr=lr, betas=(0.0, 0.99), weight_decay=0.0)
    torch.manual_seed(seed)
    for batch in batches:
        real = _signed(batch)
        z = torch.randn(len(batch), gan.shape.latent)
        with torch.no_grad():
            fake = g(z)
        scores = d(torch.cat([real, fake]))
        opt_d.zero_grad()
        discriminator_loss("hinge", scores[: len(real)], scores[len(real):]).backward()
        opt_d.step()
        opt_g.zero_grad()
        generator_loss("hinge", d(g(z))).backward()  # D's share is zeroed before D's next step
        opt_g.step()
        g.update_ema()


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_alternating_step_on_deepspeed_engines_matches_plain_torch(process_group, digits, zero_stage):
    """Two engines, two optimizers: D's weights take no gradient from G's loss (a leak would
    show from the second step on), under every ZeRO stage that partitions gradients."""
    shape = GANShape(width=4, depth=1, latent=8)
    batches = [digits[0][i * 8:(i + 1) * 8] for i in range(3)]
    torch.manual_seed(0)
    reference = FAMILY.build(shape)
    torch.manual_seed(0)
    trained = FAMILY.build(shape)
    _reference_steps(reference, batches, seed=5)
    engines = _engines(trained, zero_stage)
    torch.manual_seed(5)
    for batch in batches:
        out = FAMILY.train_step(engines, batch)
        assert set(out) == {"loss", "d_loss"} and all(torch.isfinite(v) for v in out.values())
    assert all(p.requires_grad for p in trained.discriminator.parameters())  # unfrozen again
    ref_state, state = reference.state_dict(), trained.state_dict()
    assert ref_state.keys() == state.keys()
    for key in ref_state:
        assert torch.allclose(ref_state[key].float(), state[key].float(), atol=1e-5), key
    assert int(trained.generator.ema_updates) == 3


def test_gan_options_are_checked_by_the_planner(write_spec):
    from analysis.errors import UserError
    from experiments.planner import plan
    from experiments.spec import load_spec

    base = """\
        name: g
        family: {family}
        model:
          gan_loss: ns
          sizes: [{{width: 4, depth: 1, latent: 8}}]
        budgets: {{samples: [256]}}
        data: {{source: digits}}
        training: {{batch_size: 16, schedule: {schedule}}}
        evaluation: {{validation_samples: 32}}
        """
    trials = plan(*load_spec(write_spec(base.format(family="gan", schedule="cosine"))))
    assert len(trials) == 1 and trials[0].shape.gan_loss == "ns"
    assert trials[0].total_params > trials[0].n_params
    with pytest.raises(UserError, match=r"model.gan_loss: unknown field; expected one of \['iw_samples', 'likelihood', 'sizes'\]"):
        plan(*load_spec(write_spec(base.format(family="vae", schedule="cosine"))))
    with pytest.raises(UserError, match="training.schedule.*several networks.*use cosine"):
        plan(*load_spec(write_spec(base.format(family="gan", schedule="wsd"))))


def test_tiny_shape_is_a_dataclass_of_plain_values():
    shape = FAMILY.tiny()
    assert dataclasses.asdict(shape)["gan_loss"] == "hinge"
    with pytest.raises(ValueError, match="gan_loss must be one of"):
        GANShape(width=4, depth=1, gan_loss="wasserstein")
