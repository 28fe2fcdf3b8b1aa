"""Before launch: can the cluster ever hold each trial, and how much memory will each worker
need under its ZeRO stage? ``scalinglab sweep SPEC --dry-run`` prints both; with
``--address`` (the live nodes) or ``--cluster-config ray_config.yaml`` (the node types the
autoscaler may start) a trial that no node can ever hold is an error before anything runs.

Memory per worker (bytes), Ψ = all parameters, W = workers, following Rajbhandari et al.
2020 (ZeRO) for Adam:

- fp32: parameters 4Ψ, gradients 4Ψ, Adam moments 8Ψ.
- bf16/fp16: parameters 2Ψ, gradients 2Ψ, fp32 master copy and moments 12Ψ.
- ZeRO-1 divides the optimizer states by W, ZeRO-2 also the gradients, ZeRO-3 also the
  parameters.
- Activations: the family's own estimate (``ModelFamily.activation_bytes``; the transformer's
  follows Korthikanti et al. 2022). Families without one: model states only.

It is an estimate: allocator slack, the CUDA context (~0.5–1 GiB) and communication buffers
come on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import UserError
from experiments.planner import TrialConfig

GIB = 2**30
# GPU memory by Ray's accelerator_type (GiB); an unknown type is not checked.
GPU_MEMORY_GIB = {"H200": 141, "H100": 80, "A100-80G": 80, "A100-40G": 40, "A100": 40, "L40S": 48, "L40": 48,
                  "A10G": 24, "L4": 24, "A6000": 48, "V100": 16, "T4": 16}


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpus: float
    gpus: float
    memory_bytes: float | None = None  # the node's RAM for Ray ("memory" resource)
    gpu_memory_gib: float | None = None  # per GPU, when the accelerator type is known
    count: int = 1  # live: 1 each; a launcher node type: its max_workers


def live_nodes() -> list[NodeShape]:
    """The alive nodes of the connected Ray cluster."""
    import ray

    out = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        out.append(NodeShape(name=f"node {node.get('NodeManagerAddress', '?')} {node['NodeID'][:8]}",
                             cpus=res.get("CPU", 0.0), gpus=res.get("GPU", 0.0), memory_bytes=res.get("memory"),
                             gpu_memory_gib=GPU_MEMORY_GIB.get(kinds[0]) if kinds else None))
    return out


def launcher_node_types(config_path: str | Path) -> list[NodeShape]:
    """The node types of a Ray cluster-launcher config, from their ``resources``."""
    import yaml

    try:
        config = yaml.safe_load(Path(config_path).read_text())
        types = config["available_node_types"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UserError(f"--cluster-config {config_path}: not a Ray cluster-launcher config: {exc}") from None
    out = []
    for name, spec in types.items():
        res = spec.get("resources") or {}
        if "CPU" not in res:
            raise UserError(f"--cluster-config {config_path}: node type {name!r} does not declare its resources "
                            "(CPU, GPU); declare them so placement can be checked before launch")
        out.append(NodeShape(name=f"type {name}", cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
                             memory_bytes=res.get("memory"), count=int(spec.get("max_workers", 1) or 1)))
    return out


def memory_per_worker(cfg: TrialConfig) -> dict[str, float]:
    """Estimated bytes per worker: model states under the trial's ZeRO stage, activations
    (transformer only; NaN elsewhere) and their sum."""
    psi, w, stage = float(cfg.total_params), cfg.workers, cfg.zero_stage
    half = cfg.precision in ("bf16", "fp16", "auto") and cfg.gpus_per_worker > 0
    params, grads, optim = (2 * psi, 2 * psi, 12 * psi) if half else (4 * psi, 4 * psi, 8 * psi)
    states = (params / (w if stage >= 3 else 1) + grads / (w if stage >= 2 else 1)
              + optim / (w if stage >= 1 else 1))
    activations = cfg.model_family.activation_bytes(cfg.shape, cfg.training.batch_size // w, half)
    activations = float("nan") if activations is None else float(activations)
    total = states + (0 if math.isnan(activations) else activations)
    return {"model_states": states, "activations": activations, "total": total}


def placement_problems(trials: list[TrialConfig], nodes: list[NodeShape]) -> dict[str, str]:
    """{trial_id: why no node (or set of nodes) can ever hold it} for the trials that cannot run."""
    problems = {}
    for cfg in trials:
        fitting = [n for n in nodes if n.cpus >= cfg.cpus_per_worker and n.gpus >= cfg.gpus_per_worker]
        if not fitting:
            largest = max(nodes, key=lambda n: (n.gpus, n.cpus))
            problems[cfg.trial_id] = (f"a worker needs {cfg.cpus_per_worker:g} CPU and {cfg.gpus_per_worker:g} GPU; "
                                      f"the largest node ({largest.name}) has {largest.cpus:g} CPU and "
                                      f"{largest.gpus:g} GPU")
            continue
        capacity = sum(n.count * _workers_on(n, cfg) for n in fitting)
        if capacity < cfg.workers:
            problems[cfg.trial_id] = (f"needs {cfg.workers} workers of {cfg.cpus_per_worker:g} CPU and "
                                      f"{cfg.gpus_per_worker:g} GPU; the cluster holds at most {capacity}")
            continue
        need = memory_per_worker(cfg)["total"] / GIB
        gpu_mem = [n.gpu_memory_gib * cfg.gpus_per_worker for n in fitting if n.gpu_memory_gib]
        if cfg.gpus_per_worker > 0 and gpu_mem and need > max(gpu_mem):
            problems[cfg.trial_id] = (f"needs ~{need:.1f} GiB per worker under ZeRO-{cfg.zero_stage} but a worker's "
                                      f"GPUs hold {max(gpu_mem):.0f} GiB; raise zero_stage or workers")
    return problems


def _workers_on(node: NodeShape, cfg: TrialConfig) -> int:
    by_cpu = node.cpus // cfg.cpus_per_worker if cfg.cpus_per_worker else float("inf")
    by_gpu = node.gpus // cfg.gpus_per_worker if cfg.gpus_per_worker else float("inf")
    return int(min(by_cpu, by_gpu))


def _bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def describe_placement(trials: list[TrialConfig], nodes: list[NodeShape] | None,
                       problems: dict[str, str]) -> str:
    """The dry run's placement section: memory per worker for each trial and, given nodes,
    whether the cluster can ever hold it (``problems``: ``placement_problems``' answer)."""
    lines = ["memory per worker (estimate: model states under the trial's ZeRO stage + activations):"]
    for cfg in trials:
        mem = memory_per_worker(cfg)
        act = "n/a" if math.isnan(mem["activations"]) else _bytes(mem["activations"])
        verdict = "" if not nodes else ("  CANNOT RUN: " + problems[cfg.trial_id] if cfg.trial_id in problems
                                        else "  fits")
        lines.append(f"  {cfg.trial_id}: {_bytes(mem['total'])} (states {_bytes(mem['model_states'])}, "
                     f"activations {act}), {cfg.workers} worker(s), ZeRO-{cfg.zero_stage} {cfg.precision}{verdict}")
    if nodes:
        lines.insert(0, "cluster: " + "; ".join(f"{n.name}: {n.cpus:g} CPU, {n.gpus:g} GPU"
                                                + (f" x{n.count}" if n.count > 1 else "") for n in nodes))
    return "\n".join(lines)
