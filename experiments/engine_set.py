"""Several DeepSpeed engines trained together in one trial (a GAN's generator and
discriminator), behind the few engine methods the train loop uses.

Each network has its own optimizer, LR schedule and engine, built from the same DeepSpeed
config: the ZeRO stage applies to each network separately (stage 1 partitions each
optimizer's state over the workers, stage 2 also its gradients, stage 3 also its weights);
every worker holds both engines. Checkpoints keep one folder per network.
"""

from __future__ import annotations

import os

from torch import nn


class EngineSet:
    """Engines by network name (``engines.generator`` …); ``module`` is the family's model
    that holds every network (what ``family.evaluate`` and ``artifacts`` see)."""

    def __init__(self, module: nn.Module, engines: dict) -> None:
        self.module = module
        self.engines = engines
        self.device = next(iter(engines.values())).device

    def __getattr__(self, name: str):
        engines = self.__dict__.get("engines", {})
        if name in engines:
            return engines[name]
        raise AttributeError(name)

    def eval(self) -> "EngineSet":
        for engine in self.engines.values():
            engine.eval()
        return self

    def train(self) -> "EngineSet":
        for engine in self.engines.values():
            engine.train()
        return self

    def get_lr(self) -> list[float]:
        """The first network's learning rates (every network follows the same schedule)."""
        return next(iter(self.engines.values())).get_lr()

    def save_checkpoint(self, path: str, tag: str, client_state: dict) -> None:
        for name, engine in self.engines.items():
            engine.save_checkpoint(os.path.join(path, name), tag=tag, client_state=client_state)

    def load_checkpoint(self, path: str, tag: str):
        """Loads every network; returns the first one's (path, client state)."""
        loaded = [engine.load_checkpoint(os.path.join(path, name), tag=tag) for name, engine in self.engines.items()]
        return loaded[0]
