"""Reading the points a fit needs: a sweep's results folder or any CSV/Parquet table.

``load_points`` returns a clean frame with columns ``N``, ``D``, ``C``, ``loss`` (and
``budget`` when the table has isoflop budgets), plus warnings that count what was dropped:
rows with NaN, inf or non-positive values, or a status other than ``completed``.
When the table has no compute column, C = 6·N·D.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


# Roles of trials.parquet rows that are not fit points: a wsd sweep's constant-LR trunks and
# the runs of an LR search (experiments.planner.TrialConfig.role).
NOT_POINTS = ("trunk", "lr_search")

class AnalysisError(ValueError):
    """Bad input to an analysis (missing column, too few points, unreadable table). The
    message names what is missing and what is needed; the CLI exits with status 2."""


@dataclass
class Points:
    frame: pd.DataFrame  # columns N, D, C, loss (+ budget)
    dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    evals: pd.DataFrame | None = None  # per-evaluation rows, when read from a results folder


def read_table(source: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(trials-like table, evals table or None) from a results folder or a CSV/Parquet file."""
    path = Path(source)
    if path.is_dir():
        trials = path / "trials.parquet"
        if not trials.is_file():
            raise AnalysisError(f"{path}: not a sweep results folder (no trials.parquet)")
        evals = path / "evals.parquet"
        return pd.read_parquet(trials), (pd.read_parquet(evals) if evals.is_file() else None)
    if not path.is_file():
        raise AnalysisError(f"{path}: no such file or results folder")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path), None
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path), None
    except Exception as exc:  # pandas raises many kinds for a malformed file
        raise AnalysisError(f"{path}: cannot read the table: {exc}") from None
    raise AnalysisError(f"{path}: expected a results folder, a .csv or a .parquet file")


def load_points(source: str | Path | pd.DataFrame, *, n_col: str = "n_params", d_col: str = "tokens",
                c_col: str = "flops", loss_col: str = "final_loss", status_col: str = "status",
                need: tuple[str, ...] = ("N", "D", "loss")) -> Points:
    """Clean points for fitting; ``need`` names the columns the caller's laws use."""
    evals = None
    table = source if isinstance(source, pd.DataFrame) else None
    if table is None:
        table, evals = read_table(source)
    mapping = {"N": n_col, "D": d_col, "C": c_col, "loss": loss_col}
    missing = [f"{mapping[k]!r} ({k})" for k in need if mapping[k] not in table.columns
               and not (k == "C" and {n_col, d_col} <= set(table.columns))]
    if missing:
        raise AnalysisError(
            f"missing column(s) {', '.join(missing)}; the table has {list(table.columns)[:20]}; "
            "name others with --n-col/--d-col/--c-col/--loss-col")
    out = pd.DataFrame(index=table.index)
    for key, col in mapping.items():
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            if values.isna().all() and table[col].notna().any():
                raise AnalysisError(f"column {col!r} ({key}) is not numeric")
            out[key] = values.astype(float)
    if "C" not in out and {"N", "D"} <= set(out.columns):
        out["C"] = 6.0 * out["N"] * out["D"]
    if "trial_id" in table.columns:
        out["trial_id"] = table["trial_id"].astype(str)
    if "compute_budget" in table.columns:
        out["budget"] = pd.to_numeric(table["compute_budget"], errors="coerce")
    warnings = []
    keep = pd.Series(True, index=out.index)
    if "role" in table.columns:  # a wsd sweep's trunks and an LR search's runs are not fit points
        helper = table["role"].astype(str).isin(NOT_POINTS)
        keep &= ~helper
    if status_col in table.columns:
        bad_status = table[status_col].astype(str) != "completed"
        if bad_status.any():
            warnings.append(f"dropped {int(bad_status.sum())} row(s) whose {status_col} is not 'completed'")
        keep &= ~bad_status
    used = [k for k in ("N", "D", "C", "loss") if k in out.columns and k in need + ("C",)]
    finite = np.isfinite(out[used]).all(axis=1) & (out[used] > 0).all(axis=1)
    bad_values = keep & ~finite
    if bad_values.any():
        warnings.append(f"dropped {int(bad_values.sum())} row(s) with a missing, infinite or "
                        f"non-positive value in {', '.join(mapping[k] for k in used if mapping[k] in table.columns)}")
    keep &= finite
    return Points(out[keep].reset_index(drop=True), int((~keep).sum()), warnings, evals)
