"""Synthetic ladders drawn from a known two-step model, to measure how often task predictions'
intervals hold the truth (tests/analysis/test_task_simulation.py, benchmarks/task_prediction.py).

The truth: task loss L(N, D) = E + A/N^α + B/D^β (in bits per byte of the answer, OLMo-like
magnitudes), accuracy = chance + (ceiling − chance)·σ(−(L − mid)/scale). A ladder of 4 sizes
× 4 token multipliers (20, 40, 100 and 200 tokens per parameter: 1, 2, 5 and 10× Chinchilla,
as Bhagia et al.), each with 10 evenly spaced checkpoints; its runs' final task losses span
1.0–1.8 and the target's is 0.87. Noise:
- each run's task loss is off its law by a run-level factor (lognormal, ``run_noise``) and each
  checkpoint by a smaller one (``checkpoint_noise``): seeds and data order;
- accuracy is a binomial draw over ``items`` questions at the checkpoint's true accuracy.
The target is 10× the ladder's largest compute, N and D each √10× the largest run's.

Scenarios: ``mid`` (the ladder's accuracies climb through the sigmoid past its midpoint) and
``floor`` (the ladder stays near chance; the target needs the curve's middle), where an
honest interval is wide. ``noise_only``: accuracy unrelated to loss, pure binomial noise
(the noise check must refuse it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.task import Ladder

LAW = {"E": 0.45, "A": 180.0, "alpha": 0.30, "B": 320.0, "beta": 0.28}
SIZES = (1.5e8, 3.0e8, 6.0e8, 1.2e9)
TOKENS_PER_PARAM = (20, 40, 100, 200)
CHECKPOINTS = 10
SCENARIOS = {  # chance, ceiling, mid (task loss), scale
    "mid": (0.25, 0.85, 1.15, 0.12),  # the ladder climbs past the midpoint: accuracy 0.25 to 0.65
    "floor": (0.25, 0.85, 0.85, 0.06),  # the ladder stays within 0.03 of chance; the target is at 0.5
    "noise_only": (0.40, 0.40, 1.15, 0.12),  # accuracy 0.4 whatever the loss
}


def task_loss(n, d):
    return LAW["E"] + LAW["A"] / np.power(n, LAW["alpha"]) + LAW["B"] / np.power(d, LAW["beta"])


def true_accuracy(loss, scenario: str):
    chance, ceiling, mid, scale = SCENARIOS[scenario]
    return chance + (ceiling - chance) / (1.0 + np.exp((np.asarray(loss) - mid) / scale))


def target() -> dict:
    """The prediction target: 10x the ladder's largest compute, N and D each sqrt(10)x."""
    n, d = SIZES[-1] * 10**0.5, SIZES[-1] * TOKENS_PER_PARAM[-1] * 10**0.5
    return {"N": n, "D": d}


def simulate(seed: int, scenario: str = "mid", *, items: int = 1000, run_noise: float = 0.01,
             checkpoint_noise: float = 0.004) -> tuple[Ladder, dict]:
    """(a ladder, the truth at ``target()``: its task loss and accuracy)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in SIZES:
        for tpp in TOKENS_PER_PARAM:
            run = f"n{n:.2g}-x{tpp}"
            d_final = n * tpp
            offset = rng.normal(0.0, run_noise)
            for k in range(1, CHECKPOINTS + 1):
                d = d_final * k / CHECKPOINTS
                loss = task_loss(n, d) * np.exp(offset + rng.normal(0.0, checkpoint_noise))
                acc = rng.binomial(items, true_accuracy(loss, scenario)) / items
                rows.append({"run": run, "step": k, "N": n, "D": d, "C": 6 * n * d, "loss": loss, "acc": acc})
    chance = SCENARIOS[scenario][0]
    t = target()
    truth = {**t, "task_loss": float(task_loss(t["N"], t["D"])),
             "accuracy": float(true_accuracy(task_loss(t["N"], t["D"]), scenario))}
    return Ladder(f"synthetic-{scenario}", pd.DataFrame(rows), chance=chance), truth


def coverage(scenario: str, seeds, *, bootstrap: int = 200) -> list[dict]:
    """One row per seed: whether the 95% interval of the accuracy predicted at ``target()``
    holds the truth, its width, and the task's verdicts."""
    from analysis.task import predict_task

    rows = []
    for seed in seeds:
        ladder, truth = simulate(seed, scenario)
        doc = predict_task(ladder, [target()], bootstrap=bootstrap, seed=seed, held_out=False, check_resamples=0)
        acc = doc["predictions"][0]["accuracy"]
        rows.append({"seed": seed, "covered": bool(acc["low"] <= truth["accuracy"] <= acc["high"]),
                     "width": acc["high"] - acc["low"], "error": acc["value"] - truth["accuracy"],
                     "predictable": doc["predictable"],
                     "reach_warning": any("no checkpoint constrains" in w for w in doc["warnings"])})
    return rows


def refusals(scenario: str, seeds) -> int:
    """How many of the ladders ``seeds`` draws the noise check refuses (``predictable: false``)."""
    from analysis.task import SNR_MIN, noise_check

    return sum(noise_check(simulate(seed, scenario)[0])["snr"] < SNR_MIN for seed in seeds)
