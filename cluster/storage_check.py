"""Is the sweep's storage visible from every node? On a multi-node cluster a local path
must be a shared filesystem mounted at the same place everywhere, or trials on other nodes
write their checkpoints where the driver never looks. The check is empirical: the driver
writes a marker file into the storage folder and a zero-CPU task pinned to each live node
looks for it."""

from __future__ import annotations

import uuid
from pathlib import Path

from analysis.errors import UserError


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local storage URI, None for object stores."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    return None if "://" in uri else Path(uri)


def _sees(path: str) -> bool:
    return Path(path).is_file()


def check_shared(uri: str, what: str = "storage") -> int:
    """Raise UserError when some live Ray node cannot see the local storage ``uri`` (``what``
    names it in the message); returns the number of nodes checked (1 means nothing to check)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = local_path(uri)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if path is None or len(nodes) <= 1:
        return len(nodes)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / f".storage-check-{uuid.uuid4().hex[:8]}"
    marker.write_text("scalinglab")
    try:
        probe = ray.remote(num_cpus=0)(_sees)
        refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker)) for n in nodes}
        blind = [node for node, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        addresses = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
        raise UserError(
            f"{what}: {path} is node-local: {len(blind)} of {len(nodes)} Ray nodes cannot see it "
            f"({', '.join(f'{addresses[b]} {b[:8]}' for b in blind)}). A multi-node sweep needs a shared "
            "filesystem mounted at the same path on every node, or " + (
                "an object-store URI (s3://…, gs://…)" if what == "storage" else "a tracking server's URI"))
    return len(nodes)
