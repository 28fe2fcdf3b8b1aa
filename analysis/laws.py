"""Parametric scaling laws: Chinchilla L(N, D), saturating L(x) = E + A·x^(−α) and the pure
Kaplan form L(x) = A·x^(−α), for x in {N, D, C}. All are fitted by ``analysis.lse_fit``
(Huber in log space, L-BFGS from a grid), with a bootstrap over points for intervals.

Bootstrap: K resamples of the points (multinomial weights, seeded). Each refit is
warm-started from the full-data optimum, all of a worker's at once by batched Newton
(``lse_fit.newton_refits``; L-BFGS for any it does not converge), on a pool of worker
processes (one per core, or ``workers``) that every fit of the process reuses. Warm starts
are checked: on a sample of resamples the full grid is run too, and the two must reach the
same objective (reported in ``diagnostics.bootstrap_check``). The check's grid fits and the
held-out refit run on the same workers, beside the refits. Every process of a fit uses one
BLAS/OpenMP thread (threadpoolctl).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from analysis import lse_fit
from analysis.compute import FlopsPerUnit, allocation_constants, optimal_split, split_fields
from analysis.errors import UserError
from analysis.points import Points
from analysis.results import FitResult, Interval, interval_warnings, r2_log


@dataclass(frozen=True)
class LawSpec:
    name: str
    variables: tuple[str, ...]  # columns of Points.frame: "N", "D", "C"
    with_e: bool

    @property
    def param_names(self) -> list[str]:
        names = ["E"] if self.with_e else []
        pairs = (("A", "alpha"), ("B", "beta"))  # matches lse_fit's [e, a1, α1, a2, α2]
        for i, _ in enumerate(self.variables):
            names += list(pairs[i])
        return names


LAWS = {
    "chinchilla": LawSpec("chinchilla", ("N", "D"), True),
    **{f"power_{v}": LawSpec(f"power_{v}", (v,), True) for v in "NDC"},
    **{f"kaplan_{v}": LawSpec(f"kaplan_{v}", (v,), False) for v in "NDC"},
}


def natural(spec: LawSpec, p: np.ndarray) -> dict:
    """Log-space parameters (e, a, α, b, β) to the law's own (E, A, α, B, β): floats for one
    parameter vector, arrays (one value per row) for bootstrap draws [K, P]. A coefficient
    beyond float range (a degenerate bootstrap draw) is inf, and the interval built from the
    draws says so; no overflow warning on top."""
    p = np.asarray(p, dtype=float)
    out = {}
    with np.errstate(over="ignore"):
        for i, name in enumerate(spec.param_names):
            value = p[..., i] if name in ("alpha", "beta") else np.exp(p[..., i])
            out[name] = float(value) if p.ndim == 1 else value
    return out


def law_value(law: str, params: dict, **x) -> np.ndarray:
    """The loss a fitted law predicts at ``x`` (keys N, D, C as the law needs). ``params``
    maps names to floats or to arrays of bootstrap draws; shapes broadcast, so draws of shape
    [K, 1] against x of shape [M] give [K, M]. Laws: those of ``LAWS`` and ``envelope``."""
    p = {k: np.asarray(v, dtype=float) for k, v in params.items()}

    def term(coef, exponent, var):  # a degenerate bootstrap draw may overflow: inf, said by its band
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return np.exp(np.log(coef) - exponent * np.log(np.asarray(x[var], dtype=float)))

    if law == "envelope":
        return term(p["A"], p["alpha"], "C")
    spec = LAWS[law]
    total = p["E"] if spec.with_e else 0.0
    for var, (coef, exponent) in zip(spec.variables, (("A", "alpha"), ("B", "beta"))):
        total = total + term(p[coef], p[exponent], var)
    return np.asarray(total)


def _one_thread(fit):
    """Run ``fit`` with one BLAS/OpenMP thread: its arrays are a few hundred points, where a
    second thread costs more than it gives and fights the bootstrap's workers (and anything
    else running) for the cores."""
    @functools.wraps(fit)
    def pinned(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return fit(*args, **kwargs)

    return pinned


@_one_thread
def fit_lse_law(spec: LawSpec, points: Points, *, bootstrap: int = 1000, seed: int = 0,
                predict: list[dict] | None = None, top_k: int | None = 32,
                check_resamples: int = 4, workers: int | None = None, warm: bool = True,
                held_out: bool = True, weights: np.ndarray | None = None) -> FitResult:
    """Fit ``spec`` to ``points`` with ``bootstrap`` resamples of its points (a point's seeds
    together), or of the given resample ``weights`` [bootstrap, rows] (copies of each row),
    on ``workers`` processes (default: one per core)."""
    df = points.frame
    n_params = len(spec.param_names)
    if len(df) < n_params + 1:
        raise UserError(f"{spec.name}: {len(df)} usable point(s); the law has {n_params} "
                            f"parameters and needs at least {n_params + 1}")
    logx = np.log(df[list(spec.variables)].to_numpy(float))
    logy = np.log(df["loss"].to_numpy(float))
    gf = lse_fit.fit_from_grid(logx, logy, spec.with_e, top_k=top_k)
    best = gf.best.params
    samples, check = None, None
    groups = df["point"].to_numpy() if "point" in df else np.arange(len(df))
    held = _held_out_rows(spec, df) if held_out else None
    # the held-out refit runs beside the bootstrap's refits, on the same workers
    held_fit = [] if held is None else [(_grid_optimum, (logx[held[0]], logy[held[0]], spec.with_e, top_k))]
    if bootstrap > 0:
        samples, check, held_fit = _bootstrap(logx, logy, spec.with_e, best, bootstrap, seed, top_k,
                                              check_resamples, workers, warm, groups, weights, held_fit)
    else:
        held_fit = [fn(args) for fn, args in held_fit]
    values = natural(spec, best)
    nat_samples = None if samples is None else natural(spec, samples)
    params = {name: Interval.from_samples(values[name], None if nat_samples is None else nat_samples[name])
              for name in spec.param_names}
    fitted = lse_fit.predict_log(best, logx, spec.with_e)
    result = FitResult(spec.name, len(df), points.dropped, params, r2_log=r2_log(logy, fitted),
                       warnings=list(points.warnings))
    result.diagnostics = {
        "objective": gf.best.objective, "starts_total": gf.starts_total,
        "starts_optimized": gf.starts_optimized, "starts_at_best": gf.starts_at_best,
        "residuals_log": (logy - fitted).tolist(),
        "held_out": None if held is None else _held_out(spec, df, logx, logy, held, held_fit[0]),
        "seed_spread": seed_spread(logy, groups),
    }
    if check is not None:
        result.diagnostics["bootstrap_check"] = check
        if check["same_optimum"] < check["sampled"]:
            result.warnings.append(
                f"warm-started bootstrap refits missed the grid optimum on {check['sampled'] - check['same_optimum']}"
                f" of {check['sampled']} checked resamples: intervals may be too narrow")
    if nat_samples is not None:
        result.samples = nat_samples
    result.diagnostics["compute"] = points.flops.to_json()
    result.diagnostics["C_max"] = float(df["C"].max()) if "C" in df else None
    if spec.name == "chinchilla":
        result.derived, draws = _allocation(spec, best, samples, points.flops, float(df["C"].max()))
        if draws is not None and result.samples is not None:
            result.samples.update(draws)
        result.warnings += points.flops.warnings()
    result.warnings += _identifiability(spec, df, best) + interval_warnings(params)
    for target in predict or []:
        result.predictions.append(_predict(spec, df, best, samples, target, points.flops))
    return result


def _held_out_rows(spec, df) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, test) rows to test extrapolation with: all but the largest-compute points (the
    top 10%, at least one), and those; None when too few points would be left to fit."""
    n_out = max(1, len(df) // 10)
    order = np.argsort(df["C"].to_numpy(float))
    train, test = order[:-n_out], order[-n_out:]
    return None if len(train) < len(spec.param_names) + 2 else (train, test)


def _held_out(spec, df, logx, logy, rows, params) -> dict:
    """The error of predicting the held-out points from ``params``, fitted without them: how
    well the law extrapolates in this very data set."""
    test = rows[1]
    err = lse_fit.predict_log(params, logx[test], spec.with_e) - logy[test]
    return {"n_held_out": int(len(test)), "min_C_held_out": float(df["C"].iloc[test].min()),
            "mean_abs_log_error": float(np.abs(err).mean()),
            "max_abs_rel_error": float(np.abs(np.expm1(err)).max())}


def _grid_optimum(args) -> np.ndarray:
    logx, logy, with_e, top_k = args
    return lse_fit.fit_from_grid(logx, logy, with_e, top_k=top_k).best.params


def _allocation(spec: LawSpec, best: np.ndarray, samples: np.ndarray | None, flops: FlopsPerUnit,
                c_max: float) -> tuple[dict[str, Interval], dict[str, np.ndarray] | None]:
    """The compute-optimal allocation N_opt ∝ C^a, D_opt ∝ C^b under ``flops``. With f(N) = k·N
    (6ND included) a = β/(α+β), b = α/(α+β) and G = (αA/(βB))^(1/(α+β)) give the closed form
    N_opt = G·(C/k)^a, D_opt = (C/k)^b / G; otherwise a and b are the local exponents at the
    data's largest C, ``c_max``, and there is no G."""
    rows = best[None, :] if samples is None else np.vstack([best, samples])
    _, la, alpha, lb, beta = rows.T
    if flops.linear:
        a, b, g = allocation_constants(alpha, beta, la, lb)
        columns = {"a": a, "b": b, "G": g}
    else:
        law = {name: v[:, None] for name, v in natural(spec, rows).items()}
        split = optimal_split(law, flops, np.array([c_max / 1.01, c_max * 1.01]))
        step = 2 * np.log(1.01)
        with np.errstate(invalid="ignore", divide="ignore"):
            columns = {key: np.diff(np.log(split[var]), axis=1)[:, 0] / step for key, var in (("a", "N"), ("b", "D"))}
    derived = {name: Interval.from_samples(v[0], None if samples is None else v[1:]) for name, v in columns.items()}
    return derived, None if samples is None else {name: v[1:] for name, v in columns.items()}


def _identifiability(spec: LawSpec, df, best: np.ndarray) -> list[str]:
    out = []
    for var in spec.variables:
        distinct = df[var].nunique()
        if distinct < 3:
            out.append(f"only {distinct} distinct {var}: the {var} exponent is not identified "
                       "(needs at least 3, better 5)")
    if spec.name == "chinchilla" and "budget" in df and df["budget"].nunique() == 1:
        out.append("all points are at one compute budget: N and D move together and the "
                   "N and D terms are confounded")
    nat = natural(spec, best)
    for name in ("alpha", "beta"):
        if name in nat:
            if nat[name] <= 0:
                out.append(f"{name} = {nat[name]:.3g} <= 0: the loss does not fall with that variable here")
            elif nat[name] >= max(lse_fit.GRID_ALPHA):
                out.append(f"{name} = {nat[name]:.3g} is at or beyond the edge of the initial grid "
                           f"(max {max(lse_fit.GRID_ALPHA)})")
    lowest_e, _ = lse_fit.e_grid(np.log(df["loss"].to_numpy(float)))
    if spec.with_e and best[0] < lowest_e - 2:
        out.append(f"E = {np.exp(best[0]):.3g} ran to zero: the data show no irreducible loss in this "
                   "range, so E is not identified and its interval means nothing (the fit has no "
                   "gradient in E there); try the form without E or data closer to saturation")
    elif spec.with_e and np.exp(best[0]) >= df["loss"].min():
        out.append(f"E = {np.exp(best[0]):.3g} is at or above the lowest loss in the data "
                   f"({df['loss'].min():.3g}): the law's floor is not below the points")
    return out


def _predict(spec: LawSpec, df, best, samples, target: dict, flops: FlopsPerUnit) -> dict:
    """Loss at a target. ``target`` holds some of N, D, C. For Chinchilla a C alone is split
    compute-optimally under ``flops``, each bootstrap draw by its own law, so the loss interval
    includes the split's uncertainty; N, D and D_per_N stay numbers (the point estimate's split)
    with their intervals beside them (``N_interval`` …). Given N and D, C = f(N)·D.
    Extrapolation = the largest ratio of a target to the largest value of that variable in the data."""
    point = {k: float(v) for k, v in target.items()}
    draw_x = None
    if spec.name == "chinchilla" and set(point) == {"C"}:
        split = optimal_split(natural(spec, best), flops, point["C"])
        point.update({"N": float(split["N"]), "D": float(split["D"])})
        if samples is not None:
            law = {k: v[:, None] for k, v in natural(spec, samples).items()}
            draws = optimal_split(law, flops, np.array([point["C"]]))
            draw_x = {"N": draws["N"][:, 0], "D": draws["D"][:, 0]}
        point.update(split_fields(point, draw_x))
    if "C" not in point and {"N", "D"} <= set(point):
        point["C"] = float(flops(point["N"])) * point["D"]
    missing = [v for v in spec.variables if v not in point]
    if missing:
        raise UserError(f"--predict for {spec.name} needs {', '.join(missing)} (got {', '.join(target)})")
    logx = np.log([[point[v] for v in spec.variables]])
    value = float(np.exp(lse_fit.predict_log(best, logx, spec.with_e)[0]))
    draws_loss = None
    if samples is not None and draw_x is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            own = np.log(np.stack([draw_x[v] for v in spec.variables], axis=1))  # [K, 2]: each draw's split
            draws_loss = np.exp(np.array([lse_fit.predict_log(s, x[None, :], spec.with_e)[0]
                                          for s, x in zip(samples, own)]))
    elif samples is not None:
        draws_loss = np.exp(lse_fit.predict_log(samples, logx, spec.with_e)[:, 0])
    reach = {v: point[v] / float(df[v].max()) for v in ("N", "D", "C") if v in point and v in df}
    out = {**point, "loss": Interval.from_samples(value, draws_loss), "extrapolation": max(reach.values()),
           "extrapolation_by_axis": reach}
    return out


def split_of(fit: FitResult, c, *, draws: bool = False) -> dict | None:
    """The compute-optimal {"N", "D"} of a fitted Chinchilla law at compute ``c`` ([M]), under
    the fit's own compute convention; ``draws``: one row per bootstrap draw ([K, M]), None
    without draws. What the report draws."""
    flops = FlopsPerUnit.from_json(fit.diagnostics.get("compute"))
    names = ("A", "alpha", "B", "beta")
    if not draws:
        return optimal_split({k: fit.params[k].value for k in names}, flops, c)
    if not fit.samples or any(k not in fit.samples for k in names):
        return None
    return optimal_split({k: np.asarray(fit.samples[k], float)[:, None] for k in names}, flops, c)


def seed_spread(logy: np.ndarray, groups: np.ndarray) -> dict | None:
    """Run-to-run spread: the pooled standard deviation of log loss among a point's runs
    (its seeds), as a relative spread of the loss; None when no point has two runs."""
    ids, counts = np.unique(groups, return_counts=True)
    repeated = ids[counts >= 2]
    if not len(repeated):
        return None
    ss = sum(float(((logy[groups == g] - logy[groups == g].mean()) ** 2).sum()) for g in repeated)
    dof = int(counts[counts >= 2].sum() - len(repeated))
    return {"points_with_seeds": int(len(repeated)), "runs": int(counts[counts >= 2].sum()),
            "rel_std": float(np.sqrt(ss / dof))}


def resample_weights(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[k, rows] copies of each row in k bootstrap resamples: points drawn with replacement,
    a point's runs (its seeds: rows sharing a group id) together. With one row per point this
    is the plain multinomial resample of rows."""
    rng = np.random.default_rng(seed)
    ids, row_group = np.unique(np.asarray(groups), return_inverse=True)
    n = len(ids)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(float)[:, row_group]


def _bootstrap(logx, logy, with_e, best, k, seed, top_k, check_resamples, workers, warm=True, groups=None,
               weights=None, extra=()):
    """(the k refits' parameters [k, P], the warm-start check, the results of the ``extra``
    (fn, args) tasks, which run on the same workers)."""
    if weights is None:
        weights = resample_weights(np.arange(len(logy)) if groups is None else groups, k, seed)
    workers = workers or os.cpu_count() or 1
    x0 = best if warm else None  # None: every resample from the grid (the slow, cold way)
    # The long tasks first (the check's cold fits, ~0.6 s each at 240 points, and the extra
    # ones), then the refits in a chunk per worker (1,000 warm refits take ~0.2 s in all).
    checked = weights[:check_resamples]
    long = [(_cold_objective, (logx, logy, with_e, w, top_k)) for w in checked] + list(extra)
    chunks = np.array_split(np.arange(k), workers)
    results = _run(long + [(_refit_chunk, (logx, logy, with_e, x0, weights[c], top_k)) for c in chunks],
                   workers if k >= 64 else 1)
    cold, extra_results = results[:len(checked)], results[len(checked):len(long)]
    samples = np.concatenate(results[len(long):])
    if not len(checked):
        return samples, None, extra_results
    same = sum(lse_fit.objective(p, logx, logy, with_e, w)[0] <= c * (1 + 1e-6) + 1e-15
               for w, p, c in zip(weights, samples, cold))
    return samples, {"sampled": len(cold), "same_optimum": int(same)}, extra_results


def _run(tasks: list, workers: int) -> list:
    """``fn(args)`` of each ``(fn, args)`` task, in order: in this process, or on ``workers``
    pool processes."""
    if workers <= 1:
        return [fn(args) for fn, args in tasks]
    try:
        futures = [_pool(workers).submit(fn, args) for fn, args in tasks]
        return [f.result() for f in futures]
    except BrokenProcessPool:  # a worker died (killed from outside): once more, with a new pool
        _POOLS.pop(workers, None)
        futures = [_pool(workers).submit(fn, args) for fn, args in tasks]
        return [f.result() for f in futures]


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool of bootstrap workers, started once (a worker costs ~0.5 s to start:
    numpy, scipy). forkserver, not fork: the calling process may run threads (an embedded
    Ray's), which a forked child would inherit in whatever state they were in."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, initializer=_one_blas_thread,
                                              mp_context=multiprocessing.get_context("forkserver"))
    return _POOLS[workers]


def _one_blas_thread() -> None:
    """A refit works on arrays of a few hundred points: BLAS and OpenMP threads would only
    fight the other workers for the cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _refit_chunk(args) -> np.ndarray:
    logx, logy, with_e, x0, weights, top_k = args
    if x0 is None:
        return np.array([_cold_fit(logx, logy, with_e, w, top_k).params for w in weights])
    params, converged = lse_fit.newton_refits(x0, logx, logy, with_e, weights)
    if not converged.all():  # the rows Newton left (rare but for a misspecified law): L-BFGS from x0
        scale = lse_fit.objective(x0, logx, logy, with_e)[0]
        for i in np.flatnonzero(~converged):
            params[i] = lse_fit.optimize(x0, logx, logy, with_e, weights[i], scale).params
    return params


def _cold_fit(logx, logy, with_e, w, top_k) -> lse_fit.Optimum:
    idx = np.repeat(np.arange(len(w)), w.astype(int))
    return lse_fit.fit_from_grid(logx[idx], logy[idx], with_e, top_k=top_k).best


def _cold_objective(args) -> float:
    """The full grid's optimum on one resample: what its warm-started refit must reach."""
    logx, logy, with_e, w, top_k = args
    return _cold_fit(logx, logy, with_e, w, top_k).objective
