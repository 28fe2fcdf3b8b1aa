"""The Ray Tune search algorithm of a sweep's planned trials.

A sweep plans every trial before it starts, so there is nothing to search: ``PlannedTrials``
hands Tune the planned trials in plan order. What it adds over a grid is waiting: a wsd
cooldown branch starts only once its trunk has ended. Trunks and branches then run in one Tune
run, and a branch takes the process a trunk (or another branch) leaves warm (``reuse_actors``)
instead of a second run's fresh one. A branch of a trunk that failed is still released: it fails
at once, naming the missing checkpoint (``cluster.results.BranchCheckpoints.load``).

Tune saves this searcher's state with its experiment and restores it on ``--resume``. It
saves the two one after the other, so a driver killed just after a trunk ended can leave an
experiment that knows the trunk ended beside a searcher state that does not: its branches would
wait forever. A restored searcher therefore also counts as ended every trial the results table
keeps as finished (``ended_on_disk``, set by ``cluster.sweep`` before it restores).

``AdaptiveTrials`` hands Tune the runs an adaptive design chooses (``analysis.design``, built
by the CLI and given to ``cluster.sweep``: this layer does no statistics): the seed design
first, then, each time Tune has a free slot and nothing chosen is left to start, the design's
next choice (which counts the runs still going as if observed, so concurrent choices spread). A chosen wsd branch brings its trunk along (once). Its ``DecisionLog`` writes every
decision to ``decisions.parquet`` and the design's state to ``adaptive.json`` as it goes.
"""

from __future__ import annotations

import math
import pickle
import sys

from ray.tune.search import Searcher

from analysis.records import ADAPTIVE_FILE, DECISIONS, Role
from analysis.store import ResultsStore
from experiments.planner import TrialConfig
from experiments.trial_report import TrialReport

LATEST: dict[str, str] = {}  # the adaptive design's current interval, in words (for the progress line)


class PlannedTrials(Searcher):
    # the resumed sweep's finished trials (results table), with their final loss (NaN: not completed)
    ended_on_disk: dict[str, float] = {}

    def __init__(self, trials: list[TrialConfig], config_key: str) -> None:
        super().__init__()
        self.config_key = config_key
        # (trial id, the trial it waits for or None, its config as Tune passes it), in plan order
        self.waiting = [(t.trial_id, t.parent if t.role == Role.BRANCH else None, t.to_json()) for t in trials]
        self.started: dict[str, str] = {}  # Tune's trial id -> ours
        self.ended: set[str] = set()  # our trial ids that Tune has finished with, in any state

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.waiting:
            return Searcher.FINISHED
        for i, (ours, after, config) in enumerate(self.waiting):
            if after is None or after in self.ended:
                del self.waiting[i]
                self.started[trial_id] = ours
                return {self.config_key: config}
        return None  # only branches of running trunks are left: Tune asks again

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.started:
            self.ended.add(self.started[trial_id])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.ended |= set(PlannedTrials.ended_on_disk)



class DecisionLog:
    """Writes an adaptive design's decisions and state into the results folder (picklable: it
    holds only the folder's URI, as Tune pickles the searcher with it)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def write(self, design) -> None:
        store = ResultsStore(self.uri)
        store.write_table(DECISIONS.file, design.frame())
        store.write_json(ADAPTIVE_FILE, design.state())
        line = design.progress()
        if line != LATEST.get("line"):
            print(line, file=sys.stderr, flush=True)
        LATEST["line"] = line


class AdaptiveTrials(PlannedTrials):
    """Tune's searcher for an adaptive design (module docstring). ``design`` has the interface
    of ``analysis.design.Design``: ``seed_design()``, ``observe(key, loss)``, ``decide()``,
    ``stopped``, and what ``DecisionLog`` writes."""

    def __init__(self, trials: list[TrialConfig], config_key: str, design, log: DecisionLog) -> None:
        super().__init__([], config_key)
        self.trials = {t.trial_id: t for t in trials}
        self.design, self.log = design, log
        self.queued: set[str] = set()
        self.tried: tuple[int, int] | None = None  # (results, runs chosen) at the last decision that chose none
        self._queue(design.seed_design())

    def _queue(self, keys: list[str]) -> None:
        for key in keys:
            trial = self.trials[key]
            if trial.role == Role.BRANCH and trial.parent not in self.queued:
                self._queue_one(self.trials[trial.parent], None)
            self._queue_one(trial, trial.parent if trial.role == Role.BRANCH else None)
        self.log.write(self.design)

    def _queue_one(self, trial: TrialConfig, after: str | None) -> None:
        self.queued.add(trial.trial_id)
        self.waiting.append((trial.trial_id, after, trial.to_json()))

    def suggest(self, trial_id: str) -> dict | str | None:
        """Tune asks when it has a free slot: the next queued run, else the design's next
        choice (made now, counting the runs still going as observed), else wait or finish."""
        now = (len(self.design.observed), len(self.design.chosen))
        if not self.waiting and self.design.stopped is None and now != self.tried:  # a refit takes seconds:
            chosen = self.design.decide()  # not again until a result has come in
            self.tried = None if chosen else now
            self._queue(chosen)
        if not self.waiting:
            return Searcher.FINISHED if self.design.stopped is not None else None
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        ours = self.started.get(trial_id)
        if ours is None or self.trials[ours].role == Role.TRUNK:
            return
        self.design.observe(ours, math.nan if error else TrialReport.completed_loss(result))
        if self.design.stopped is not None and set(self.design.chosen) <= set(self.design.observed):
            self.design.refresh()  # the last runs came in after the stop: the final estimate has them
        self.log.write(self.design)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        for key, loss in PlannedTrials.ended_on_disk.items():  # finished after the state was saved
            if key in self.design.chosen and key not in self.design.observed and self.trials[key].role != Role.TRUNK:
                self.design.observe(key, loss)
        self.log.write(self.design)


def adaptive_searcher(trials: list[TrialConfig], config_key: str, designer, settings, uri: str) -> AdaptiveTrials:
    """The searcher of an adaptive sweep's phase: its fit points are the design's candidates
    (a wsd branch's trunk is its group, paid by the first branch chosen)."""
    import pandas as pd

    by_id = {t.trial_id: t for t in trials}
    points = [t for t in trials if t.role.fit_point]
    candidates = pd.DataFrame({
        "key": [t.trial_id for t in points], "N": [float(t.n_params) for t in points],
        "D": [float(t.data_units) for t in points], "C": [t.flops for t in points],
        "cost": [t.flops_paid for t in points], "group": [t.parent for t in points],
        "group_cost": [by_id[t.parent].flops_paid if t.parent else 0.0 for t in points],
    })
    return AdaptiveTrials(trials, config_key, designer(candidates, settings), DecisionLog(uri))
