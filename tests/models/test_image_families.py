"""The diffusion and VAE families: held-out metrics, their parts, FLOPs, sampling, scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from experiments.cache import FileCache
from experiments.image_data import procedural_images
from experiments.spec import DataSpec
from models import get_family
from models.diffusion import DiffusionFamily, DiffusionShape, make_schedule
from models.family import BUILTIN, Preparation
from models.images import discretized_gaussian_log_likelihood, png_grid
from models.vae import VAEShape


def _images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    spec = DataSpec(source="procedural", image_size=size, procedural_seed=seed)
    return torch.from_numpy(procedural_images(spec, 0, n, stream=0))


def _trained(family, shape, steps: int = 30, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = family.build(shape)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data = _images(32 * steps, shape.image_size)
    for step in range(steps):
        opt.zero_grad()
        family.loss(model, data[step * 32:(step + 1) * 32]).backward()
        opt.step()
    return model


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_held_out_metrics_are_exactly_deterministic(name):
    family = get_family(name)
    shape = family.tiny()
    torch.manual_seed(0)
    model = family.build(shape)
    batches = [family.example_batch(shape, 4), family.example_batch(shape, 3)]
    preparation = Preparation(train_data=lambda n: batches[0][:n], cache=FileCache())  # a GAN's feature network
    family.prepare(model, preparation)
    first = family.evaluate(model, batches)
    torch.manual_seed(123)  # the global RNG must not matter
    twin = family.build(shape)
    twin.load_state_dict(model.state_dict())
    family.prepare(twin, preparation)  # from the cache this time
    assert family.evaluate(twin, batches) == first  # bit for bit, every metric


@pytest.mark.parametrize("shape", [
    DiffusionShape(d_model=32, n_layers=2, n_heads=2, patch=2),
    DiffusionShape(d_model=16, n_layers=1, backbone="unet", noise_schedule="linear"),
], ids=["dit", "unet"])
def test_diffusion_trains_and_its_bound_is_in_bits_per_dim(shape):
    family = get_family("diffusion")
    torch.manual_seed(0)
    fresh = family.evaluate(family.build(shape), [_images(64)])
    trained = family.evaluate(_trained(family, shape), [_images(64)])
    assert fresh["loss"] == pytest.approx(1.0, abs=0.1)  # DiT starts at ε̂ = 0; U-Net near it
    assert trained["loss"] < 0.8 * fresh["loss"]
    assert trained["bits_per_dim"] < fresh["bits_per_dim"]
    assert trained["bits_per_dim"] == pytest.approx(trained["vb_nats_per_dim"] / math.log(2))
    assert 0 < trained["bits_per_dim"] < 16  # a bound on 8-bit images, loose after 30 steps


def test_noise_schedules():
    for kind in ("linear", "cosine"):
        s = make_schedule(kind, 1000)
        assert s.betas.shape == (1000,) and np.all(np.diff(s.alphas_bar) < 0)
        assert s.alphas_bar[-1] < 1e-4  # x_T is (almost) pure noise
        assert s.posterior_variance[0] == 0 and np.all(s.posterior_variance[1:] > 0)
    linear = make_schedule("linear", 1000)
    assert linear.betas[0] == pytest.approx(1e-4) and linear.betas[-1] == pytest.approx(0.02)
    cosine = make_schedule("cosine", 1000)
    assert cosine.alphas_bar[499] == pytest.approx(np.cos((0.5 + 0.008) / 1.008 * np.pi / 2) ** 2
                                                   / np.cos(0.008 / 1.008 * np.pi / 2) ** 2, rel=1e-9)
    grid = DiffusionFamily.eval_grid(1000)
    assert len(grid) == 16 and grid.min() >= 2 and grid.max() <= 1000


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1
    for mean, log_scale in ((0.0, -2.0), (0.9, -4.0), (-1.2, 0.5)):
        lp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                 torch.full_like(levels, log_scale))
        assert torch.exp(lp.double()).sum().item() == pytest.approx(1.0, abs=1e-4)


def test_elbo_parts_sum_and_match_their_definitions():
    family = get_family("vae")
    shape = VAEShape(width=8, depth=1, latent=4, iw_samples=16)
    model = _trained(family, shape, steps=100)
    batch = _images(48, seed=5)
    m = family.evaluate(model, [batch[:32], batch[32:]])
    assert m["loss"] == pytest.approx(m["recon"] + m["kl"], rel=1e-12)
    assert m["bits_per_dim"] == pytest.approx(m["loss"] / math.log(2))
    assert m["kl"] > 0 and m["recon"] > 0
    # the KL term equals a Monte-Carlo estimate of E_q[log q(z|x) − log p(z)]
    x = family.targets(shape, batch)
    with torch.no_grad():
        mean, log_var = model.encode(x)
        eps = torch.randn((20000, *mean.shape), generator=torch.Generator().manual_seed(1))
        z = mean + torch.exp(0.5 * log_var) * eps
        log_q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc_kl = (log_q - log_p).mean().item() / batch[0].numel()
    assert m["kl"] == pytest.approx(mc_kl, rel=0.02)
    # the importance-weighted bound (k = 16) is tighter than the ELBO (here averaged over 64
    # posterior samples, so that its own sampling noise does not decide the comparison)
    elbo = np.mean([sum(t.sum().item() for t in family.elbo_parts(model, batch, torch.randn(48, 4)))
                    for _ in range(64)]) / batch.numel()
    assert m["iw_nats_per_dim"] < elbo
    assert m["iw_bits_per_dim"] == pytest.approx(m["iw_nats_per_dim"] / math.log(2))


def test_bernoulli_likelihood_models_binarized_pixels():
    family = get_family("vae")
    shape = VAEShape(width=8, depth=1, latent=4, likelihood="bernoulli")
    batch = _images(32)
    assert set(family.targets(shape, batch).unique().tolist()) <= {0.0, 1.0}
    fresh = family.evaluate(family.build(shape), [batch])
    assert fresh["recon"] == pytest.approx(math.log(2), abs=0.05)  # logits start near 0: p = 1/2
    assert family.evaluate(_trained(family, shape), [batch])["loss"] < fresh["loss"]


def _analytic_forward_flops(model: nn.Module, run) -> float:
    """2·MACs of every Linear and Conv layer from the shapes they really saw, plus 4·T²·d per
    attention call (QKᵀ and AV)."""
    total = 0.0
    hooks = []

    def linear(m, inp, out):
        nonlocal total
        total += 2 * m.in_features * out.numel()

    def conv(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):  # every input pixel scatters a k×k×Cout patch
            total += 2 * inp[0].numel() * m.out_channels * k
        else:
            total += 2 * out.numel() * (m.in_channels // m.groups) * k

    def attention(m, inp, out):
        nonlocal total
        b, t, d = inp[0].shape
        total += 4 * b * t * t * d

    from models.blocks import SelfAttention

    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, SelfAttention):
            hooks.append(m.register_forward_hook(attention))
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("name,shape", [
    ("diffusion", DiffusionShape(d_model=32, n_layers=2, n_heads=2, patch=2)),
    ("diffusion", DiffusionShape(d_model=16, n_layers=1, backbone="unet")),
    ("vae", VAEShape(width=8, depth=2, latent=8, image_size=16)),
], ids=["dit-attention", "unet-conv", "vae-conv-transposed"])
def test_measured_flops_count_conv_and_attention_layers(name, shape):
    family = get_family(name)
    model = family.build(shape)
    batch = family.example_batch(shape, 4)
    torch.manual_seed(0)
    forward = _analytic_forward_flops(model, lambda: family.loss(model, batch))
    # the fused CPU attention kernel is not in the counter's table: count through the math
    # backend, as models.flops does
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        torch.manual_seed(0)
        family.loss(model, batch)
    assert counter.get_total_flops() == pytest.approx(forward, rel=1e-9)  # forward alone: exact
    per_sample = family.flops_per_unit(shape)
    # forward + backward: 3x the forward, less the input-gradient of layers fed by data
    assert 2.5 * forward / 4 < per_sample <= 3.0 * forward / 4
    assert family.flops_per_unit(shape) == per_sample  # cached per shape


@pytest.mark.parametrize("name,small,large", [
    ("diffusion", DiffusionShape(d_model=8, n_layers=1, n_heads=1), DiffusionShape(d_model=48, n_layers=2, n_heads=3)),
    ("vae", VAEShape(width=4, depth=1, latent=2), VAEShape(width=24, depth=1, latent=16)),
])
def test_a_bigger_model_reaches_a_lower_held_out_loss_on_the_same_data_and_budget(name, small, large):
    family = get_family(name)
    held_out = [torch.from_numpy(procedural_images(DataSpec(source="procedural"), 0, 256, stream=1))]
    losses = {}
    for label, shape in (("small", small), ("large", large)):
        model = _trained(family, shape, steps=150)
        losses[label] = family.evaluate(model, held_out)["loss"]
    assert family.num_params(large).scaling > 10 * family.num_params(small).scaling
    # a margin well outside run-to-run differences: 5% of the ε-MSE, 0.1 nats/dim of the VAE's
    # bound (most of which is the images' own entropy, which no model size removes)
    margin = 0.05 * losses["small"] if name == "diffusion" else 0.1
    assert losses["large"] < losses["small"] - margin, losses


def test_samplers_and_report_images():
    family = get_family("diffusion")
    shape = DiffusionShape(d_model=16, n_layers=1, n_heads=1, timesteps=50)
    model = _trained(family, shape, steps=5)
    ddim = family.sample_ddim(model, 4, steps=10)
    assert ddim.shape == (4, 1, 8, 8) and ddim.abs().max() <= 1
    assert torch.equal(ddim, family.sample_ddim(model, 4, steps=10))  # fixed seed
    ddpm = family.sample_ddpm(model, 4)
    assert ddpm.shape == (4, 1, 8, 8) and torch.equal(ddpm, family.sample_ddpm(model, 4))
    grids = family.artifacts(model, [_images(8)], 4)
    assert len(grids) == 2 and all(png.startswith(b"\x89PNG") for png in grids.values())
    vae = get_family("vae")
    grids = vae.artifacts(_trained(vae, vae.tiny(), steps=2), [_images(8)], 6)
    assert set(grids) == {"held-out images (top) and reconstructions (bottom)", "prior samples"}
    assert png_grid(torch.zeros(3, 3, 8, 8)).startswith(b"\x89PNG")  # RGB too
