"""The curves of task prediction's two steps (``analysis.task``), fitted by least squares.

Both are linear in all but one or two of their parameters, so each is fitted exactly for
every point of a grid over the others (variable projection), with the linear parameters'
bounds as exact constraints, and the grid refined twice around each draw's best cell. Every
fit is vectorised over bootstrap resamples: ``weights`` [K, n] holds each resample's copies
of each row. No starting values, no optimiser to fail on one draw.

- ``sigmoid``: accuracy = floor + height / (1 + exp((x − mid)/scale)), x the task loss (or
  its log), 0 ≤ floor, 0 ≤ height, floor + height ≤ 1, the floor fixed when given;
- ``loss_to_loss``: task = E_t + K·(general − E)^κ, E_t ≥ 0 and K ≥ 0 (Brandfonbrener et al.
  2024), E the general loss's irreducible loss.
"""

from __future__ import annotations

import numpy as np


# --- step 2: the sigmoid ----------------------------------------------------------------------

def sigmoid(params: np.ndarray, loss) -> np.ndarray:
    """Accuracy at task ``loss`` of sigmoid ``params`` (floor, height, mid, scale): [4] with any
    ``loss``, or [K, 4] draws with [K] losses, one per draw."""
    p = np.asarray(params, dtype=float)
    return p[..., 0] + p[..., 1] * falling(np.asarray(loss, dtype=float), p[..., 2], p[..., 3])


def falling(loss, mid, scale):
    """1 / (1 + exp((loss − mid)/scale)): 1 at low loss, 0 at high."""
    return 1.0 / (1.0 + np.exp(np.clip((loss - mid) / scale, -50.0, 50.0)))


def fit_sigmoid(loss: np.ndarray, acc: np.ndarray, weights: np.ndarray, floor: float | None) -> np.ndarray:
    """The least-squares sigmoid for each row of ``weights`` [K, n] (a resample's copies of each
    checkpoint): [K, 4] (floor, height, mid, scale). ``floor`` fixed when given."""
    loss, acc = np.asarray(loss, float), np.asarray(acc, float)
    weights = np.atleast_2d(np.asarray(weights, float))
    lo, hi = float(loss.min()), float(loss.max())
    span = (hi - lo) or 1.0
    mids = np.linspace(lo - 2.0 * span, hi + span, 61)
    scales = np.geomspace(span / 100.0, 3.0 * span, 30)
    mid_g, scale_g = (g.ravel() for g in np.meshgrid(mids, scales, indexing="ij"))
    s = falling(loss[None, :], mid_g[:, None], scale_g[:, None])  # [G, n], the same for every draw
    best = _best_cells(_sums(weights, acc, s), floor)
    mid, scale = mid_g[best["cell"]], scale_g[best["cell"]]
    step_mid, ratio = mids[1] - mids[0], scales[1] / scales[0]
    for shrink in (1.0, 0.25):  # twice: a 7 x 7 grid around each draw's best cell
        offsets = np.linspace(-shrink, shrink, 7)
        m = (mid[:, None, None] + step_mid * offsets[None, :, None]).repeat(7, axis=2).reshape(len(mid), -1)
        sc = (scale[:, None, None] * ratio ** offsets[None, None, :]).repeat(7, axis=1).reshape(len(mid), -1)
        picked = []  # per chunk of draws: [k, 4]
        for chunk in np.array_split(np.arange(len(mid)), max(1, len(mid) // 128)):
            s_local = falling(loss[None, None, :], m[chunk, :, None], sc[chunk, :, None])  # [k, 49, n]
            b = _best_cells(_sums(weights[chunk], acc, s_local), floor)
            cell = b["cell"][:, None]
            picked.append(np.stack([b["floor"], b["height"], np.take_along_axis(m[chunk], cell, 1)[:, 0],
                                    np.take_along_axis(sc[chunk], cell, 1)[:, 0]], axis=1))
        out = np.concatenate(picked)
        mid, scale = out[:, 2], out[:, 3]
    return out


def _sums(w: np.ndarray, y: np.ndarray, s: np.ndarray) -> dict:
    """Weighted sums of the least-squares problem y ≈ a + b·s, per draw (a row of ``w`` [K, n])
    and grid cell: each [K, G] (or [K, 1]). ``s`` is [G, n], one grid for every draw, or
    [K, G, n], a grid per draw."""
    def total(a):
        return w @ a.T if a.ndim == 2 else np.einsum("kn,kgn->kg", w, a)

    return {"w": w.sum(1)[:, None], "s": total(s), "ss": total(s * s), "y": (w @ y)[:, None],
            "sy": total(s * y), "yy": (w @ (y * y))[:, None]}


def _sse(t: dict, a, b):
    """Σw(y − a − b·s)² from the weighted sums ``t`` (``_sums``)."""
    return t["yy"] - 2 * a * t["y"] - 2 * b * t["sy"] + a * a * t["w"] + 2 * a * b * t["s"] + b * b * t["ss"]


def _best_cells(t: dict, floor: float | None) -> dict:
    """Per draw, the grid cell whose exact constrained fit (0 ≤ floor, 0 ≤ height, floor +
    height ≤ 1; or floor fixed) has the least squared error, and that fit's floor and height."""
    # A ridge on the height: where the curve is flat over every checkpoint (its rise lies
    # beyond them), the height has no evidence, and it is 0 rather than anything.
    t = {**t, "ss": t["ss"] + 1e-9 * t["w"]}

    def sse(f, h):  # with the ridge's 1e-9·w·h² included
        return _sse(t, f, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        if floor is not None:
            f = np.full_like(t["s"], floor)
            h = np.clip(np.nan_to_num((t["sy"] - floor * t["s"]) / t["ss"]), 0.0, max(0.0, 1.0 - floor))
            err = sse(f, h)
        else:  # a convex quadratic on a triangle: the interior optimum, else the best edge's
            det = t["w"] * t["ss"] - t["s"] ** 2
            fu = (t["ss"] * t["y"] - t["s"] * t["sy"]) / det
            hu = (t["w"] * t["sy"] - t["s"] * t["y"]) / det
            inside = (det > 1e-12 * t["w"] * t["ss"]) & (fu >= 0) & (hu >= 0) & (fu + hu <= 1)
            h0 = np.clip(np.nan_to_num(t["sy"] / t["ss"]), 0, 1)  # floor 0
            f1 = np.clip(np.nan_to_num(t["y"] / t["w"]), 0, 1)  # height 0
            f2 = np.clip(np.nan_to_num((t["y"] - t["s"] - t["sy"] + t["ss"]) / (t["w"] - 2 * t["s"] + t["ss"])), 0, 1)
            cands = [(np.where(inside, fu, 0.0), np.where(inside, hu, 0.0)), (np.zeros_like(h0), h0),
                     (f1, np.zeros_like(f1)), (f2, 1 - f2)]
            errs = np.stack([np.where(inside, sse(*cands[0]), np.inf)] + [sse(*c) for c in cands[1:]])
            pick = np.argmin(errs, axis=0)
            f = np.choose(pick, [c[0] for c in cands])
            h = np.choose(pick, [c[1] for c in cands])
            err = np.min(errs, axis=0)
    cell = np.argmin(err, axis=1)
    rows = np.arange(len(cell))
    return {"cell": cell, "floor": f[rows, cell], "height": h[rows, cell]}


# --- step 1 with a general loss: loss-to-loss ------------------------------------------------

def fit_loss_to_loss(general: np.ndarray, task: np.ndarray, e_general: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
    """task ≈ E_t + K·(general − E)^κ per draw (``e_general`` [K], ``weights`` [K, n]): exact
    least squares in E_t ≥ 0 and K ≥ 0 on a grid of κ, refined twice: [K, 3] (E_t, K, κ)."""
    weights = np.atleast_2d(weights)
    excess = np.maximum(general[None, :] - np.asarray(e_general, float).reshape(-1, 1), 1e-12)  # [K, n]
    log_excess = np.log(excess)
    kappas = np.broadcast_to(np.geomspace(0.05, 20.0, 60), (len(weights), 60))
    ratio = kappas[0, 1] / kappas[0, 0]
    rows = np.arange(len(weights))
    for _ in range(3):
        x = np.exp(np.clip(kappas[:, :, None] * log_excess[:, None, :], -700, 700))  # [K, G, n]
        e, k, err = _nonnegative_line(_sums(weights, task, x))
        best = np.argmin(err, axis=1)
        out = np.stack([e[rows, best], k[rows, best], kappas[rows, best]], axis=1)
        kappas = out[:, 2:3] * ratio ** np.linspace(-1, 1, 11)[None, :]
        ratio = ratio ** 0.2
    return out


def _nonnegative_line(t: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(e, k, squared error) of y ≈ e + k·s with e, k ≥ 0, from the weighted sums ``t``
    (``_sums``): the unconstrained optimum where it is feasible, else the better edge's."""
    def sse(e, k):
        return _sse(t, e, k)

    with np.errstate(divide="ignore", invalid="ignore"):
        det = t["w"] * t["ss"] - t["s"] ** 2
        k_u = np.nan_to_num((t["w"] * t["sy"] - t["s"] * t["y"]) / det)
        e_u = np.nan_to_num((t["y"] - k_u * t["s"]) / t["w"])
        k_0 = np.clip(np.nan_to_num(t["sy"] / t["ss"]), 0, None)  # e = 0
        e_0 = np.clip(t["y"] / t["w"], 0, None)  # k = 0
    cands = [(e_u, k_u), (np.zeros_like(k_0), k_0), (e_0, np.zeros_like(e_0))]
    errs = np.stack([np.where((e_u >= 0) & (k_u >= 0), sse(e_u, k_u), np.inf), sse(*cands[1]), sse(*cands[2])])
    errs = np.where(np.isfinite(errs), errs, np.inf)
    pick = np.argmin(errs, axis=0)
    return np.choose(pick, [c[0] for c in cands]), np.choose(pick, [c[1] for c in cands]), errs.min(axis=0)


def loss_to_loss(params: np.ndarray, general, e_general) -> np.ndarray:
    p = np.asarray(params, float)
    excess = np.maximum(np.asarray(general, float) - np.asarray(e_general, float), 1e-12)
    return p[..., 0] + p[..., 1] * excess ** p[..., 2]
