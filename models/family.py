"""The model-family protocol and its registry.

A *family* is everything scalinglab needs to know about one kind of model to put it on a
scaling curve: how to build a model of a given size, its training loss on a batch, held-out
metrics that are comparable across sizes (one primary ``loss``), how many parameters count
towards the scaling N, and how many FLOPs one data unit (a token, an image) costs to train on.

A family may also define ``artifacts(model, batches, n) -> {caption: PNG bytes}``: images
made at the end of a completed trial (sample grids) that land in the results folder as
``samples/<trial_id>/<caption>.png`` and in the report.

Adding a family is one module implementing :class:`ModelFamily` plus ``@register("name")``;
``tests/models/test_family_protocol.py`` then covers it automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True, kw_only=True)
class ParamCount:
    """Parameter counts of one model size.

    ``scaling``: the N that goes on the x axis of a scaling law (for language models the
    non-embedding parameters, as Kaplan et al. 2020 count them). ``total``: every parameter.
    """

    scaling: int
    total: int


@runtime_checkable
class ModelFamily(Protocol):
    """What every model family implements. ``Shape`` is the family's frozen size dataclass."""

    name: str
    tag: str  # short prefix of trial ids, e.g. "tfm"
    data_unit: str  # what D counts: "tokens" or "samples"
    loss_unit: str  # the unit of ``evaluate(...)["loss"]``, e.g. "nats/token"
    shape_type: type

    def build(self, shape: Any) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Training loss on one batch (a scalar; for LMs nats per token)."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """Held-out metrics, deterministic for given weights and batches. Must contain
        ``loss`` (lower is better, comparable across sizes) in ``loss_unit``."""
        ...

    def num_params(self, shape: Any) -> ParamCount: ...

    def flops_per_unit(self, shape: Any) -> float:
        """Analytic training FLOPs (forward + backward) per data unit."""
        ...

    def example_batch(self, shape: Any, batch_size: int) -> torch.Tensor:
        """A random batch of the shape ``loss`` takes (for tests and FLOP counting)."""
        ...

    def tiny(self) -> Any:
        """A shape small enough for a forward/backward in well under a second on a CPU."""
        ...

    def shape_from_params(self, target: int, **rule: Any) -> Any:
        """A shape whose scaling N is close to ``target``, by the family's documented rule."""
        ...


_REGISTRY: dict[str, ModelFamily] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: instantiate the family and register it under ``name``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"model family {name!r} is registered twice")
        instance = cls()
        instance.name = name
        _REGISTRY[name] = instance
        return cls

    return wrap


def get_family(name: str) -> ModelFamily:
    """The registered family ``name``; KeyError lists the known names."""
    _load_builtin_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(_REGISTRY)}") from None


def family_names() -> list[str]:
    _load_builtin_families()
    return sorted(_REGISTRY)


def _load_builtin_families() -> None:
    # Imported lazily so that `models.family` stays importable on its own; each import
    # registers its family as a side effect.
    from models import diffusion, gan, transformer, vae  # noqa: F401
