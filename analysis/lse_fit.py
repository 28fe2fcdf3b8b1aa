"""Fitting laws of the form L = E + Σ_k A_k · x_k^(−α_k) the way Hoffmann et al. 2022
(Approach 3) did and Besiroglu et al. 2024 corrected.

In log space, with e = log E and a_k = log A_k, the prediction is a log-sum-exp:

    log L̂ = LSE(e, a_1 − α_1 log x_1, a_2 − α_2 log x_2, …)

and the objective is the Huber loss (δ = 1e-3) of log L̂ − log L, **summed** over points
(a mean makes L-BFGS stop early: the error Besiroglu et al. found). It is minimised by
L-BFGS-B with analytic gradients from every point of a grid of initial values, and the best
optimum is kept. Without E (``with_e=False``) the same code fits the pure power law.

Stopping rule: scipy's L-BFGS-B stops when the objective improves by less than
ftol · max(|f|, 1). A summed Huber objective on good data is ~1e-4, so the default ftol
(2.2e-9) would stop when the *relative* improvement is still ~1e-5: early, and, for
bootstrap refits warm-started at the full-data optimum, before they have moved at all. We
therefore optimise f / f_scale, with f_scale the objective's value where the run starts, so
the rule sees an objective of order 1, with ftol = 1e-12 and gtol = 1e-8; a run that starts
far from its optimum (a grid start) is polished by a second run rescaled at that optimum.

Parameter vector: [e, a_1, α_1, a_2, α_2, …] (e omitted when ``with_e`` is False).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
# The grid of initial values. Hoffmann et al. (and Besiroglu et al.) used e ∈ [−1, 1] and
# a ∈ [0, 25] for losses in nats per token; here both are set relative to the data's own
# smallest loss L_min, so a family whose loss is an ε-MSE (~0.05), nats per dimension or an
# FD (~1-200) gets the same starts relative to its scale: E from 14% to 95% of L_min, and
# log A from log L_min to log L_min + 25.
GRID_E = tuple(float(v) for v in np.log([0.14, 0.37, 0.61, 0.82, 0.95]))  # log(E / L_min)
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)  # log A − log L_min
GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
LBFGS_OPTIONS = {"ftol": 1e-12, "gtol": 1e-8, "maxiter": 1000, "maxcor": 20}


@dataclass(frozen=True)
class Optimum:
    params: np.ndarray
    objective: float  # summed Huber loss (unscaled)
    converged: bool


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def predict_log(params: np.ndarray, logx: np.ndarray, with_e: bool) -> np.ndarray:
    """log L̂ for params of shape [..., P] and logx of shape [n, K]: result [..., n]."""
    terms = _terms(np.asarray(params, dtype=float), logx, with_e)
    m = terms.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(terms - m).sum(axis=-1, keepdims=True)))[..., 0]


def _terms(params: np.ndarray, logx: np.ndarray, with_e: bool) -> np.ndarray:
    """The LSE's arguments, shape [..., n, T] (T = K terms, plus one for e)."""
    k = logx.shape[1]
    offset = 1 if with_e else 0
    a = params[..., offset::2][..., :k]  # [..., K]
    alpha = params[..., offset + 1::2][..., :k]
    terms = a[..., None, :] - alpha[..., None, :] * logx  # [..., n, K]
    if with_e:
        e = np.broadcast_to(params[..., :1, None], terms.shape[:-1] + (1,))
        terms = np.concatenate([e, terms], axis=-1)
    return terms


def objective(params: np.ndarray, logx: np.ndarray, logy: np.ndarray, with_e: bool,
              weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Summed Huber loss and its analytic gradient. ``weights`` counts each point's copies
    (a bootstrap resample is a weight vector, which avoids copying the data)."""
    terms = _terms(params, logx, with_e)  # [n, T]
    m = terms.max(axis=-1, keepdims=True)
    ex = np.exp(terms - m)
    total = ex.sum(axis=-1, keepdims=True)
    r = (m + np.log(total))[:, 0] - logy
    psi = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # dHuber/dr
    loss = huber(r)
    if weights is not None:
        psi, loss = psi * weights, loss * weights
    w = ex / total  # softmax: d LSE / d term
    pw = psi[:, None] * w
    grad = np.empty_like(params)
    offset = 0
    if with_e:
        grad[0] = pw[:, 0].sum()
        offset = 1
    grad[offset::2] = pw[:, offset:].sum(axis=0)
    grad[offset + 1::2] = -(pw[:, offset:] * logx).sum(axis=0)
    return float(loss.sum()), grad


def grid(k: int, with_e: bool, log_scale: float = 0.0) -> np.ndarray:
    """Every combination of the initial values, for data whose smallest loss is
    exp(``log_scale``): [G, P]."""
    e_axis = [log_scale + v for v in GRID_E]
    a_axis = [log_scale + v for v in GRID_A]
    axes = ([e_axis] if with_e else []) + [a_axis, GRID_ALPHA] * k
    return np.array(list(itertools.product(*axes)), dtype=float)


def e_grid(logy: np.ndarray) -> tuple[float, float]:
    """(lowest, highest) initial log E for these data."""
    return float(np.min(logy)) + GRID_E[0], float(np.min(logy)) + GRID_E[-1]


def grid_objectives(starts: np.ndarray, logx: np.ndarray, logy: np.ndarray, with_e: bool,
                    chunk: int = 512) -> np.ndarray:
    """The objective at every start, vectorised (chunks bound the [chunk, n, T] arrays)."""
    out = np.empty(len(starts))
    for i in range(0, len(starts), chunk):
        pred = predict_log(starts[i : i + chunk], logx, with_e)
        out[i : i + chunk] = huber(pred - logy).sum(axis=-1)
    return out


def optimize(x0: np.ndarray, logx: np.ndarray, logy: np.ndarray, with_e: bool,
             weights: np.ndarray | None = None, scale: float | None = None) -> Optimum:
    """L-BFGS-B from ``x0`` on the objective divided by ``scale`` (see module docstring)."""
    if scale is None:
        scale = objective(x0, logx, logy, with_e, weights)[0]
    scale = max(scale, 1e-300)

    def fun(p):
        f, g = objective(p, logx, logy, with_e, weights)
        return f / scale, g / scale

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)
    return Optimum(res.x, float(res.fun * scale), bool(res.success))


def optimize_and_polish(x0: np.ndarray, logx: np.ndarray, logy: np.ndarray, with_e: bool) -> Optimum:
    first = optimize(x0, logx, logy, with_e)
    return optimize(first.params, logx, logy, with_e, scale=first.objective)


@dataclass(frozen=True)
class GridFit:
    best: Optimum
    starts_total: int  # points in the grid of initial values
    starts_optimized: int  # the best of them by initial objective, each run to convergence
    starts_at_best: int  # of those, how many reached the best optimum
    optima: list[Optimum]


def fit_from_grid(logx: np.ndarray, logy: np.ndarray, with_e: bool, *,
                  top_k: int | None = 32, rel_tol: float = 1e-6) -> GridFit:
    """Evaluate the whole grid vectorised, run L-BFGS from the ``top_k`` best starts (every
    start when ``top_k`` is None: the slow, exhaustive way) and keep the best optimum.
    ``starts_at_best`` counts optima within ``rel_tol`` of the best objective."""
    starts = grid(logx.shape[1], with_e, float(np.min(logy)))
    values = grid_objectives(starts, logx, logy, with_e)
    order = np.argsort(values, kind="stable")
    chosen = order if top_k is None else order[:top_k]
    optima = [optimize_and_polish(starts[i], logx, logy, with_e) for i in chosen]
    best = min(optima, key=lambda o: o.objective)
    at_best = sum(o.objective <= best.objective * (1 + rel_tol) + 1e-18 for o in optima)
    return GridFit(best, len(starts), len(chosen), at_best, optima)
