"""What a report is built from: a sweep's results folder read into one object.

A results folder (a local folder or a storage URI, read through ``analysis.store``) holds
``trials.parquet`` (required), and when present ``evals.parquet``, ``spec.yaml``, ``run.json``
(the driver's record of each run: Ray's resources, start and wall time), an adaptive design's
``decisions.parquet`` and ``adaptive.json``, ``emergence.json``
(the emergence detector's results), ``tasks.json`` (``scalinglab task``'s predictions) and
sample images under ``samples/<trial_id>/*.png`` (written by families with artifacts: a PNG
per grid, the file name its caption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.emergence_tables import EMERGENCE_FILE
from analysis.errors import UserError
from analysis.records import ADAPTIVE_FILE, DECISIONS, EVALS, RUNS_FILE, SAMPLES_DIR, SPEC_FILE, TRIALS
from analysis.store import ResultsStore
from analysis.task_tables import TASKS_FILE


@dataclass
class ReportData:
    name: str
    trials: pd.DataFrame
    evals: pd.DataFrame | None = None
    spec_text: str | None = None
    runs: list[dict] = field(default_factory=list)
    emergence: list[dict] | None = None
    tasks: list[dict] | None = None
    decisions: pd.DataFrame | None = None  # an adaptive design's (decisions.parquet)
    adaptive: dict | None = None  # its state (adaptive.json)
    # trial_id -> [(caption, PNG bytes)]
    samples: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict, repr=False)


def load_results(folder: str | Path) -> ReportData:
    store = ResultsStore(folder)
    if not store.exists(TRIALS.file):
        raise UserError(f"{folder}: not a results folder (expected a folder holding {TRIALS.file})")
    trials = store.read_table(TRIALS.file)
    missing = [c for c in (TRIALS.trial_id, TRIALS.status) if c not in trials.columns]
    if missing:
        raise UserError(f"{store.path(TRIALS.file)}: missing column(s) {missing}; is it a sweep's table?")
    name = str(trials[TRIALS.sweep].iloc[0]) if TRIALS.sweep in trials and len(trials) else Path(store.root).name
    return ReportData(
        name=name, trials=trials,
        evals=store.read_table(EVALS.file) if store.exists(EVALS.file) else None,
        spec_text=store.read_bytes(SPEC_FILE).decode(errors="replace") if store.exists(SPEC_FILE) else None,
        runs=_json(store, RUNS_FILE).get("runs", []),
        emergence=_json(store, EMERGENCE_FILE).get("results"),
        tasks=_json(store, TASKS_FILE).get("tasks"),
        samples=_samples(store),
        decisions=store.read_table(DECISIONS.file) if store.exists(DECISIONS.file) else None,
        adaptive=_json(store, ADAPTIVE_FILE) or None,
    )


def _json(store: ResultsStore, name: str) -> dict:
    try:
        return store.read_json(name, {})
    except (OSError, ValueError) as exc:
        raise UserError(f"{store.path(name)}: not readable JSON: {exc}") from None


def _samples(store: ResultsStore) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {}
    for trial in store.listdir(SAMPLES_DIR):
        if not store.is_dir(f"{SAMPLES_DIR}/{trial}"):
            continue
        names = [n for n in store.listdir(f"{SAMPLES_DIR}/{trial}") if n.endswith(".png")]
        images = [(n[:-len(".png")], store.read_bytes(f"{SAMPLES_DIR}/{trial}/{n}")) for n in names]
        if images:
            out[trial] = images
    return out
