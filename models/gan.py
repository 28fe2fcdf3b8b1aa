"""Generative adversarial networks (the ``gan`` family): DCGAN-style (Radford et al. 2016)
convolutional generator and discriminator, spectral normalization in the discriminator
(Miyato et al. 2018), hinge or non-saturating loss.

Architecture, scaled together by ``width`` w and ``depth`` (both networks), with ``latent``
dimensions of z ~ N(0, I):
- generator: a linear layer maps z to a 4×4 map of w·2^k channels; k transposed
  convolutions (4×4, stride 2) double the size and halve the channels up to the image size
  (k = log2(image_size) − 2, at least 1); every resolution has ``depth`` 3×3 conv layers;
  ReLU and pixel norm after each; a 3×3 conv and tanh give the image in [−1, 1]; an
  exponential moving average of its weights is what gets sampled and scored;
- discriminator: the mirror image with spectrally normalized convolutions, LeakyReLU(0.2),
  strided 4×4 convolutions down to 4×4, and a spectrally normalized linear score.

What N counts: the generator's parameters (the network that is sampled from);
``ParamCount.total`` adds the discriminator's.

Training is two networks with two optimizers, one step of each per batch (``train_step``,
alternating: the discriminator first, on real images and the generator's current samples;
then the generator, through the discriminator with its weights frozen). ``loss`` is the same
step as one objective for a single optimizer (simultaneous updates: the discriminator's
weights take no gradient from the generator's loss); the train loop uses it only to count
FLOPs, which therefore cover one full step of both networks.

Held-out metrics (``models.gan_metrics``): ``loss`` is the Fréchet distance between
generated and held-out real images in the features of the project's own feature network
(``fd_rotnet``; *not* Inception FID), with ``kid_rotnet``, sample ``diversity``, and the
discriminator's and generator's losses on the held-out images and fixed-seed samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from analysis.records import DataUnit, Metric, Status
from models.family import DataShape, ModelFamily, ParamCount, Preparation, check_fields, doc_field, register
from models.gan_metrics import (
    FEATURE_NET_IMAGES,
    MIN_GENERATED,
    distances,
    feature_network,
    fixed_latents,
    health,
    inception_fid,
)
from models.images import (
    count_params,
    meta_model,
    nearest_width,
    param_dtype,
    png_grid,
    random_images,
    to_signed,
    unwrap,
)

GANLoss = Literal["hinge", "ns"]
EMA_DECAY = 0.99  # of the generator's weight average (half-life ~70 steps)


@dataclass(frozen=True, kw_only=True)
class GANSize:
    width: int = doc_field(doc="channels of both networks at full resolution (doubled at each halving)")
    depth: int = doc_field(doc="3x3 convolutions per resolution, in both networks")
    latent: int = doc_field(32, "dimensions of z")


@dataclass(frozen=True, kw_only=True)
class GANOptions:
    gan_loss: GANLoss = doc_field("hinge", "hinge, or ns (non-saturating, Goodfellow et al. 2014)")
    inception_weights: str | None = doc_field(
        None, "a local copy of pt_inception-2015-12-05-6726825d.pth: also report standard FID (needs torch-fidelity)")


@dataclass(frozen=True, kw_only=True)
class GANShape:
    width: int
    depth: int
    latent: int = 32
    image_size: int = 8
    channels: int = 1
    gan_loss: GANLoss = "hinge"
    inception_weights: str | None = None  # standard FID's Inception weights (a local file), or none

    def __post_init__(self) -> None:
        check_fields(self, positive=("width", "depth", "latent", "image_size", "channels"))
        if self.image_size < 4 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two, at least 4, got {self.image_size}")

    @property
    def resamplings(self) -> int:
        return max(1, int(math.log2(self.image_size)) - 2)


class Generator(nn.Module):
    """z [B, latent] → images in [−1, 1]. It also keeps an exponential moving average of its
    weights as buffers (saved with its checkpoints; not parameters, so not in N), which
    ``sample`` uses: the average of the last ~1/(1 − decay) steps' generators is much less
    noisy than the last one (Yazıcı et al. 2019; StyleGAN and BigGAN evaluate it too)."""

    def __init__(self, shape: GANShape) -> None:
        super().__init__()
        self.shape = shape
        ch, start = shape.width * 2 ** shape.resamplings, shape.image_size >> shape.resamplings
        self.top = (ch, start)
        self.project = nn.Linear(shape.latent, ch * start * start)
        layers: list[nn.Module] = [nn.ReLU(), PixelNorm()]
        for _ in range(shape.resamplings):
            layers += _block(ch, shape.depth, norm=True)
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1), nn.ReLU(), PixelNorm()]
            ch //= 2
        layers += _block(ch, shape.depth, norm=True)
        layers += [nn.Conv2d(ch, shape.channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        for name, p in list(self.named_parameters()):
            self.register_buffer(_ema_name(name), p.detach().clone())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ch, size = self.top
        return self.body(self.project(z).view(-1, ch, size, size))

    @torch.no_grad()
    def update_ema(self, decay: float = EMA_DECAY) -> None:
        """After an optimizer step; the decay ramps up as (1 + t)/(10 + t) over the first steps."""
        t = int(self.ema_updates)
        weight = 1 - min(decay, (1 + t) / (10 + t))
        for name, p in self.named_parameters():
            ema = getattr(self, _ema_name(name))
            ema.lerp_(p.detach().to(ema.dtype), weight)
        self.ema_updates += 1

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Images from the averaged weights (what every metric and sample grid shows); from
        the current weights while nothing has been averaged (a loop without ``train_step``)."""
        if int(self.ema_updates) == 0:
            return self(z)
        averaged = {name: getattr(self, _ema_name(name)) for name, _ in self.named_parameters()}
        return torch.func.functional_call(self, averaged, (z,))


def _ema_name(param: str) -> str:
    return "ema_" + param.replace(".", "_")


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018): the
    generator's normalization, with no batch statistics, so sampling is the same in train
    and eval mode and independent of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Discriminator(nn.Module):
    def __init__(self, shape: GANShape) -> None:
        super().__init__()
        ch = shape.width
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(shape.channels, ch, 3, padding=1)), nn.LeakyReLU(0.2)]
        for _ in range(shape.resamplings):
            layers += _block(ch, shape.depth, norm=False)
            layers += [spectral_norm(nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += _block(ch, shape.depth, norm=False)
        size = shape.image_size >> shape.resamplings
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.score = spectral_norm(nn.Linear(ch * size * size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One real-valued score per image [B] (higher: judged real)."""
        return self.score(self.body(x)).squeeze(1)


def _block(ch: int, depth: int, *, norm: bool) -> list[nn.Module]:
    """``depth`` 3×3 convolutions: ReLU + pixel norm (generator) or spectral norm + LeakyReLU."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        if norm:
            layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), PixelNorm()]
        else:
            layers += [spectral_norm(nn.Conv2d(ch, ch, 3, padding=1)), nn.LeakyReLU(0.2)]
    return layers


class GAN(nn.Module):
    """The pair; the train loop gives each network its own DeepSpeed engine (``networks``)."""

    def __init__(self, shape: GANShape) -> None:
        super().__init__()
        self.shape = shape
        self.generator = Generator(shape)
        self.discriminator = Discriminator(shape)
        # metric state that is not the model's (kept out of parameters and checkpoints):
        # "features", the feature network the family's prepare() attaches
        self.context: dict = {}


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the discriminator's loss on scores of real and generated images."""
    real, fake = real.float(), fake.float()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    fake = fake.float()
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def _frozen(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


@register("gan")
class GANFamily(ModelFamily):
    """DCGAN-style GANs; data unit: samples (images); ``loss`` is a Fréchet distance."""

    tag = "gan"
    data_unit = DataUnit.SAMPLES
    loss_unit = "FD (rotnet features)"
    metrics = (
        Metric("loss", "FD (rotnet features)", "fd_rotnet (the primary metric)"),
        Metric("fd_rotnet", "FD (rotnet features)", "Fréchet distance of samples to held-out images in RotNet "
               "features (not Inception FID)"),
        Metric("kid_rotnet", "KID", "kernel distance in the same features"),
        Metric("kid_rotnet_std", "KID", "its spread over KID's subsets"),
        Metric("diversity", "ratio", "mean pairwise feature distance of samples over that of held-out images "
               "(→ 0 under mode collapse)"),
        Metric("d_loss", "loss", "the discriminator's loss on held-out images and fixed-latent samples"),
        Metric("g_loss", "loss", "the generator's loss on the fixed-latent samples"),
        Metric("d_accuracy", "fraction", "the discriminator's accuracy on both"),
        Metric("fid_inception", "FID", "standard Inception FID (only with model.inception_weights)"),
    )
    size_type, options_type, shape_type = GANSize, GANOptions, GANShape
    supports_wsd = False  # a wsd branch continues one engine; a GAN trains two
    shared_evaluation = True  # every rank scores all held-out images against the same samples

    def build(self, shape: GANShape) -> nn.Module:
        return GAN(shape)

    def networks(self, model: GAN) -> dict[str, nn.Module]:
        """The networks the train loop gives one optimizer and one DeepSpeed engine each."""
        return {"generator": model.generator, "discriminator": model.discriminator}

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """One full training step as a single objective: the discriminator's loss on real
        images and detached samples plus the generator's loss through the discriminator with
        its weights frozen. The generator runs twice (once without gradients), as in
        ``train_step``, so the FLOPs counted on it are those of a step."""
        gan = unwrap(model)
        kind = gan.shape.gan_loss
        real = to_signed(batch).to(param_dtype(model))
        z = torch.randn(batch.shape[0], gan.shape.latent, device=batch.device, dtype=real.dtype)
        with torch.no_grad():
            fake = gan.generator(z)
        scores = gan.discriminator(torch.cat([real, fake]))
        d_loss = discriminator_loss(kind, scores[: len(real)], scores[len(real):])
        _frozen(gan.discriminator, True)
        try:
            g_loss = generator_loss(kind, gan.discriminator(gan.generator(z)))
        finally:
            _frozen(gan.discriminator, False)
        return d_loss + g_loss

    def train_step(self, engines, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One alternating step on DeepSpeed engines ``engines.generator`` and
        ``engines.discriminator``; returns the generator's loss as ``loss`` and the
        discriminator's as ``d_loss`` (detached)."""
        g, d = engines.generator, engines.discriminator
        kind = g.module.shape.gan_loss
        real = to_signed(batch).to(param_dtype(d))
        z = torch.randn(batch.shape[0], g.module.shape.latent, device=batch.device, dtype=param_dtype(g))
        with torch.no_grad():
            fake = g(z)
        scores = d(torch.cat([real, fake.to(real.dtype)]))
        d_loss = discriminator_loss(kind, scores[: len(real)], scores[len(real):])
        d.backward(d_loss)
        d.step()
        # G's loss goes through D's module, not D's engine (whose backward hooks expect
        # d.backward), with D's weights frozen: no gradient (nor ZeRO gradient hook) for D.
        _frozen(d.module, True)
        try:
            g_loss = generator_loss(kind, d.module(g(z).to(real.dtype)))
            g.backward(g_loss)
            g.step()
            g.module.update_ema()
        finally:
            _frozen(d.module, False)
        return {"loss": g_loss.detach(), "d_loss": d_loss.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        gan = unwrap(model)
        was_training = gan.training
        gan.eval()  # a training-mode forward would advance spectral norm's power iteration
        try:
            return _held_out_metrics(gan, list(batches))
        finally:
            gan.train(was_training)

    def prepare(self, model: nn.Module, preparation: Preparation) -> None:
        """Attach the feature network for the metrics: trained once per data set on (up to
        ``gan_metrics.FEATURE_NET_IMAGES``) training images and cached by their content hash."""
        images = preparation.train_data(FEATURE_NET_IMAGES)
        unwrap(model).context["features"] = feature_network(images, preparation.cache)

    def health(self, history: list[dict[str, float]]) -> tuple[Status, str]:
        return health(history)

    def num_params(self, shape: GANShape) -> ParamCount:
        model = meta_model(self, shape)
        return ParamCount(scaling=count_params(model.generator), total=count_params(model))

    def example_batch(self, shape: GANShape, batch_size: int) -> torch.Tensor:
        return random_images(shape, batch_size)

    def tiny(self) -> GANShape:
        return GANShape(width=8, depth=1, latent=8)

    def shape_from_params(self, target: int, options: GANOptions, data: DataShape) -> GANShape:
        """Depth 1, latent 32, and the width (a multiple of 4) whose generator N is nearest ``target``."""

        def shape(w: int) -> GANShape:
            return self.shape(GANSize(width=w, depth=1), options, data)

        return nearest_width(self, target, shape)

    @torch.no_grad()
    def artifacts(self, model: nn.Module, batches: list[torch.Tensor], n: int) -> dict[str, bytes]:
        """Samples from fixed latents (the same z for every size), and held-out real images."""
        if n < 1 or not batches:
            return {}
        gan = unwrap(model)
        z = fixed_latents(n, gan.shape.latent).to(batches[0].device, param_dtype(gan))
        return {
            "samples (fixed latents)": png_grid(gan.generator.sample(z)),
            "held-out real images": png_grid(to_signed(torch.cat(batches)[:n])),
        }


@torch.no_grad()
def _held_out_metrics(gan: GAN, batches: list[torch.Tensor]) -> dict[str, float]:
    """Held-out metrics of a GAN (``context["features"]`` attached by the family's
    ``prepare``): generated images from fixed latents (as many as there are held-out images,
    at least ``gan_metrics.MIN_GENERATED``), compared with the held-out images."""
    if not batches:
        raise ValueError("evaluation got no images")
    features = gan.context.get("features")
    if features is None:
        raise RuntimeError("GAN metrics need the feature network: call the family's prepare() first")
    real_u8 = torch.cat(batches)
    real = to_signed(real_u8)
    device, dtype = real_u8.device, param_dtype(gan)
    z = fixed_latents(max(len(real), MIN_GENERATED), gan.shape.latent).to(device, dtype)
    fake = torch.cat([gan.generator.sample(chunk) for chunk in z.split(256)]).float()
    scores_real = torch.cat([gan.discriminator(chunk.to(dtype)) for chunk in real.split(256)])
    scores_fake = torch.cat([gan.discriminator(chunk.to(dtype)) for chunk in fake.split(256)])
    kind = gan.shape.gan_loss
    dist = distances(features, real, fake)
    metrics = {
        "loss": dist["fd"], "fd_rotnet": dist["fd"], "kid_rotnet": dist["kid"], "kid_rotnet_std": dist["kid_std"],
        "diversity": dist["diversity"],
        "d_loss": float(discriminator_loss(kind, scores_real, scores_fake)),
        "g_loss": float(generator_loss(kind, scores_fake)),
        "d_accuracy": float(((scores_real > 0).float().mean() + (scores_fake < 0).float().mean()) / 2),
    }
    if gan.shape.inception_weights:
        metrics["fid_inception"] = inception_fid(real, fake, gan.shape.inception_weights)
    return metrics
