"""The curves the emergence detector compares, fitted by weighted least squares.

Every model here is linear in all but at most two of its parameters, so each is fitted
exactly for every point of a grid over the others (variable projection) and the best grid
point wins: no starting values, no optimiser that fails on one draw in a hundred, and fast
enough to run thousands of simulated series in the calibration tests. All curves are in
u = log10(scale) (or the negated loss on a loss axis), increasing scale to the right.

- ``linear``: a + b·u (2 parameters);
- ``power``: c + A·10^{α·u}, α of either sign (3): a power law in the scale itself;
- ``wide_sigmoid``: floor + height·σ((u − m)/s) whose 10–90% rise spans at least
  ``SMOOTH_WIDTH`` of the axis range (4): a transition too gradual to call sharp;
- ``sigmoid``: the same with any width (4), to describe a transition once one is found;
- ``constant`` (1), the null of the trend test.

Any of them can carry a step: one more column, 1 from the k-th point on, whose coefficient
is the step's height J. A model with the step contains the model without it, so the drop
in χ² from adding it is a likelihood-ratio statistic with one degree of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SMOOTH_WIDTH = 1.0  # a sigmoid rising 10%→90% over at least this share of the axis range is smooth
LN81 = 2 * math.log(9)  # 10%-90% width of a logistic in units of its scale s

PARAMETERS = {"constant": 1, "linear": 2, "power": 3, "wide_sigmoid": 4, "sigmoid": 4}
SMOOTH = ("linear", "power", "wide_sigmoid")  # the null: trends that are not a sharp transition


@dataclass(frozen=True)
class Fitted:
    model: str
    chi2: float
    coef: np.ndarray  # the linear coefficients (intercept first; the step's height last)
    theta: tuple  # the grid parameters: () | (alpha,) | (mid, scale)
    step: int | None = None

    @property
    def parameters(self) -> int:
        return PARAMETERS[self.model] + (self.step is not None)

    @property
    def jump(self) -> float:
        return float(self.coef[-1]) if self.step is not None else 0.0


def _grid(model: str, u: np.ndarray) -> np.ndarray:
    """The grid of the nonlinear parameters: [G, 0] | [G, 1] (alpha) | [G, 2] (mid, scale)."""
    lo, hi = float(u.min()), float(u.max())
    span = (hi - lo) or 1.0
    if model in ("constant", "linear"):
        return np.zeros((1, 0))
    if model == "power":
        rates = np.logspace(-2, math.log10(8.0), 40) / span  # 10^(α·span) from 1.02 to 1e8
        return np.concatenate([rates, -rates])[:, None]
    smallest = SMOOTH_WIDTH * span / LN81 if model == "wide_sigmoid" else 2e-3 * span / LN81
    scales = np.geomspace(smallest, 3 * span, 12 if model == "wide_sigmoid" else 20)
    mids = np.linspace(lo - 0.5 * span, hi + 0.5 * span, 25 if model == "wide_sigmoid" else 41)
    return np.stack(np.meshgrid(mids, scales, indexing="ij"), axis=-1).reshape(-1, 2)


def logistic(u, floor, height, mid, scale):
    """floor + height / (1 + exp(−(u − mid) / scale)), safe from overflow."""
    return floor + height / (1.0 + np.exp(-np.clip((u - mid) / scale, -50, 50)))


def _design(model: str, theta: np.ndarray, u: np.ndarray, step: int | None) -> np.ndarray:
    """The columns of ``model`` at every grid point ``theta`` [G, p]: [G, n, q]."""
    g = len(theta)
    cols = [np.ones((g, len(u)))]
    if model == "linear":
        cols.append(np.broadcast_to(u - u.mean(), (g, len(u))))
    elif model == "power":
        alpha = theta[:, :1]
        anchor = np.where(alpha > 0, u.max(), u.min())  # the column is at most 1: well conditioned
        cols.append(np.power(10.0, alpha * (u[None, :] - anchor)))
    elif model != "constant":
        cols.append(logistic(u[None, :], 0.0, 1.0, theta[:, :1], theta[:, 1:]))
    if step is not None:
        cols.append(np.broadcast_to((np.arange(len(u)) >= step).astype(float), (g, len(u))))
    return np.stack(cols, axis=-1)


def fit(model: str, u: np.ndarray, y: np.ndarray, w: np.ndarray, step: int | None = None) -> Fitted:
    """The best fit of ``model`` (with a step up from index ``step`` when given), weights
    ``w`` = 1/se²."""
    grid = _grid(model, u)
    design = _design(model, grid, u, step)  # [G, n, q]
    xtw = design.transpose(0, 2, 1) * w  # [G, q, n]
    gram = xtw @ design
    q = gram.shape[-1]
    ridge = 1e-10 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(q)  # near-collinear columns
    coef = np.linalg.solve(gram + ridge, (xtw @ y)[..., None])[..., 0]  # [G, q]
    resid = y[None, :] - np.einsum("gnq,gq->gn", design, coef)
    chi2 = np.sum(w * resid**2, axis=1)
    best = int(np.argmin(chi2))
    return Fitted(model, float(chi2[best]), coef[best], tuple(grid[best]), step)


def predict(f: Fitted, u: np.ndarray) -> np.ndarray:
    return _design(f.model, np.array([f.theta]).reshape(1, -1), u, f.step)[0] @ f.coef


def sigmoid_shape(f: Fitted) -> tuple[float, float]:
    """(midpoint u, 10–90% width in u) of a fitted sigmoid."""
    mid, scale = f.theta
    return float(mid), float(LN81 * scale)


def aicc(chi2: float, k: int, n: int) -> float | None:
    if n - k - 1 <= 0:
        return None
    return chi2 + 2 * k + 2 * k * (k + 1) / (n - k - 1)
