"""What the image families (diffusion, VAE, GAN) share: pixel scaling, likelihoods, parameter
counting, the width rule for sizes given as params, and PNG sample grids.

Batches of every image family are ``uint8`` tensors [B, C, H, W] straight from
``experiments.image_data``; each family scales them itself:
- :func:`to_signed`: x = u / 127.5 − 1, in [−1, 1], 256 levels 2/255 apart (diffusion, and
  the VAE's discretized-Gaussian likelihood);
- :func:`binarize`: x = 1 where u ≥ 128, else 0 (the VAE's Bernoulli likelihood, which then
  models the binarized images: its nats/dim are not comparable with the Gaussian's).
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn


def to_signed(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def binarize(batch: torch.Tensor) -> torch.Tensor:
    return (batch >= 128).float()


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element, for x on the 256-level grid of [−1, 1], under a Gaussian
    N(mean, exp(log_scale)²) integrated over each level's bin (width 2/255; the end bins
    reach to ±∞), as in Ho et al. 2020's decoder. Summed over pixels it is a log-probability
    of the 8-bit image, so −sum / (dims · ln 2) is bits per dimension."""
    inv = torch.exp(-log_scale)
    upper = (x - mean + 1.0 / 255) * inv
    lower = (x - mean - 1.0 / 255) * inv
    cdf_upper = torch.special.ndtr(upper)
    cdf_lower = torch.special.ndtr(lower)
    log_upper = torch.special.log_ndtr(upper)  # log P(X < x + half bin): for x at −1
    log_one_minus_lower = torch.special.log_ndtr(-lower)  # log P(X > x − half bin): for x at 1
    mid = torch.log((cdf_upper - cdf_lower).clamp_min(1e-12))
    return torch.where(x < -0.999, log_upper, torch.where(x > 0.999, log_one_minus_lower, mid))


def count_params(model: nn.Module, exclude: Iterable[str] = ()) -> int:
    """Parameters of ``model`` whose names do not start with any prefix in ``exclude``."""
    prefixes = tuple(exclude)
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(prefixes))


def meta_model(family, shape) -> nn.Module:
    """The family's model at ``shape`` on the meta device: counts without allocating."""
    with torch.device("meta"):
        return family.build(shape)


def nearest_width(family, target: int, shape_at: Callable[[int], Any]) -> Any:
    """The shape ``shape_at(w)``, w a multiple of 4 up to 1024, whose scaling N is nearest
    ``target`` in log scale (the image families' ``shape_from_params`` rule)."""
    if target < 1:
        raise ValueError(f"target parameter count must be positive, got {target}")
    widths = range(4, 1025, 4)
    return shape_at(min(widths, key=lambda w: abs(math.log(family.num_params(shape_at(w)).scaling / target))))


def png_grid(images: torch.Tensor, ncol: int | None = None) -> bytes:
    """PNG bytes of a grid of images in [−1, 1] ([N, C, H, W], C = 1 or 3), 1-pixel gaps."""
    from PIL import Image

    images = images.detach().float().clamp(-1, 1).cpu()
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 255, dtype=np.uint8)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncol)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = pixels[i]
    image = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    scale = max(1, 256 // max(canvas.shape[:2]))  # 8x8 digits are too small to see unscaled
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def unwrap(model: nn.Module) -> nn.Module:
    """The user model inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def param_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's weights (bf16 under DeepSpeed's bf16 mode): inputs are cast to it."""
    return next(unwrap(model).parameters()).dtype


def random_images(shape, batch_size: int) -> torch.Tensor:
    """A random uint8 batch [B, C, H, W] at the shape's ``channels`` and ``image_size``."""
    return torch.randint(0, 256, (batch_size, shape.channels, shape.image_size, shape.image_size),
                         dtype=torch.uint8)
