"""Simulated series with known answers, to measure the emergence detector's error rates.

Two kinds of truth, each sampled at 5 to 12 scales spread evenly in log scale over 2 to 6
decades, as accuracies in [0, 1]:

- smooth curves, which must not be called ``emergent``: a power law in the scale
  (lo + (hi − lo)·(x/x_max)^a, rescaled to run from lo to hi), a straight line in log scale,
  and a sigmoid in log scale whose 10–90% rise spans 1 to 1.5 times the whole range; lo in
  [0, 0.3], a rise hi − lo of 0.05 to 0.7; half of them with the true starting value given
  as the chance level (the hardest case: a slow start that sits on chance);
- steps, which must be called ``emergent`` with the true step inside the threshold
  bracket: a plateau at a level in [0, 0.3] (given as chance half of the time), then a step
  up at a place with at least two points on each side, of ``size`` standard errors of the
  difference between the points either side (√(se_before² + se_after²)), flat after it.

Noise of known size: ``binomial`` (100, 256 or 1000 items; the detector is given the item
count), ``gaussian`` (sd 0.005, 0.01 or 0.02; the detector is given the standard errors) and
``unknown`` (the same Gaussian noise; the detector is given nothing and estimates it).

``tests/analysis/test_emergence_calibration.py`` checks the targets at the default level;
``benchmarks/emergence_calibration.py`` prints the rates at several levels (docs/emergence.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.emergence import LEVEL, MetricSpec, analyse_series
from analysis.records import Verdict

NOISES = ("binomial", "gaussian", "unknown")
SMOOTH_FAMILIES = ("power_law", "log_linear", "wide_sigmoid")
STEP_SIZE = 5.0  # standard errors of the difference of the points either side of the step
ITEMS = (100, 256, 1000)
SDS = (0.005, 0.01, 0.02)


@dataclass(frozen=True)
class Draw:
    family: str
    x: np.ndarray
    y: np.ndarray  # observed
    spec: MetricSpec
    se: np.ndarray | None
    step: int | None  # the true step's index; None for a smooth curve


def _scales(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x, t): 5 to 12 scales over 2 to 6 decades, and their position t in [0, 1]."""
    n = int(rng.integers(5, 13))
    t = np.linspace(0.0, 1.0, n)
    return 10 ** (8 + rng.uniform(2, 6) * t), t


def _observe(rng: np.random.Generator, truth: np.ndarray, noise: str, items: int, sd: float, family: str,
             x: np.ndarray, chance: float | None, step: int | None) -> Draw:
    """The truth seen through ``noise``: a binomial over ``items``, or Gaussian of ``sd``."""
    if noise == "binomial":
        y = rng.binomial(items, np.clip(truth, 0, 1)) / items
        return Draw(family, x, y, MetricSpec("sim/acc", n_items=items, chance=chance), None, step)
    y = truth + rng.normal(0, sd, len(truth))
    se = np.full(len(truth), sd) if noise == "gaussian" else None
    return Draw(family, x, y, MetricSpec("sim/acc", chance=chance), se, step)


def smooth_draw(rng: np.random.Generator, noise: str) -> Draw:
    """One smooth curve of a random family (module docstring)."""
    x, t = _scales(rng)
    family = SMOOTH_FAMILIES[int(rng.integers(len(SMOOTH_FAMILIES)))]
    lo = rng.uniform(0.0, 0.3)
    rise = rng.uniform(0.05, 0.7)
    if family == "power_law":
        shape = (x / x[-1]) ** rng.uniform(0.1, 1.5) if rng.random() < 0.5 else 10 ** (rng.uniform(0.3, 3.0) * (t - 1))
    elif family == "log_linear":
        shape = t
    else:
        width = rng.uniform(1.0, 1.5)
        shape = 1 / (1 + np.exp(-(t - rng.uniform(0.2, 0.8)) * 2 * math.log(9) / width))
    shape = (shape - shape[0]) / (shape[-1] - shape[0])
    truth = lo + rise * shape
    chance = float(truth[0]) if rng.random() < 0.5 else None
    items = int(rng.choice(ITEMS)) if noise == "binomial" else 0
    sd = float(rng.choice(SDS)) if noise != "binomial" else 0.0
    return _observe(rng, truth, noise, items, sd, family, x, chance, None)


def _step_height(noise: str, base: float, items: int, sd: float, size: float) -> float:
    """The height J of a step from ``base`` of ``size`` standard errors of the difference."""
    if noise != "binomial":
        return size * math.sqrt(2) * sd

    def se(p: float) -> float:
        p = min(max(p, 0.0), 1.0)
        smoothed = (p * items + 0.5) / (items + 1)
        return math.sqrt(smoothed * (1 - smoothed) / items)

    height = size * math.sqrt(2) * se(base)
    for _ in range(50):  # fixed point: the error after the step depends on its height
        height = size * math.hypot(se(base), se(base + height))
    return height


def step_draw(rng: np.random.Generator, noise: str, size: float = STEP_SIZE) -> Draw:
    """One step (module docstring)."""
    x, _ = _scales(rng)
    n = len(x)
    k = int(rng.integers(2, n - 1))
    base = rng.uniform(0.0, 0.3)
    items, sd = int(rng.choice(ITEMS)), float(rng.choice(SDS))
    truth = base + _step_height(noise, base, items, sd, size) * (np.arange(n) >= k)
    chance = base if rng.random() < 0.5 else None
    return _observe(rng, truth, noise, items, sd, "step", x, chance, k)


def verdict(draw: Draw, level: float = LEVEL):
    return analyse_series(draw.x, draw.y, draw.spec, se=draw.se, axis="N", level=level, bootstrap=0)


def detected(draw: Draw, level: float = LEVEL) -> bool:
    """Called emergent with the true step inside the threshold bracket."""
    r = verdict(draw, level)
    return (r.verdict == Verdict.EMERGENT and r.threshold["low"] == draw.x[draw.step - 1]
            and r.threshold["high"] == draw.x[draw.step])


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a rate k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(noise: str, *, level: float = LEVEL, smooth: int = 600, steps: int = 300, seed: int = 0,
          size: float = STEP_SIZE) -> dict:
    """False alarms (``emergent`` on smooth curves, by family) and detections (by number of
    scales) over seeded draws: {"false_alarm": {family | "all": [k, n]}, "detection": {n | "all": [k, n]}}."""
    rng = np.random.default_rng([seed, NOISES.index(noise)])
    false_alarm: dict = {f: [0, 0] for f in (*SMOOTH_FAMILIES, "all")}
    for _ in range(smooth):
        draw = smooth_draw(rng, noise)
        hit = int(verdict(draw, level).verdict == Verdict.EMERGENT)
        for key in (draw.family, "all"):
            false_alarm[key][0] += hit
            false_alarm[key][1] += 1
    detection: dict = {"all": [0, 0]}
    for _ in range(steps):
        draw = step_draw(rng, noise, size)
        hit = int(detected(draw, level))
        for key in (len(draw.x), "all"):
            detection.setdefault(key, [0, 0])
            detection[key][0] += hit
            detection[key][1] += 1
    return {"false_alarm": false_alarm, "detection": dict(sorted(detection.items(), key=lambda kv: str(kv[0])))}
