"""What an adaptive design is asked to do (``budgets.adaptive`` of a spec): its target and
its settings, declared once for the spec (``experiments.spec``, which builds them from YAML)
and the design (``analysis.design``, which runs them). Part of the shared contract: it imports
only the standard library, so every layer may import it.
"""

from __future__ import annotations

import dataclasses


def _doc(default, doc: str):  # a dataclass field with its docs/spec.md text (as models.family.doc_field)
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """What an adaptive design narrows (``budgets.adaptive.target``): the loss at ``N`` and
    ``D``, the loss at the compute-optimal split of ``C``, or the allocation exponent a of
    N_opt ∝ C^a (``allocation: true``)."""

    N: float | None = _doc(None, "the loss at this N (with D)")
    D: float | None = _doc(None, "... and this D, in the family's data unit")
    C: float | None = _doc(None, "the loss at the compute-optimal split of this many FLOPs")
    allocation: bool = _doc(False, "true: the allocation exponent a instead of a loss")

    def __post_init__(self) -> None:
        kinds = [self.allocation, self.C is not None, self.N is not None or self.D is not None]
        if sum(kinds) != 1 or (kinds[2] and (self.N is None or self.D is None)):
            raise ValueError("give N and D (the loss there), C (the loss at its compute-optimal split) "
                             "or allocation: true (the exponent a)")
        if any(v is not None and not v > 0 for v in (self.N, self.D, self.C)):
            raise ValueError("N, D and C must be positive")

    def describe(self) -> str:
        if self.allocation:
            return "the allocation exponent a"
        if self.C is not None:
            return f"the loss at the compute-optimal split of C={self.C:.3g}"
        return f"the loss at N={self.N:.3g}, D={self.D:.3g}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveSpec:
    """``budgets.adaptive``: how an adaptive design chooses among the candidates (every size
    × ``candidates`` data budgets log-spaced over the range ``budgets.tokens``/``samples``
    gives) and when it stops (``analysis.design``, docs/adaptive.md)."""

    target: Target = _doc(None, "what to narrow: {N, D}, {C} or {allocation: true}")
    candidates: int = _doc(8, "data budgets per size, log-spaced over the budgets' [low, high]")
    seed_points: int = _doc(6, "runs spread over the region before the first choice (at least 6: the law has 5 "
                            "parameters)")
    batch: int = _doc(1, "runs chosen per decision")
    stop_width: float = _doc(0.02, "stop once the target's 95% interval is this narrow: (high - low) / |value|")
    max_flops: float | None = _doc(None, "stop before spending more FLOPs than this (null: no limit)")
    max_trials: int = _doc(30, "stop after this many runs (seed design included)")
    bootstrap: int = _doc(200, "bootstrap draws of each refit")
    seed: int = _doc(0, "seeds the refits' bootstrap")

    def __post_init__(self) -> None:
        if self.target is None:
            raise ValueError("target is required: {N: …, D: …}, {C: …} or {allocation: true}")
        if self.candidates < 2 or self.seed_points < 6 or self.batch < 1 or self.bootstrap < 20:
            raise ValueError("candidates >= 2, seed_points >= 6, batch >= 1 and bootstrap >= 20")
        if not self.stop_width > 0 or self.max_trials < self.seed_points:
            raise ValueError("stop_width must be positive and max_trials at least seed_points")
        if self.max_flops is not None and not self.max_flops > 0:
            raise ValueError("max_flops must be positive (or null: no limit)")
