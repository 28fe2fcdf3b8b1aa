"""DDPM diffusion models (the ``diffusion`` family; Ho et al. 2020).

Objective: ε-prediction. A training image x₀ (scaled to [−1, 1], see ``models.images``) is
noised to x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε at a uniform t ∈ {1, …, T} (T = 1000 by default), and
the loss is the mean squared error of the predicted ε per dimension. Noise schedules:
``linear`` (β from 1e-4 to 0.02, Ho et al.) and ``cosine`` (Nichol & Dhariwal 2021).

Backbones:
- ``dit`` (default): a DiT (Peebles & Xie 2023) over p×p patches, built from the language
  model's own ``transformer.Block`` (bidirectional attention, adaLN-Zero conditioning on the
  timestep), scaled by width ``d_model`` and depth ``n_layers``.
- ``unet``: a small convolutional U-Net (two resolutions, ``n_layers`` residual blocks per
  resolution, base width ``d_model`` channels, the timestep added in every block).

What N counts: every parameter except the timestep embedding MLP and, for the DiT, the
patch embedding (the analogue of the language model's non-embedding count). The 2-D
sin-cos position embedding of the DiT is fixed and has no parameters. FLOPs per sample are
measured with FlopCounterMode on a real forward + backward (``models.images``).

Held-out metrics (deterministic: the same numbers for the same weights and batches):
- ``loss``: the ε-MSE per dimension averaged over a fixed grid of ``EVAL_TIMESTEPS``
  timesteps (midpoints of equal strata of 2…T), with noise drawn from a fixed seed per batch;
- ``bits_per_dim``: the variational bound L_T + L_0 + Σ_{t≥2} L_{t−1} in bits per
  dimension of the 8-bit image, the sum over t estimated by the same stratified grid
  ((T−1)/K times the sum over K grid points; exact in expectation over uniform t). Reverse
  variances: σ_t² = β̃_t for t ≥ 2, and β₁ for the discretized-Gaussian decoder L_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.records import DataUnit, Metric
from models.blocks import Block
from models.family import DataShape, ModelFamily, ParamCount, check_fields, doc_field, register
from models.images import (
    count_params,
    discretized_gaussian_log_likelihood,
    meta_model,
    param_dtype,
    png_grid,
    random_images,
    to_signed,
    unwrap,
)

EVAL_TIMESTEPS = 16  # timesteps in the held-out grid
EVAL_SEED = 20240601  # the held-out noise
DDIM_STEPS = 50
Backbone = Literal["dit", "unet"]
NoiseScheduleKind = Literal["linear", "cosine"]


@dataclass(frozen=True, kw_only=True)
class DiffusionSize:
    """One size in the spec (``patch`` and ``n_heads``: the DiT only)."""

    d_model: int = doc_field(doc="DiT width, or the U-Net's base channels")
    n_layers: int = doc_field(doc="DiT blocks, or U-Net residual blocks per resolution")
    n_heads: int = doc_field(1, "DiT attention heads")
    patch: int = doc_field(2, "DiT patch side, pixels")


@dataclass(frozen=True, kw_only=True)
class DiffusionOptions:
    backbone: Backbone = doc_field("dit", "denoiser: a DiT over patches, or a small U-Net")
    noise_schedule: NoiseScheduleKind = doc_field("cosine", "DDPM noise schedule (Ho et al.; Nichol & Dhariwal)")
    aspect_ratio: int = doc_field(32, "d_model / n_layers, for DiT sizes given as params")
    head_dim: int = doc_field(16, "d_model / n_heads, for DiT sizes given as params")


@dataclass(frozen=True, kw_only=True)
class DiffusionShape:
    """Size of one denoiser. DiT: width ``d_model``, ``n_layers`` blocks, ``n_heads``,
    ``patch``×``patch`` patches. U-Net: base width ``d_model`` channels, ``n_layers`` residual
    blocks per resolution (``n_heads`` and ``patch`` unused)."""

    d_model: int
    n_layers: int
    n_heads: int = 1
    patch: int = 2
    backbone: Backbone = "dit"
    image_size: int = 8
    channels: int = 1
    noise_schedule: NoiseScheduleKind = "cosine"
    timesteps: int = 1000

    def __post_init__(self) -> None:
        check_fields(self, positive=("d_model", "n_layers", "n_heads", "patch", "image_size", "channels", "timesteps"))
        if self.backbone == "dit":
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
            if self.image_size % self.patch:
                raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch ({self.patch})")
            if self.d_model % 4:
                raise ValueError(f"d_model ({self.d_model}) must be a multiple of 4 (2-D sin-cos positions)")
        elif self.image_size % 2:
            raise ValueError(f"the U-Net halves the image once: image_size ({self.image_size}) must be even")


# --- noise schedule ---------------------------------------------------------------------

@dataclass(frozen=True)
class NoiseSchedule:
    """Per-timestep constants, index t−1 for t = 1…T (float64 numpy)."""

    betas: np.ndarray

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_bar(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @property
    def alphas_bar_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_bar[:-1]])

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t (zero at t = 1)."""
        return (1 - self.alphas_bar_prev) / (1 - self.alphas_bar) * self.betas


@lru_cache(maxsize=8)
def make_schedule(kind: str, timesteps: int) -> NoiseSchedule:
    if kind == "linear":  # Ho et al.'s 1e-4…0.02 at T = 1000, rescaled for other T
        scale = 1000 / timesteps
        return NoiseSchedule(np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64))
    if kind == "cosine":  # Nichol & Dhariwal 2021, s = 0.008, β clipped at 0.999
        s = 0.008
        steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return NoiseSchedule(np.clip(1 - f[1:] / f[:-1], 0, 0.999))
    raise ValueError(f"unknown noise schedule {kind!r}; expected one of {list(get_args(NoiseScheduleKind))}")


def _at(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t−1] as a [B, 1, 1, 1] float32 tensor on ``like``'s device."""
    out = torch.as_tensor(values, dtype=torch.float64)[(t - 1).cpu()]
    return out.to(torch.float32).to(like.device).view(-1, 1, 1, 1)


# --- backbones ----------------------------------------------------------------------------

def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps t [B] → [B, dim] (Vaswani et al. frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(features, (0, dim - 2 * half))


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.dim).to(self.mlp[0].weight.dtype)
        return self.mlp(features)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid², dim] (half the channels per axis)."""
    coords = torch.arange(grid, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([axis(ys), axis(xs)], dim=1)


class DiT(nn.Module):
    """Maps noisy images [B, C, H, W] and timesteps [B] to predicted noise [B, C, H, W]."""

    def __init__(self, shape: DiffusionShape) -> None:
        super().__init__()
        self.shape = shape
        d, p, c = shape.d_model, shape.patch, shape.channels
        self.grid = shape.image_size // p
        self.patch_embed = nn.Conv2d(c, d, kernel_size=p, stride=p)
        self.register_buffer("pos", sincos_2d(self.grid, d), persistent=False)
        self.t_embed = TimestepEmbedding(d)
        self.blocks = nn.ModuleList(Block(d, shape.n_heads, causal=False) for _ in range(shape.n_layers))
        self.modulation = nn.ModuleList(nn.Linear(d, 6 * d) for _ in range(shape.n_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_modulation = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, p * p * c)
        for layer in (*self.modulation, self.final_modulation, self.final):  # adaLN-Zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p, g = self.shape.patch, self.grid
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)
        cond = F.silu(self.t_embed(t))[:, None, :]
        for block, modulation in zip(self.blocks, self.modulation):
            tokens = block(tokens, modulation(cond).chunk(6, dim=2))
        shift, scale = self.final_modulation(cond).chunk(2, dim=2)
        out = self.final(self.final_norm(tokens) * (1 + scale) + shift)  # [B, g², p·p·c]
        out = out.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, h, w)


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.t_proj(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """Two resolutions: ``n_layers`` blocks at full size (width w), a strided conv down,
    ``n_layers`` blocks at half size (2w), a nearest-neighbour up, and ``n_layers`` blocks at
    full size on the up path fed the saved full-size activations."""

    def __init__(self, shape: DiffusionShape) -> None:
        super().__init__()
        self.shape = shape
        w, c, n = shape.d_model, shape.channels, shape.n_layers
        self.t_embed = TimestepEmbedding(w)
        self.inp = nn.Conv2d(c, w, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(w, w, w) for _ in range(n))
        self.downsample = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = nn.ModuleList(ResBlock(2 * w, 2 * w, w) for _ in range(n))
        self.upsample = nn.Conv2d(2 * w, w, 3, padding=1)
        self.up = nn.ModuleList(ResBlock(2 * w if i == 0 else w, w, w) for i in range(n))
        self.out_norm = nn.GroupNorm(_groups(w), w)
        self.out = nn.Conv2d(w, c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = F.silu(self.t_embed(t))
        h = self.inp(x)
        for block in self.down:
            h = block(h, temb)
        skip = h
        h = self.downsample(h)
        for block in self.mid:
            h = block(h, temb)
        h = self.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = torch.cat([h, skip], dim=1)
        for block in self.up:
            h = block(h, temb)
        return self.out(F.silu(self.out_norm(h)))


# --- the family -----------------------------------------------------------------------------

def _predict(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε̂ in float32, whatever precision the model's weights are in."""
    return model(x.to(param_dtype(model)), t).float()


@register("diffusion")
class DiffusionFamily(ModelFamily):
    """DDPM image models; data unit: samples (images); ``loss`` is the ε-MSE per dimension."""

    tag = "ddpm"
    data_unit = DataUnit.SAMPLES
    loss_unit = "ε-MSE/dim"
    metrics = (Metric("loss", "ε-MSE/dim", f"ε-prediction error per dimension over a fixed grid of {EVAL_TIMESTEPS} timesteps"),
               Metric("bits_per_dim", "bits/dim", "variational bound L_T + L_0 + Σ L_{t-1} of the 8-bit image"),
               Metric("vb_nats_per_dim", "nats/dim", "the same bound in nats"))
    size_type, options_type, shape_type = DiffusionSize, DiffusionOptions, DiffusionShape

    def build(self, shape: DiffusionShape) -> nn.Module:
        return UNet(shape) if shape.backbone == "unet" else DiT(shape)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """ε-MSE per dimension at uniformly drawn timesteps (torch's global RNG)."""
        shape = unwrap(model).shape
        x0 = to_signed(batch)
        t = torch.randint(1, shape.timesteps + 1, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.noised(shape, x0, t, noise)
        return F.mse_loss(_predict(model, xt, t), noise)

    @staticmethod
    def noised(shape: DiffusionShape, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = _at(make_schedule(shape.noise_schedule, shape.timesteps).alphas_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @staticmethod
    def eval_grid(timesteps: int, k: int = EVAL_TIMESTEPS) -> np.ndarray:
        """Midpoints of k equal strata of 2…T (the stratified estimate of Σ_{t≥2} L_{t−1})."""
        edges = np.linspace(2, timesteps + 1, k + 1)
        return np.unique(np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        shape = unwrap(model).shape
        sched = make_schedule(shape.noise_schedule, shape.timesteps)
        grid = self.eval_grid(shape.timesteps)
        mse_sum = vb_sum = 0.0
        images = dims = 0
        for index, batch in enumerate(batches):
            x0 = to_signed(batch)
            b = x0.shape[0]
            d = x0[0].numel()
            gen = torch.Generator().manual_seed(EVAL_SEED + index)
            # L_{t-1} for the grid, t >= 2: ||ε − ε̂||² · β_t² / (2 σ_t² α_t (1 − ᾱ_t)), σ_t² = β̃_t
            kl_terms = torch.zeros(b, dtype=torch.float64)
            for t_value in grid:
                t = torch.full((b,), int(t_value), dtype=torch.long, device=x0.device)
                noise = torch.randn(x0.shape, generator=gen).to(x0.device)
                err = (_predict(model, self.noised(shape, x0, t, noise), t) - noise).pow(2).flatten(1).sum(1)
                i = int(t_value) - 1
                weight = sched.betas[i] ** 2 / (2 * sched.posterior_variance[i] * sched.alphas[i] * (1 - sched.alphas_bar[i]))
                kl_terms += weight * err.double().cpu()
                mse_sum += err.sum().item()
            kl_sum = kl_terms * (shape.timesteps - 1) / len(grid)
            # L_0: discretized-Gaussian decoder at t = 1, variance β₁
            t1 = torch.ones(b, dtype=torch.long, device=x0.device)
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            x1 = self.noised(shape, x0, t1, noise)
            eps = _predict(model, x1, t1)
            mean = (x1 - sched.betas[0] / math.sqrt(1 - sched.alphas_bar[0]) * eps) / math.sqrt(sched.alphas[0])
            log_scale = torch.full_like(mean, 0.5 * math.log(sched.betas[0]))
            l0 = -discretized_gaussian_log_likelihood(x0, mean, log_scale).flatten(1).sum(1).double().cpu()
            # L_T: KL(q(x_T | x_0) || N(0, I)), closed form
            ab_t = sched.alphas_bar[-1]
            x0d = x0.double().cpu().flatten(1)
            lt = 0.5 * (ab_t * x0d.pow(2) + (1 - ab_t) - 1 - math.log(1 - ab_t)).sum(1)
            vb_sum += (kl_sum + l0 + lt).sum().item()
            images += b
            dims = d
        if images == 0:
            raise ValueError("evaluation got no images")
        loss = mse_sum / (images * dims * len(grid))
        vb_nats = vb_sum / (images * dims)
        return {"loss": loss, "bits_per_dim": vb_nats / math.log(2), "vb_nats_per_dim": vb_nats}

    def num_params(self, shape: DiffusionShape) -> ParamCount:
        model = meta_model(self, shape)
        excluded = ("t_embed.", "patch_embed.")
        return ParamCount(scaling=count_params(model, excluded), total=count_params(model))

    def example_batch(self, shape: DiffusionShape, batch_size: int) -> torch.Tensor:
        return random_images(shape, batch_size)

    def tiny(self) -> DiffusionShape:
        return DiffusionShape(d_model=32, n_layers=2, n_heads=2, patch=2, image_size=8, channels=1)

    def shape_from_params(self, target: int, options: DiffusionOptions, data: DataShape) -> DiffusionShape:
        """DiT with N ≈ ``target`` by the language model's rule (N ≈ 12·L·d² plus adaLN's
        6·L·d², so N ≈ 18·L·d²; d ≈ aspect_ratio·L, a multiple of ``head_dim``); patch 2."""
        if target < 1:
            raise ValueError(f"target parameter count must be positive, got {target}")
        if options.backbone != "dit":
            raise ValueError("sizes given as params follow the DiT rule; give the U-Net's d_model and n_layers")
        r, head_dim = options.aspect_ratio, options.head_dim
        n_layers = max(1, round((target / (18 * r**2)) ** (1 / 3)))
        d_model = max(head_dim, head_dim * round(math.sqrt(target / (18 * n_layers)) / head_dim))
        return DiffusionShape(d_model=d_model, n_layers=n_layers, n_heads=max(1, d_model // head_dim),
                              image_size=data.image_size, channels=data.channels,
                              backbone=options.backbone, noise_schedule=options.noise_schedule)

    # --- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_ddpm(self, model: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
        """Ancestral sampling over all T steps, σ_t² = β̃_t (β₁ at the last step skipped: the
        mean is returned, as Ho et al. display samples). Returns [n, C, H, W] in [−1, 1]."""
        shape = unwrap(model).shape
        sched = make_schedule(shape.noise_schedule, shape.timesteps)
        device = next(unwrap(model).parameters()).device
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((n, shape.channels, shape.image_size, shape.image_size), generator=gen).to(device)
        for t_value in range(shape.timesteps, 0, -1):
            i = t_value - 1
            t = torch.full((n,), t_value, dtype=torch.long, device=device)
            eps = _predict(model, x, t)
            x = (x - sched.betas[i] / math.sqrt(1 - sched.alphas_bar[i]) * eps) / math.sqrt(sched.alphas[i])
            if t_value > 1:
                x = x + math.sqrt(sched.posterior_variance[i]) * torch.randn(x.shape, generator=gen).to(device)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def sample_ddim(self, model: nn.Module, n: int, steps: int = DDIM_STEPS, seed: int = 0) -> torch.Tensor:
        """Deterministic DDIM (η = 0, Song et al. 2021) over ``steps`` evenly spaced timesteps."""
        shape = unwrap(model).shape
        sched = make_schedule(shape.noise_schedule, shape.timesteps)
        device = next(unwrap(model).parameters()).device
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((n, shape.channels, shape.image_size, shape.image_size), generator=gen).to(device)
        times = np.unique(np.linspace(1, shape.timesteps, min(steps, shape.timesteps)).round().astype(int))[::-1]
        for k, t_value in enumerate(times):
            ab = sched.alphas_bar[t_value - 1]
            ab_prev = sched.alphas_bar[times[k + 1] - 1] if k + 1 < len(times) else 1.0
            eps = _predict(model, x, torch.full((n,), int(t_value), dtype=torch.long, device=device))
            x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # consistent with the clipped x0
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
        return x.clamp(-1, 1)

    def artifacts(self, model: nn.Module, batches: list[torch.Tensor], n: int) -> dict[str, bytes]:
        """Sample grids for the report: DDPM (all T steps) and DDIM (50 steps), fixed seeds."""
        if n < 1:
            return {}
        steps = unwrap(model).shape.timesteps
        return {
            f"DDIM samples ({DDIM_STEPS} steps)": png_grid(self.sample_ddim(model, n)),
            f"DDPM samples ({steps} steps)": png_grid(self.sample_ddpm(model, n)),
        }
