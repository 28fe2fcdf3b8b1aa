"""Simulation tests fit one data set per seed: the seeds run in parallel, one process per
core, each fit on one core (the analysis layer's own pool of bootstrap workers)."""

from __future__ import annotations

import os


def over_seeds(fn, seeds) -> list:
    """``[fn(seed) for seed in seeds]``, computed in parallel; ``fn`` must be a module-level
    function (the worker processes import it)."""
    from analysis.laws import _pool

    return list(_pool(max(1, os.cpu_count() or 1)).map(fn, seeds))
