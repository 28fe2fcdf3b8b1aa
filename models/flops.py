"""Measured training FLOPs: torch's FlopCounterMode on a real forward + backward.

Attention runs through SDPA's math backend while counting: the fused CPU flash kernel is
not in FlopCounterMode's table and would count as zero. The math backend is counted at the
full T×T score matrix (no causal discount), the same convention as the analytic counts.
Losses that draw noise (diffusion timesteps, VAE posterior samples) draw it from a fixed
seed here, with the caller's RNG state left as it was.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from analysis.records import DataUnit

_CACHE: dict[tuple, float] = {}
EXAMPLE_BATCH = 4


def units_in(data_unit: DataUnit, batch: torch.Tensor) -> int:
    """Data units in a batch: a token batch [B, T+1] trains on B·T tokens (the last column
    is only a target); an image batch holds B samples."""
    return batch[:, 1:].numel() if data_unit == DataUnit.TOKENS else batch.shape[0]


def measured_flops_per_unit(family, shape, batch: torch.Tensor | None = None) -> float:
    """Training FLOPs per data unit of ``family`` at ``shape``, counted on one real forward +
    backward of ``batch`` (default: the family's example batch) by a fresh model. Cached per
    (family, shape, batch shape)."""
    if batch is None:
        batch = family.example_batch(shape, EXAMPLE_BATCH)
    key = (family.name, repr(shape), tuple(batch.shape))
    if key not in _CACHE:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = family.build(shape).to(batch.device)
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                family.loss(model, batch).backward()
        _CACHE[key] = counter.get_total_flops() / units_in(family.data_unit, batch)
    return _CACHE[key]
