"""Files that outlive a trial and are keyed by their content (a GAN's feature network): the
``models.family.Cache`` the training loop hands to a family's ``prepare``.

The folder is ``$SCALINGLAB_CACHE`` or ``~/.cache/scalinglab``. Only where the cache lives
comes from the environment: a cache entry is named by the hash of what it was made from, so
where it lives never changes what a trial computes. Writes are atomic (``analysis.store``).
"""

from __future__ import annotations

import os
from pathlib import Path

from analysis.store import ResultsStore

CACHE_ENV = "SCALINGLAB_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scalinglab")


class FileCache:
    def __init__(self, folder: str | Path | None = None) -> None:
        self.store = ResultsStore(folder or default_cache_dir())

    def get(self, key: str) -> bytes | None:
        return self.store.read_bytes(key) if self.store.exists(key) else None

    def put(self, key: str, data: bytes) -> None:
        self.store.write_bytes(key, data)
