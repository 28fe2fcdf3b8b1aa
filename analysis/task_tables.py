"""``scalinglab task``: ladders read from a sweep's results folder or a table of checkpoints,
predicted task by task (``analysis.task``), as one JSON document or a text summary.

- **A sweep's folder**: every probe task, with no options. The task loss is the negated
  ``TASK/logprob`` (nats per answer token), and each of ``TASK/exact_match`` and
  ``TASK/token_accuracy`` is an accuracy with its own entry (``walk/exact_match``), its floor
  the probe's recorded chance level. A run is a trial the fits use (``load_points``: a
  completed ``point`` or ``branch``); its checkpoints are its evaluation points. ``--via-loss`` names a metric of
  ``evals.parquet`` (``loss``: the held-out loss).
- **A table** (CSV or Parquet), one row per checkpoint: N, D (trained so far), run and step
  columns, then either one task's ``--loss-col`` and ``--acc-col``, several tasks' pairs
  (``--task LOSS_COL:ACC_COL``, repeatable) or a long table with ``--task-col`` naming each
  row's task. C is the ``--c-col`` FLOPs where the table has them, else 6·N·D.

Rows with a missing, infinite or non-positive N, D or task loss, or an accuracy outside
[0, 1], are dropped and counted; a status column other than ``completed`` drops the row too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.errors import UserError
from analysis.fit import parse_target
from analysis.points import flops_form, load_points, read_table
from analysis.records import (
    EVALS,
    TRIALS,
    ProbeMetric,
    Status,
    capability_metric,
    capability_task,
    chance_of,
    is_probe_metric,
    stderr_of,
)
from analysis.results import jsonable
from analysis.task import SKIP_EARLY, Ladder, SigmoidAxis, predict_task

TASKS_FILE = "tasks.json"  # a results folder's task predictions (written by `scalinglab task`, drawn by the report)
ACCURACIES = (ProbeMetric.EXACT_MATCH, ProbeMetric.TOKEN_ACCURACY)  # a probe task's accuracies, each a task entry
TASK_LOSS = ProbeMetric.LOGPROB  # negated: the probe task's loss


@dataclass
class Columns:
    """A checkpoint table's column names (``scalinglab task --n-col`` …)."""

    n: str = TRIALS.n_params
    d: str = EVALS.data_units
    c: str = TRIALS.flops
    run: str = TRIALS.trial_id
    step: str = EVALS.step
    loss: str | None = None
    acc: str | None = None
    pairs: list[tuple[str, str]] = field(default_factory=list)  # --task LOSS:ACC
    task: str | None = None  # a long table's task column


def parse_pair(text: str) -> tuple[str, str]:
    loss, sep, acc = text.partition(":")
    if not sep or not loss or not acc:
        raise UserError(f"--task {text!r}: expected LOSS_COL:ACC_COL, e.g. hellaswag_bpb:hellaswag_acc")
    return loss, acc


def sweep_ladders(trials: pd.DataFrame, evals: pd.DataFrame | None, *, via: str | None = None) -> list[Ladder]:
    """Every probe task's ladders of a sweep's tables (module docstring)."""
    if evals is None or evals.empty:
        raise UserError(f"no {EVALS.file}: task prediction needs each run's checkpoints")
    runs = load_points(trials)  # the completed fit-point trials, and what C is for them
    metrics = set(evals[EVALS.metric].unique())
    tasks = sorted({capability_task(m) for m in metrics if is_probe_metric(m)
                    and capability_metric(capability_task(m), TASK_LOSS) in metrics})
    if not tasks:
        raise UserError(f"no probe task with a {TASK_LOSS} metric in {EVALS.file} (rows TASK/{TASK_LOSS}): "
                        "the sweep ran no capability probes (spec `probes:`)")
    if via is not None and via not in metrics:
        raise UserError(f"--via-loss {via!r}: no such metric in {EVALS.file}; it has e.g. "
                        f"{sorted(m for m in metrics if '/' not in m)}")
    wide = (evals[evals[EVALS.trial_id].isin(runs.frame["trial_id"])]
            .pivot_table(index=[EVALS.trial_id, EVALS.step, EVALS.data_units, EVALS.flops],
                         columns=EVALS.metric, values=EVALS.value, aggfunc="first").reset_index())
    wide = wide.merge(runs.frame[["trial_id", "N"]].rename(columns={"trial_id": TRIALS.trial_id}), on=TRIALS.trial_id)
    ladders = []
    for task in tasks:
        for name in ACCURACIES:
            metric = capability_metric(task, name)
            if metric not in wide:
                continue
            frame = pd.DataFrame({"run": wide[TRIALS.trial_id], "step": wide[EVALS.step], "N": wide["N"],
                                  "D": wide[EVALS.data_units], "C": wide[EVALS.flops],
                                  "loss": -wide[capability_metric(task, TASK_LOSS)], "acc": wide[metric]})
            if via is not None:
                frame["general"] = wide[via]
            if stderr_of(metric) in wide:
                frame["stderr"] = wide[stderr_of(metric)]
            chance = wide[chance_of(metric)].median() if chance_of(metric) in wide else None
            ladders.append(_clean(metric, frame, None if chance is None or pd.isna(chance) else float(chance),
                                  runs.flops))
    return ladders


def table_ladders(table: pd.DataFrame, cols: Columns, *, chance: list[float] | None = None,
                  via: str | None = None) -> list[Ladder]:
    """The ladders of a checkpoint table (module docstring)."""
    if cols.task:
        if not (cols.loss and cols.acc):
            raise UserError("--task-col needs --loss-col and --acc-col: the long table's task loss and accuracy columns")
        pairs = [(cols.loss, cols.acc)]
    else:
        pairs = list(cols.pairs) or ([(cols.loss, cols.acc)] if cols.loss and cols.acc else [])
        if not pairs:
            raise UserError("name the task's columns: --loss-col COL --acc-col COL, --task LOSS_COL:ACC_COL "
                            "(repeatable), or --task-col for a long table")
    needed = [("--n-col", cols.n), ("--d-col", cols.d), ("--run-col", cols.run), ("--step-col", cols.step),
              *([("--task-col", cols.task)] if cols.task else []), *([("--via-loss", via)] if via else []),
              *[(f"task {i + 1}'s {what}", col) for i, pair in enumerate(pairs)
                for what, col in zip(("loss", "accuracy"), pair)]]
    missing = [f"{col!r} ({opt})" for opt, col in needed if col not in table.columns]
    if missing:
        raise UserError(f"missing column(s) {', '.join(missing)}; the table has {list(table.columns)[:20]}")
    if chance and len(chance) not in (1, len(pairs)) or (chance and cols.task and len(chance) != 1):
        raise UserError(f"--chance given {len(chance)} times: give it once, or once per --task ({len(pairs)})")
    dropped_status = 0
    if TRIALS.status in table.columns:
        bad = table[TRIALS.status].astype(str) != Status.COMPLETED
        dropped_status, table = int(bad.sum()), table[~bad]
    base = pd.DataFrame({"run": table[cols.run].astype(str), "step": _numeric(table, cols.step),
                         "N": _numeric(table, cols.n), "D": _numeric(table, cols.d)})
    base["C"] = _numeric(table, cols.c) if cols.c in table.columns else 6.0 * base["N"] * base["D"]
    if via:
        base["general"] = _numeric(table, via)
    finals = base.sort_values("step").groupby("run").tail(1).dropna(subset=["N", "D", "C"])
    flops = flops_form(finals[(finals[["N", "D", "C"]] > 0).all(axis=1)], cols.c in table.columns)
    groups = ([(str(name), rows.index) for name, rows in table.groupby(cols.task, sort=True)] if cols.task
              else [(acc, table.index) for _, acc in pairs])
    ladders = []
    for i, (name, index) in enumerate(groups):
        loss_col, acc_col = pairs[0 if cols.task else i]
        frame = base.loc[index].assign(loss=_numeric(table.loc[index], loss_col), acc=_numeric(table.loc[index], acc_col))
        level = chance[0 if len(chance) == 1 else i] if chance else None
        ladder = _clean(name, frame, level, flops)
        if dropped_status:
            ladder.dropped += dropped_status
            ladder.warnings.insert(0, f"dropped {dropped_status} row(s) whose {TRIALS.status} is not '{Status.COMPLETED}'")
        ladders.append(ladder)
    return ladders


def _numeric(table: pd.DataFrame, col: str) -> pd.Series:
    values = pd.to_numeric(table[col], errors="coerce")
    if values.isna().all() and table[col].notna().any():
        raise UserError(f"column {col!r} is not numeric")
    return values.astype(float)


def _clean(task: str, frame: pd.DataFrame, chance: float | None, flops) -> Ladder:
    positive = [c for c in ("N", "D", "C", "loss", "general") if c in frame]
    good = np.isfinite(frame[positive + ["acc", "step"]]).all(axis=1) & (frame[positive] > 0).all(axis=1)
    good &= frame["acc"].between(0.0, 1.0)
    warnings = []
    if (~good).any():
        warnings.append(f"dropped {int((~good).sum())} row(s) with a missing, infinite or non-positive N, D, C or "
                        "task loss, or an accuracy outside [0, 1]")
    if chance is not None and not 0 <= chance < 1:
        raise UserError(f"--chance {chance}: expected a fraction in [0, 1)")
    return Ladder(task, frame[good].reset_index(drop=True), chance, flops, int((~good).sum()), warnings)


def run_tasks(source, *, columns: Columns | None = None, chance: list[float] | None = None, via: str | None = None,
              predict: list[str] | None = None, bootstrap: int = 1000, seed: int = 0,
              skip_early: float = SKIP_EARLY, sigmoid_in: str = SigmoidAxis.LOSS, log=None) -> dict:
    """Every task of ``source`` (a results folder, a CSV/Parquet table or a DataFrame) fitted and
    predicted at ``predict`` ('N=…,D=…' or 'C=…'): the document of ``scalinglab task --format json``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    targets = [parse_target(t) for t in predict or []]
    for t in targets:
        if not ({"N", "D"} <= set(t) or set(t) == {"C"}):
            raise UserError(f"--predict {t}: give N and D, or C alone")
    if isinstance(source, pd.DataFrame):
        ladders = table_ladders(source, columns or Columns(), chance=chance, via=via)
    elif str(source).lower().endswith((".csv", ".parquet", ".pq")):
        ladders = table_ladders(read_table(source)[0], columns or Columns(), chance=chance, via=via)
    else:
        ladders = sweep_ladders(*read_table(source), via=via)
    docs = []
    for ladder in ladders:
        log(f"task {ladder.task}: {ladder.frame['run'].nunique()} runs, {len(ladder.frame)} checkpoints; "
            f"fitting both steps with {bootstrap} bootstrap resamples of the runs ...")
        docs.append(predict_task(ladder, targets, via=via is not None, bootstrap=bootstrap, seed=seed,
                                 skip_early=skip_early, sigmoid_in=sigmoid_in))
    return jsonable({"tasks": docs, "via_loss": via, "bootstrap": bootstrap, "seed": seed})


def summary(document: dict) -> str:
    lines = []
    for t in document["tasks"]:
        chance = "" if t["chance"] is None else f"; floor at chance {t['chance']:.3g}"
        lines.append(f"{t['task']}: {t['n_runs']} runs, {t['n_checkpoints']} checkpoints ({t['dropped']} dropped){chance}")
        s1, s2, noise = t["step1"], t["step2"], t["noise"]
        if s1:
            lines.append(f"  step 1: {s1['law']}" + (f" of the general loss's {s1['general']['law']}" if "general" in s1 else "")
                         + f", R² (log) {_num(s1['r2_log'], '.4f')}")
            lines += [f"    {k:>6} = {_iv(v)}" for k, v in s1["params"].items()]
            lines += [f"    warning: {w}" for w in s1["warnings"] + s1.get("general", {}).get("warnings", [])]
        if s2:
            lines.append(f"  step 2: accuracy = {s2['form']}, R² {_num(s2['r2'], '.3f')} on {s2['checkpoints']} "
                         f"checkpoints (task loss {s2['task_loss_range'][0]:.3g} to {s2['task_loss_range'][1]:.3g}, "
                         f"accuracy {s2['accuracy_range'][0]:.3g} to {s2['accuracy_range'][1]:.3g})")
            lines += [f"    {k:>6} = {_iv(v)}" for k, v in s2["params"].items()]
        if noise["snr"] is not None:
            lines.append(f"  noise: checkpoint sd {noise['checkpoint_sd']:.3g}, ladder sd {noise['ladder_sd']:.3g}, "
                         f"signal-to-noise {noise['snr']:.3g} (needs {noise['snr_min']:g}); noise from {noise['source']}")
        lines.append("  predictable" if t["predictable"] else "  NOT predictable: " + "; ".join(t["reasons"]))
        held = t.get("held_out")
        if held:
            lines.append(f"  held-out: refit without the {held['n_held_out']} largest-C run(s), their accuracy is "
                         f"predicted within {held['accuracy_max_abs_error']:.3g} and task loss within "
                         f"{held['task_loss_max_abs_rel_error']:.2%}")
        for p in t["predictions"]:
            lines.append(f"  predict N={p['N']:.3g}, D={p['D']:.3g}, C={p['C']:.3g}: task loss {_iv(p['task_loss'])}, "
                         f"accuracy {_iv(p['accuracy'])}, {p['extrapolation']:.3g}x beyond the data")
        lines += [f"  warning: {w}" for w in t["warnings"]]
    return "\n".join(lines)


def _iv(d: dict) -> str:
    return f"{_num(d['value'])} [{_num(d['low'])}, {_num(d['high'])}]"


def _num(x, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)
