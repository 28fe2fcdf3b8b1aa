"""Measured training FLOPs: torch's FlopCounterMode on a real forward + backward.

Attention runs through SDPA's math backend while counting: the fused CPU flash kernel is
not in FlopCounterMode's table and would count as zero. The math backend is counted at the
full T×T score matrix (no causal discount), the same convention as the analytic counts.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

_CACHE: dict[tuple, float] = {}


def measured_flops_per_unit(family, shape, batch: torch.Tensor, units: int) -> float:
    """Training FLOPs per data unit of ``family`` at ``shape``, counted on one real
    forward + backward of ``batch`` (holding ``units`` data units) by a fresh model.
    Cached per (family, shape, batch shape)."""
    key = (family.name, repr(shape), tuple(batch.shape))
    if key not in _CACHE:
        model = family.build(shape).to(batch.device)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            family.loss(model, batch).backward()
        _CACHE[key] = counter.get_total_flops() / units
    return _CACHE[key]

