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
"""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from analysis.records import Role
from experiments.planner import TrialConfig


class PlannedTrials(Searcher):
    ended_on_disk: frozenset[str] = frozenset()  # the resumed sweep's finished trials (results table)

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
        self.ended |= PlannedTrials.ended_on_disk
