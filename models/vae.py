"""Variational autoencoders (the ``vae`` family; Kingma & Welling 2014).

A convolutional encoder maps an image to a diagonal Gaussian q(z|x) over ``latent``
dimensions; the decoder maps z back to a likelihood p(x|z); the prior is N(0, I).

Architecture, scaled by ``width`` w, ``depth`` and ``latent``: the image is halved in size
by strided convolutions until it is at most 4×4 (once for 8×8, twice for 16×16), doubling
the channels each time (w, 2w, …); every resolution has ``depth`` 3×3 conv layers; a linear
layer maps the final feature map to the 2·latent Gaussian parameters. The decoder mirrors
it with transposed convolutions. What N counts: every parameter (encoder and decoder).

Likelihoods (``likelihood``):
- ``gaussian`` (default): a discretized Gaussian over the 256 levels of each 8-bit pixel
  (per-pixel mean and log-scale; ``models.images``), so the bound is on the 8-bit data;
- ``bernoulli``: over the images binarized at 128 (``models.images.binarize``).

Held-out metrics, per dimension (C·H·W) and deterministic (the posterior samples come from a
fixed seed per batch): ``loss`` = negative ELBO in nats/dim = ``recon`` (−E_q log p(x|z),
one posterior sample) + ``kl`` (KL(q(z|x) ‖ p(z)), closed form); ``bits_per_dim`` = loss / ln 2;
with ``iw_samples`` = k > 1, also the importance-weighted bound (Burda et al. 2016) with k
samples, ``iw_nats_per_dim`` and ``iw_bits_per_dim`` (tighter: ≤ loss in expectation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from analysis.records import DataUnit, Metric
from models.family import DataShape, ModelFamily, check_fields, doc_field, register
from models.images import (
    binarize,
    discretized_gaussian_log_likelihood,
    nearest_width,
    param_dtype,
    png_grid,
    random_images,
    to_signed,
    unwrap,
)

EVAL_SEED = 20240602
Likelihood = Literal["gaussian", "bernoulli"]


@dataclass(frozen=True, kw_only=True)
class VAESize:
    width: int = doc_field(doc="channels of the first convolution (doubled at each downsampling)")
    depth: int = doc_field(doc="3x3 convolutions per resolution")
    latent: int = doc_field(doc="dimensions of z")


@dataclass(frozen=True, kw_only=True)
class VAEOptions:
    likelihood: Likelihood = doc_field(
        "gaussian", "discretized Gaussian over 8-bit pixels, or Bernoulli over pixels binarized at 128")
    iw_samples: int = doc_field(0, "k of the importance-weighted bound reported at evaluation (0: off, else >= 2)")

    def __post_init__(self) -> None:
        if self.iw_samples < 0 or self.iw_samples == 1:
            raise ValueError(f"iw_samples must be 0 (off) or at least 2, got {self.iw_samples}")


@dataclass(frozen=True, kw_only=True)
class VAEShape:
    width: int
    depth: int
    latent: int
    image_size: int = 8
    channels: int = 1
    likelihood: Likelihood = "gaussian"
    iw_samples: int = 0  # k of the importance-weighted bound at evaluation (0: off)

    def __post_init__(self) -> None:
        check_fields(self, positive=("width", "depth", "latent", "image_size", "channels"))
        if self.iw_samples < 0 or self.iw_samples == 1:
            raise ValueError(f"iw_samples must be 0 (off) or at least 2, got {self.iw_samples}")
        if self.image_size < 4 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two, at least 4, got {self.image_size}")

    @property
    def downsamplings(self) -> int:
        return max(1, int(math.log2(self.image_size)) - 2)


def _convs(channels: int, depth: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU()]
    return layers


class VAE(nn.Module):
    def __init__(self, shape: VAEShape) -> None:
        super().__init__()
        self.shape = shape
        w, c, k = shape.width, shape.channels, shape.downsamplings
        enc: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1), nn.SiLU()]
        ch = w
        for _ in range(k):
            enc += _convs(ch, shape.depth)
            enc += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU()]
            ch *= 2
        self.top = (ch, shape.image_size >> k)
        enc += _convs(ch, shape.depth)
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = ch * self.top[1] ** 2
        self.to_posterior = nn.Linear(flat, 2 * shape.latent)
        self.from_latent = nn.Linear(shape.latent, flat)
        dec: list[nn.Module] = [nn.SiLU(), *_convs(ch, shape.depth)]
        for _ in range(k):
            dec += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1), nn.SiLU()]
            ch //= 2
            dec += _convs(ch, shape.depth)
        out = c * (2 if shape.likelihood == "gaussian" else 1)
        dec.append(nn.Conv2d(ch, out, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.to_posterior(self.encoder(x)).chunk(2, dim=1)
        return mean, log_var.clamp(-30, 20)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        ch, size = self.top
        return self.decoder(self.from_latent(z).view(-1, ch, size, size))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoder output, posterior mean, posterior log-variance, z) for reparametrization
        noise [B, latent]."""
        mean, log_var = self.encode(x)
        z = mean + torch.exp(0.5 * log_var) * noise
        return self.decode(z), mean, log_var, z


@register("vae")
class VAEFamily(ModelFamily):
    """Convolutional VAEs; data unit: samples (images); ``loss`` is −ELBO in nats/dim."""

    tag = "vae"
    data_unit = DataUnit.SAMPLES
    loss_unit = "nats/dim"
    metrics = (Metric("loss", "nats/dim", "negative ELBO, one posterior sample from a fixed seed"),
               Metric("bits_per_dim", "bits/dim", "the same bound in bits"),
               Metric("recon", "nats/dim", "reconstruction term −log p(x|z) of the loss"),
               Metric("kl", "nats/dim", "KL(q(z|x) ‖ p(z)) term of the loss (closed form)"),
               Metric("iw_nats_per_dim", "nats/dim", "importance-weighted bound with iw_samples samples (when on)"),
               Metric("iw_bits_per_dim", "bits/dim", "the same in bits (when on)"))
    size_type, options_type, shape_type = VAESize, VAEOptions, VAEShape

    def build(self, shape: VAEShape) -> nn.Module:
        return VAE(shape)

    @staticmethod
    def targets(shape: VAEShape, batch: torch.Tensor) -> torch.Tensor:
        return binarize(batch) if shape.likelihood == "bernoulli" else to_signed(batch)

    @staticmethod
    def log_likelihood(shape: VAEShape, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image [B] (nats) from the decoder output."""
        out = out.float()
        if shape.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            mean, log_scale = out.chunk(2, dim=1)
            ll = discretized_gaussian_log_likelihood(x, mean, log_scale.clamp(min=-7.0))
        return ll.flatten(1).sum(1)

    @staticmethod
    def kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(log_var)) ‖ N(0, I)) per image [B] (nats), closed form."""
        mean, log_var = mean.float(), log_var.float()
        return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)

    def elbo_parts(self, model: nn.Module, batch: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction −log p(x|z), KL) per image, nats, for posterior noise ``noise``."""
        shape = unwrap(model).shape
        x = self.targets(shape, batch)
        out, mean, log_var, _ = model(x.to(param_dtype(model)), noise.to(param_dtype(model)))
        return -self.log_likelihood(shape, x, out), self.kl(mean, log_var)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """−ELBO in nats/dim, one posterior sample (torch's global RNG)."""
        shape = unwrap(model).shape
        noise = torch.randn(batch.shape[0], shape.latent, device=batch.device)
        recon, kl = self.elbo_parts(model, batch, noise)
        return (recon + kl).mean() / batch[0].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        shape = unwrap(model).shape
        recon_sum = kl_sum = iw_sum = 0.0
        images = dims = 0
        for index, batch in enumerate(batches):
            gen = torch.Generator().manual_seed(EVAL_SEED + index)
            noise = torch.randn((batch.shape[0], shape.latent), generator=gen).to(batch.device)
            recon, kl = self.elbo_parts(model, batch, noise)
            recon_sum += recon.double().sum().item()
            kl_sum += kl.double().sum().item()
            if shape.iw_samples:
                iw_sum += self.iw_bound(model, batch, shape.iw_samples, gen).double().sum().item()
            images += batch.shape[0]
            dims = batch[0].numel()
        if images == 0:
            raise ValueError("evaluation got no images")
        recon, kl = recon_sum / (images * dims), kl_sum / (images * dims)
        metrics = {"loss": recon + kl, "bits_per_dim": (recon + kl) / math.log(2), "recon": recon, "kl": kl}
        if shape.iw_samples:
            iw = iw_sum / (images * dims)
            metrics.update(iw_nats_per_dim=iw, iw_bits_per_dim=iw / math.log(2))
        return metrics

    def iw_bound(self, model: nn.Module, batch: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """−log (1/k) Σ_i p(x, z_i) / q(z_i | x), z_i ~ q(z|x), per image [B] (nats)."""
        vae = unwrap(model)
        x = self.targets(vae.shape, batch)
        mean, log_var = vae.encode(x.to(param_dtype(model)))
        mean, log_var = mean.float(), log_var.float()
        terms = []
        for _ in range(k):
            eps = torch.randn(mean.shape, generator=gen).to(mean.device)
            z = mean + torch.exp(0.5 * log_var) * eps
            log_px = self.log_likelihood(vae.shape, x, vae.decode(z.to(param_dtype(model))))
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
            log_qz = -0.5 * (eps.pow(2) + log_var + math.log(2 * math.pi)).sum(1)
            terms.append(log_px + log_pz - log_qz)
        return -(torch.logsumexp(torch.stack(terms), dim=0) - math.log(k))

    def example_batch(self, shape: VAEShape, batch_size: int) -> torch.Tensor:
        return random_images(shape, batch_size)

    def tiny(self) -> VAEShape:
        return VAEShape(width=8, depth=1, latent=4)

    def shape_from_params(self, target: int, options: VAEOptions, data: DataShape) -> VAEShape:
        """Depth 1, latent 16, and the width (a multiple of 4) whose N is nearest ``target``."""

        def shape(w: int) -> VAEShape:
            return self.shape(VAESize(width=w, depth=1, latent=16), options, data)

        return nearest_width(self, target, shape)

    # --- report images ------------------------------------------------------------------------

    @torch.no_grad()
    def decode_mean(self, model: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [−1, 1] (Bernoulli: the probabilities, rescaled)."""
        vae = unwrap(model)
        out = vae.decode(z.to(param_dtype(model))).float()
        if vae.shape.likelihood == "bernoulli":
            return torch.sigmoid(out) * 2 - 1
        return out.chunk(2, dim=1)[0].clamp(-1, 1)

    @torch.no_grad()
    def artifacts(self, model: nn.Module, batches: list[torch.Tensor], n: int) -> dict[str, bytes]:
        """Held-out images above their reconstructions (posterior means), and prior samples."""
        if n < 1 or not batches:
            return {}
        vae = unwrap(model)
        real = torch.cat(batches)[:n]
        x = self.targets(vae.shape, real)
        mean, _ = vae.encode(x.to(param_dtype(model)))
        recon = self.decode_mean(model, mean)
        shown = to_signed(real) if vae.shape.likelihood == "gaussian" else x * 2 - 1
        gen = torch.Generator().manual_seed(0)
        z = torch.randn((n, vae.shape.latent), generator=gen).to(mean.device)
        return {
            "held-out images (top) and reconstructions (bottom)": png_grid(torch.cat([shown, recon]), ncol=len(real)),
            "prior samples": png_grid(self.decode_mean(model, z)),
        }
