"""Reading the points a fit needs: a sweep's results folder or any CSV/Parquet table.

``load_points`` returns a clean frame with columns ``N``, ``D``, ``C``, ``loss`` (and
``budget`` when the table has isoflop budgets), plus warnings that count what was dropped:
rows with NaN, inf or non-positive values, or a status other than ``completed`` (an adaptive
design's ``skipped`` candidates, never run, are left out without a word).
C is the table's FLOPs column; only a table without one gets C = 6·N·D, and ``Points.flops``
says which (``analysis.compute``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.compute import SIX_ND, Convention, FlopsPerUnit, fit_flops_per_unit
from analysis.errors import UserError
from analysis.records import EVALS, TRIALS, Role, Status
from analysis.store import ResultsStore


@dataclass
class Points:
    frame: pd.DataFrame  # columns N, D, C, loss (+ budget, trial_id; point: one id per (N, D), shared by its seeds)
    dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    flops: FlopsPerUnit = SIX_ND  # what C is, and FLOPs per data unit as a function of N


def read_table(source: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(trials-like table, evals table or None) from a results folder (a local folder or a
    storage URI) or a CSV/Parquet file."""
    text = str(source)
    path = Path(source)
    if path.is_dir() or ("://" in text and not text.lower().endswith((".csv", ".parquet", ".pq"))):
        store = ResultsStore(text)
        if not store.exists(TRIALS.file):
            raise UserError(f"{text}: not a sweep results folder (no {TRIALS.file})")
        evals = store.read_table(EVALS.file) if store.exists(EVALS.file) else None
        return store.read_table(TRIALS.file), evals
    if not path.is_file():
        raise UserError(f"{path}: no such file or results folder")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path), None
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path), None
    except Exception as exc:  # pandas raises many kinds for a malformed file
        raise UserError(f"{path}: cannot read the table: {exc}") from None
    raise UserError(f"{path}: expected a results folder, a .csv or a .parquet file")


def load_points(source: str | Path | pd.DataFrame, *, n_col: str = TRIALS.n_params, d_col: str = TRIALS.data_units,
                c_col: str = TRIALS.flops, loss_col: str = TRIALS.final_loss, status_col: str = TRIALS.status,
                need: tuple[str, ...] = ("N", "D", "loss")) -> Points:
    """Clean points for fitting; ``need`` names the columns the caller's laws use."""
    table = source if isinstance(source, pd.DataFrame) else read_table(source)[0]
    if status_col in table.columns:  # an adaptive design's candidates it never ran: not data, not dropped
        table = table[table[status_col].astype(str) != Status.SKIPPED]
    mapping = {"N": n_col, "D": d_col, "C": c_col, "loss": loss_col}
    missing = [f"{mapping[k]!r} ({k})" for k in need if mapping[k] not in table.columns
               and not (k == "C" and {n_col, d_col} <= set(table.columns))]
    if missing:
        raise UserError(
            f"missing column(s) {', '.join(missing)}; the table has {list(table.columns)[:20]}; "
            "name others with --n-col/--d-col/--c-col/--loss-col")
    out = pd.DataFrame(index=table.index)
    for key, col in mapping.items():
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            if values.isna().all() and table[col].notna().any():
                raise UserError(f"column {col!r} ({key}) is not numeric")
            out[key] = values.astype(float)
    if "C" not in out and {"N", "D"} <= set(out.columns):
        out["C"] = 6.0 * out["N"] * out["D"]
    if TRIALS.trial_id in table.columns:
        out["trial_id"] = table[TRIALS.trial_id].astype(str)
    if TRIALS.compute_budget in table.columns:
        out["budget"] = pd.to_numeric(table[TRIALS.compute_budget], errors="coerce")
    warnings = []
    keep = pd.Series(True, index=out.index)
    if TRIALS.role in table.columns:  # a wsd sweep's trunks and an LR search's runs are not fit points
        keep &= ~table[TRIALS.role].astype(str).isin([r.value for r in Role if not r.fit_point])
    if status_col in table.columns:
        bad_status = table[status_col].astype(str) != Status.COMPLETED
        if bad_status.any():
            warnings.append(f"dropped {int(bad_status.sum())} row(s) whose {status_col} is not '{Status.COMPLETED}'")
        keep &= ~bad_status
    used = [k for k in ("N", "D", "C", "loss") if k in out.columns and k in need + ("C",)]
    finite = np.isfinite(out[used]).all(axis=1) & (out[used] > 0).all(axis=1)
    bad_values = keep & ~finite
    if bad_values.any():
        warnings.append(f"dropped {int(bad_values.sum())} row(s) with a missing, infinite or "
                        f"non-positive value in {', '.join(mapping[k] for k in used if mapping[k] in table.columns)}")
    keep &= finite
    frame = out[keep].reset_index(drop=True)
    if {"N", "D"} <= set(frame.columns):  # a point's runs (its seeds) share an id: the bootstrap keeps them together
        frame["point"] = frame.groupby(["N", "D"], sort=False).ngroup()
    return Points(frame, int((~keep).sum()), warnings, flops_form(frame, c_col in table.columns))


def flops_form(frame: pd.DataFrame, has_flops: bool) -> FlopsPerUnit:
    """What C is for points with columns N, D, C: the table's FLOPs (fitted per data unit) or 6ND."""
    if not has_flops:
        return SIX_ND
    if not {"N", "D", "C"} <= set(frame.columns):  # a compute-only table: C is the table's, no split
        return FlopsPerUnit(convention=Convention.TABLE)
    return fit_flops_per_unit(frame["N"].to_numpy(), frame["C"].to_numpy(), frame["D"].to_numpy())
