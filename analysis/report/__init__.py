"""The sweep report: one self-contained, offline HTML file of plotly figures and tables.

    from analysis.report import fit_and_report, load_results, report_figures
    fit_and_report("results/quickstart", out="report.html", predict=["N=1e7,D=1e8"])
    figs = report_figures(load_results("results/quickstart"), fits)   # plotly Figures, by key

``fit_and_report`` is the one path from a results folder to fits and a report: the end of
``scalinglab sweep`` and ``scalinglab report`` both call it.

Sections appear when their data exist: the header and trial table always; training curves
with ``evals.parquet``; the scaling plots, frontier, Chinchilla view and fit table when a
law could be fitted; IsoFLOP profiles for isoflop sweeps; the adaptive design's interval and
choices when the folder has ``adaptive.json``; the emergence panel when the
evaluation rows hold capability metrics (``TASK/NAME``); the task predictions when the
folder has ``tasks.json`` (``scalinglab task``); sample grids when the folder has
``samples/``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from analysis.errors import UserError
from analysis.records import DECISIONS, EVALS, LOSS, TRIALS
from analysis.report import html
from analysis.report.adaptive_figures import adaptive_figure
from analysis.report.allocation_figures import chinchilla_contours, frontier_figure, isoflop_figure, residuals_figure
from analysis.report.data import ReportData, load_results
from analysis.report.emergence_figures import capability_tasks, emergence_figure
from analysis.report.figures import scaling_figure, training_curves
from analysis.report.task_figures import task_figure
from analysis.results import FitResult
from analysis.store import ResultsStore

__all__ = ["ReportData", "ReportOutcome", "build_report", "fit_and_report", "fit_for_report", "load_results",
           "report_figures", "saved_fits"]
FITS_FILE, REPORT_FILE = "fits.json", "report.html"


def fit_for_report(data: ReportData, *, predict: list[str] | None = None, bootstrap: int = 200,
                   seed: int = 0) -> tuple[list[FitResult], str | None]:
    """(every identifiable law fitted, None) or ([], why no law could be fitted)."""
    from analysis.fit import fit_laws

    try:
        return fit_laws(data.trials, predict=predict, bootstrap=bootstrap, seed=seed,
                        log=lambda msg: None), None
    except UserError as exc:
        return [], str(exc)


def saved_fits(folder: str | Path) -> list[FitResult] | None:
    """The fits the sweep wrote (``fits.json``, with bootstrap draws), or None when there are
    none, they carry no draws, or the trials table is newer than they are."""
    store = ResultsStore(folder)
    fitted, changed = store.modified(FITS_FILE), store.modified(TRIALS.file)
    if fitted is None or changed is None or fitted < changed:
        return None
    try:
        fits = [FitResult.from_json(d) for d in store.read_json(FITS_FILE)["fits"]]
    except (ValueError, KeyError, TypeError):
        return None
    return fits if fits and all(f.samples is not None for f in fits) else None


def report_figures(data: ReportData, fits: list[FitResult]) -> dict[str, go.Figure]:
    """Every figure the data support, keyed by section: ``curves``, ``scaling_N``/``_D``/``_C``,
    ``isoflop``, ``frontier``, ``contours``, ``residuals``, ``adaptive``, ``emergence_<task>``, ``task_<i>``."""
    t, by_law = data.trials, {f.law: f for f in fits}
    figs: dict[str, go.Figure] = {}
    if data.evals is not None and (data.evals[EVALS.metric] == LOSS).any():
        figs["curves"] = training_curves(t, data.evals)
    if fits:
        for axis in ("N", "D", "C"):
            if any(f.law in (f"power_{axis}", f"kaplan_{axis}", "chinchilla") or (axis == "C" and f.law == "envelope")
                   for f in fits):
                figs[f"scaling_{axis}"] = scaling_figure(t, fits, axis)
    if "isoflop" in by_law:
        figs["isoflop"] = isoflop_figure(t, by_law["isoflop"])
    if {"isoflop", "envelope"} & set(by_law) or "a" in getattr(by_law.get("chinchilla"), "derived", {}):
        targets = [p["C"] for f in fits for p in f.predictions if "C" in p]
        figs["frontier"] = frontier_figure(t, fits, targets)
    if "chinchilla" in by_law:
        figs["contours"] = chinchilla_contours(t, by_law["chinchilla"])
    if any(f.law not in ("isoflop", "envelope") for f in fits):
        figs["residuals"] = residuals_figure(t, fits)
    if data.adaptive:
        decisions = data.decisions if data.decisions is not None else DECISIONS.frame([])
        figs["adaptive"] = adaptive_figure(t, decisions, data.adaptive)
    for task in capability_tasks(data.evals):
        figs[f"emergence_{task}"] = emergence_figure(t, data.evals, task, flags=data.emergence)
    ladders = _ladders(data) if data.tasks else {}
    for i, doc in enumerate(data.tasks or []):
        figs[f"task_{i}"] = task_figure(doc, ladders.get(doc.get("task")))
    return figs


def _ladders(data: ReportData) -> dict:
    """The checkpoints behind tasks.json, by task (none when the tables no longer hold them)."""
    from analysis.task_tables import sweep_ladders

    try:
        return {ladder.task: ladder for ladder in sweep_ladders(data.trials, data.evals)}
    except UserError:
        return {}


SECTIONS = [  # (title, figure keys or a table builder), in page order
    ("Trials", "trial_table"),
    ("Training curves", ["curves"]),
    ("Scaling: final loss vs N, D and C", ["scaling_N", "scaling_D", "scaling_C"]),
    ("IsoFLOP profiles and the compute-optimal frontier", ["isoflop", "frontier"]),
    ("Chinchilla law", ["contours", "residuals"]),
    ("Fits", "fit_table"),
    ("Adaptive design", "adaptive"),
    ("Emergence", "emergence"),
    ("Task predictions", "tasks"),
    ("Samples", "samples"),
]


def build_report(data: ReportData, fits: list[FitResult], fit_error: str | None = None) -> str:
    figs = report_figures(data, fits)
    sections = []
    for title, what in SECTIONS:
        if what == "trial_table":
            inner = html.trial_table(data.trials)
        elif what == "fit_table":
            inner = html.fit_table(fits) if fits else ""
        elif what in ("emergence", "tasks"):
            prefix = "emergence_" if what == "emergence" else "task_"
            inner = "".join(html.figure_div(k, f) for k, f in figs.items() if k.startswith(prefix))
        elif what == "adaptive":
            inner = html.adaptive_summary(data.adaptive) + html.figure_div("adaptive", figs["adaptive"]) \
                if "adaptive" in figs else ""
        elif what == "samples":
            inner = html.sample_grids(data) if data.samples else ""
        else:
            inner = "".join(html.figure_div(k, figs[k]) for k in what if k in figs)
        if inner:
            sections.append((title, inner))
    return html.page(data, fits, fit_error, sections)


@dataclass
class ReportOutcome:
    fits: list[FitResult]
    fit_error: str | None  # why there are no fits (none identifiable, or fitting was skipped)
    report: str | None  # where the report was written


def fit_and_report(source: str | Path, *, out: str | Path | None = None, predict: list[str] | None = None,
                   bootstrap: int = 200, seed: int = 0, fit: bool = True, refit: bool = False,
                   save_fits: bool = False, report: bool = True, log=None) -> ReportOutcome:
    """Fits and the report of a results folder (a local folder or a storage URI).

    Fits: the folder's own ``fits.json`` when it is current, holds bootstrap draws, and there
    are no ``predict`` targets and no ``refit``; else every identifiable law is fitted anew
    (``save_fits`` writes them to ``fits.json``, with their draws). The report goes to ``out``
    (default: ``report.html`` in the folder); every file is written atomically."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    data = load_results(source)
    store = ResultsStore(source)
    fits, fit_error = [], "skipped (--no-fit)"
    if fit:
        fits = None if (predict or refit) else saved_fits(source)
        if fits is not None:
            log(f"report: using the sweep's fits ({FITS_FILE}); give --predict to refit with targets")
            fit_error = None
        else:
            log(f"report: fitting laws ({bootstrap} bootstrap resamples) ...")
            fits, fit_error = fit_for_report(data, predict=predict, bootstrap=bootstrap, seed=seed)
            if save_fits and fits:
                store.write_json(FITS_FILE, {"fits": [f.to_json(with_samples=True) for f in fits]})
    where = None
    if report:
        text = build_report(data, fits, fit_error).encode()
        if out is None:
            store.write_bytes(REPORT_FILE, text)
            where = store.path(REPORT_FILE) if "://" not in store.uri else f"{store.uri.rstrip('/')}/{REPORT_FILE}"
        else:
            target = Path(out).resolve()
            ResultsStore(target.parent).write_bytes(target.name, text)
            where = str(target)
        log(f"report: {where} ({len(text) / 1e6:.1f} MB)")
    return ReportOutcome(fits, fit_error, where)
