"""Learning-rate schedules, as multipliers of the peak LR per optimizer step (0-based).

- ``cosine``: linear warmup over ``warmup_steps``, then a cosine from 1 to ``min_ratio`` at
  the trial's last step. Each data budget is its own run.
- ``wsd`` (warmup–stable–decay; Hägele et al. 2024, MiniCPM, DeepSeek LLM): linear warmup,
  then constant 1 until ``decay_start``, then a cooldown to ``min_ratio`` at the last step,
  ``linear`` (1 − p) or ``1-sqrt`` (1 − √p) in the cooldown's progress p. Because everything
  before the cooldown is the same for every budget, one constant-LR *trunk* per model size
  serves them all: each budget's *branch* restarts from the trunk's checkpoint at its
  ``decay_start`` and trains only its cooldown.
"""

from __future__ import annotations

import math

from analysis.records import Schedule


def cosine(step: int, steps: int, warmup_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def wsd(step: int, steps: int, warmup_steps: int, decay_start: int, min_ratio: float,
        shape: str = "1-sqrt") -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < decay_start or decay_start >= steps:  # a trunk never decays
        return 1.0
    progress = min(1.0, (step + 1 - decay_start) / max(1, steps - decay_start))  # 1 at the last step
    fall = progress if shape == "linear" else math.sqrt(progress)
    return min_ratio + (1 - min_ratio) * (1 - fall)


def lr_multiplier(cfg):
    """``step -> multiplier`` of a TrialConfig's schedule."""
    tr = cfg.training
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else round(tr.warmup_fraction * cfg.steps)
    if tr.schedule == Schedule.WSD:
        decay = cfg.decay_start if cfg.decay_start > 0 else cfg.steps - max(1, round(tr.cooldown_fraction * cfg.steps))
        return lambda s: wsd(s, cfg.steps, warmup, decay, tr.min_lr_ratio, tr.cooldown_shape)
    return lambda s: cosine(s, cfg.steps, warmup, tr.min_lr_ratio)
