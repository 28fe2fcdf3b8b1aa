"""Small result objects every fit returns, and their JSON form (``scalinglab fit --format json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval (2.5th and 97.5th bootstrap percentiles;
    both equal to the estimate when the bootstrap is off)."""

    value: float
    low: float
    high: float

    @classmethod
    def from_samples(cls, value: float, samples: np.ndarray | None) -> "Interval":
        samples = None if samples is None else np.asarray(samples, dtype=float)
        if samples is None or not np.isfinite(samples).any():
            return cls(float(value), float(value), float(value))
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        return cls(float(value), float(low), float(high))

    def to_json(self) -> dict:
        return {"value": _num(self.value), "low": _num(self.low), "high": _num(self.high)}

    def text(self, spec: str = ".4g") -> str:
        """'value [low, high]' in the format ``spec``."""
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


@dataclass
class FitResult:
    law: str
    n_points: int
    dropped: int
    params: dict[str, Interval]
    derived: dict[str, Interval] = field(default_factory=dict)
    r2_log: float | None = None
    warnings: list[str] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)
    # Bootstrap draws of each parameter (natural units, same keys as params and derived), for
    # error bands in the report; None without a bootstrap. Not part of the JSON document.
    samples: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def estimate(self, name: str) -> Interval | None:
        """A fitted parameter or a derived quantity by name (IsoFLOP fits its a; the
        Chinchilla law and the envelope derive theirs), or None."""
        return self.params[name] if name in self.params else self.derived.get(name)

    def to_json(self, *, with_samples: bool = False) -> dict:
        """The JSON document of ``scalinglab fit --format json``; ``with_samples`` adds the
        bootstrap draws (``fits.json`` keeps them, so a report can draw bands without refitting)."""
        out = {
            "law": self.law,
            "n_points": self.n_points,
            "dropped": self.dropped,
            "params": {k: v.to_json() for k, v in self.params.items()},
            "derived": {k: v.to_json() for k, v in self.derived.items()},
            "r2_log": _num(self.r2_log),
            "warnings": list(self.warnings),
            "predictions": [jsonable(p) for p in self.predictions],
            "diagnostics": jsonable(self.diagnostics),
        }
        if with_samples and self.samples:
            out["samples"] = {k: [_num(x) for x in np.asarray(v, dtype=float)] for k, v in self.samples.items()}
        return out

    @classmethod
    def from_json(cls, doc: dict) -> "FitResult":
        """The inverse of ``to_json`` (JSON nulls come back as NaN where numbers belong)."""
        def iv(d):
            return Interval(*(float("nan") if d[k] is None else float(d[k]) for k in ("value", "low", "high")))

        def is_interval(v):
            return isinstance(v, dict) and set(v) == {"value", "low", "high"}

        predictions = [{k: iv(v) if is_interval(v) else v for k, v in p.items()} for p in doc.get("predictions", [])]
        samples = doc.get("samples")
        return cls(doc["law"], int(doc["n_points"]), int(doc["dropped"]),
                   {k: iv(v) for k, v in doc["params"].items()}, {k: iv(v) for k, v in doc.get("derived", {}).items()},
                   doc.get("r2_log"), list(doc.get("warnings", [])), predictions, dict(doc.get("diagnostics", {})),
                   None if samples is None else {k: np.array([np.nan if x is None else x for x in v], dtype=float)
                                                 for k, v in samples.items()})


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj):
    if isinstance(obj, Interval):
        return obj.to_json()
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def r2_log(logy: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(((logy - logy.mean()) ** 2).sum())
    return 1.0 - float(((logy - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def interval_warnings(params: dict[str, Interval]) -> list[str]:
    return [f"{name}: the 95% interval [{iv.low:.3g}, {iv.high:.3g}] is wider than the estimate "
            f"{iv.value:.3g}; the data do not pin it down"
            for name, iv in params.items() if iv.high - iv.low > abs(iv.value)]
