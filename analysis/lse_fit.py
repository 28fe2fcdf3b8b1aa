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

Bootstrap refits start at the full-data optimum, close to their own: there, batched damped
Newton with the closed-form Hessian (``newton_refits``) reaches the optimum L-BFGS reaches, in
~20× less time for 1,000 resamples, all of them at once.

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
    """Summed Huber loss and its analytic gradient, for one parameter vector [P]. ``weights``
    counts each point's copies (a bootstrap resample is a weight vector, which avoids copying
    the data). Written out term by term (no [n, T] concatenation): L-BFGS calls it at every
    step, ~57 times in a warm-started run."""
    offset = 1 if with_e else 0
    k = logx.shape[1]
    t = params[offset:offset + 2 * k:2] - logx * params[offset + 1:offset + 2 * k:2]  # [n, K]
    m = t.max(axis=1)
    if with_e:
        m = np.maximum(m, params[0])
    ex = np.exp(t - m[:, None])
    total = ex.sum(axis=1)
    if with_e:
        ex_e = np.exp(params[0] - m)
        total += ex_e
    r = m + np.log(total) - logy  # log L̂ − log L
    psi = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # dHuber/dr
    loss = huber(r)
    if weights is not None:
        psi, loss = psi * weights, loss * weights
    q = psi / total  # psi times the softmax's denominator: d LSE / d term = exp(term − m) / total
    pw = ex * q[:, None]
    grad = np.empty_like(params)
    if with_e:
        grad[0] = q @ ex_e
    grad[offset::2] = pw.sum(axis=0)
    grad[offset + 1::2] = -(pw * logx).sum(axis=0)
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


# Warm-started refits of many resamples at once (the bootstrap's): damped Newton on every
# resample together, vectorised over them. The model's terms are linear in the parameters,
# so the Hessian has a closed form: with p the LSE's softmax over terms, J = ∂r/∂params and
# G_t = ∂term_t/∂params (constant),
#     H = Σ_i w_i [h''(r_i) J_i J_iᵀ + h'(r_i) (Σ_t p_it G_t G_tᵀ − J_i J_iᵀ)].
# Negative curvature (h' < 0 where the fit overshoots) is handled by taking |eigenvalues|,
# steps by Armijo backtracking; a resample that has not converged in NEWTON_MAX_ITER steps is
# left to L-BFGS by the caller.
NEWTON_MAX_ITER = 60
# Converged when Newton's predicted decrease is below NEWTON_RTOL × the objective, and either
# every gradient component is below NEWTON_GTOL × the objective (L-BFGS's gtol, on the
# objective scaled to 1) or no step lowers the objective any more (float precision). A small
# predicted decrease alone can be a flat valley's slow slide, as where E → 0.
NEWTON_RTOL = 1e-13
NEWTON_GTOL = 1e-8


def _term_gradients(logx: np.ndarray, with_e: bool) -> np.ndarray:
    """∂term_t/∂params for every point: [n, T, P] (constant: the terms are linear)."""
    n, k = logx.shape
    offset = 1 if with_e else 0
    grads = np.zeros((n, k + offset, offset + 2 * k))
    if with_e:
        grads[:, 0, 0] = 1.0
    for j in range(k):
        grads[:, offset + j, offset + 2 * j] = 1.0
        grads[:, offset + j, offset + 2 * j + 1] = -logx[:, j]
    return grads


def _batch_residuals(params: np.ndarray, logx: np.ndarray, logy: np.ndarray, with_e: bool):
    """(r [B, n], softmax over terms [B, n, T]) for params [B, P]."""
    terms = _terms(params, logx, with_e)  # [B, n, T]
    m = terms.max(axis=-1, keepdims=True)
    ex = np.exp(terms - m)
    total = ex.sum(axis=-1, keepdims=True)
    return (m + np.log(total))[..., 0] - logy, ex / total


def _batch_objective(params, logx, logy, with_e, weights) -> np.ndarray:
    return (huber(_batch_residuals(params, logx, logy, with_e)[0]) * weights).sum(axis=1)


def _batch_derivatives(params, grads, logx, logy, with_e, weights):
    """(objective [B], gradient [B, P], Hessian [B, P, P]) for params [B, P]."""
    r, p = _batch_residuals(params, logx, logy, with_e)
    psi = np.clip(r, -HUBER_DELTA, HUBER_DELTA)
    inside = (np.abs(r) <= HUBER_DELTA).astype(float)
    jac = np.einsum("bnt,ntp->bnp", p, grads)  # ∂r/∂params
    f = (huber(r) * weights).sum(axis=1)
    g = np.einsum("bn,bnp->bp", weights * psi, jac)
    size = params.shape[1]
    outer_t = np.einsum("ntp,ntq->ntpq", grads, grads).reshape(-1, size * size)  # G_t G_tᵀ
    lse_part = ((weights * psi)[..., None] * p).reshape(len(params), -1) @ outer_t
    h = np.matmul(((weights * (inside - psi))[..., None] * jac).transpose(0, 2, 1), jac)
    return f, g, h + lse_part.reshape(-1, size, size)


def newton_refits(x0: np.ndarray, logx: np.ndarray, logy: np.ndarray, with_e: bool,
                  weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the objective under each row of ``weights`` [B, n], from ``x0``: (params
    [B, P], converged [B]). The rows that did not converge hold their last iterate."""
    grads = _term_gradients(logx, with_e)
    x = np.tile(np.asarray(x0, dtype=float), (len(weights), 1))
    converged = np.zeros(len(weights), dtype=bool)
    live = np.arange(len(weights))  # rows still iterating
    for _ in range(NEWTON_MAX_ITER):
        if not len(live):
            break
        w = weights[live]
        f, g, h = _batch_derivatives(x[live], grads, logx, logy, with_e, w)
        values, vectors = np.linalg.eigh(h)
        floor = 1e-12 * np.abs(values).max(axis=1, keepdims=True) + 1e-300
        coef = np.einsum("bqp,bq->bp", vectors, g) / np.maximum(np.abs(values), floor)
        step = -np.einsum("bpq,bq->bp", vectors, coef)
        slope = (g * step).sum(axis=1)  # < 0: a descent direction
        small = -slope <= NEWTON_RTOL * f
        done = small & (np.abs(g).max(axis=1) <= NEWTON_GTOL * f)
        converged[live[done]] = True
        todo = ~done
        alpha = np.ones(todo.sum())
        accepted = np.zeros(todo.sum(), dtype=bool)
        idx = live[todo]
        for _ in range(40):  # Armijo backtracking, halving until the decrease is sufficient
            pending = ~accepted
            if not pending.any():
                break
            trial = x[idx[pending]] + alpha[pending, None] * step[todo][pending]
            with np.errstate(over="ignore", invalid="ignore"):  # a far step: inf or nan, refused below
                f_new = _batch_objective(trial, logx, logy, with_e, weights[idx[pending]])
            before = f[todo][pending]
            ok = (f_new <= before + 1e-4 * alpha[pending] * slope[todo][pending]) & (f_new < before)
            rows = np.flatnonzero(pending)
            x[idx[rows[ok]]] = trial[ok]
            accepted[rows[ok]] = True
            alpha[rows[~ok]] /= 2
        converged[idx[~accepted & small[todo]]] = True  # no step helps: at float precision
        live = idx[accepted]  # any other row whose line search failed stops here, unconverged
    return x, converged
