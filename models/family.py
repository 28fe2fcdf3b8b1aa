"""The model-family protocol and its registry.

A *family* is everything scalinglab needs to know about one kind of model to put it on a
scaling curve: how to build a model of a given shape, its training loss on a batch, held-out
metrics that are comparable across sizes (one primary ``loss``), how many parameters count
towards the scaling N, and how many FLOPs one data unit (a token, an image) costs.

A family owns its configuration, as frozen dataclasses the spec loader parses:

- ``size_type``: the fields of one entry of the spec's ``model.sizes`` (e.g. ``d_model``,
  ``n_layers``, ``n_heads``); the entry may also give ``params``, ``workers``, ``zero_stage``;
- ``options_type``: the family's other fields of the spec's ``model`` block (e.g. the
  diffusion ``noise_schedule``); every field has a default;
- ``shape_type``: everything ``build`` needs: a size, the options that shape the model, and
  what the data fix (:class:`DataShape`: context and vocabulary, or image size and channels).

Required: the class attributes below without a default, and ``build``, ``loss``, ``evaluate``,
``example_batch``, ``tiny``. Every other hook is declared here with its default, so the
training loop and the planner call hooks and never probe for them.

Adding a family is one module that subclasses :class:`ModelFamily` and decorates it with
``@register("name")``, plus one line in :data:`BUILTIN` (name → module) when it ships with
scalinglab. The registry is lazy: a transformer sweep never imports the GAN's metrics.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Literal, Protocol

import torch
from torch import nn

from analysis.records import DataUnit, Metric, Status

# name -> module that registers it; imported on first use
BUILTIN = {
    "transformer": "models.transformer",
    "diffusion": "models.diffusion",
    "vae": "models.vae",
    "gan": "models.gan",
}
SIZE_KEYS = ("params", "workers", "zero_stage")  # keys of a sizes entry that are not the family's


@dataclass(frozen=True, kw_only=True)
class ParamCount:
    """Parameter counts of one model size.

    ``scaling``: the N that goes on the x axis of a scaling law (for language models the
    non-embedding parameters, as Kaplan et al. 2020 count them). ``total``: every parameter.
    """

    scaling: int
    total: int


@dataclass(frozen=True, kw_only=True)
class DataShape:
    """What the data fix about a model: tokens per sequence and vocabulary (token families),
    or pixels per side and channels (image families). A shape type takes the ones it has."""

    context: int = 0
    vocab: int = 0
    image_size: int = 0
    channels: int = 0


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    """A family without options of its own."""


class Cache(Protocol):
    """Bytes by key that outlive a trial (``experiments.cache.FileCache``)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class Preparation:
    """What ``prepare`` may use: ``train_data(n)``, the first n training batches' worth of
    data units as one tensor (the same for every budget), and a ``cache``."""

    train_data: Callable[[int], torch.Tensor]
    cache: Cache


class ModelFamily:
    """Base class of every family: subclass it, set the class attributes, implement the
    required methods, override the hooks the family needs."""

    name: ClassVar[str]  # set by @register
    tag: ClassVar[str]  # short prefix of trial ids, e.g. "tfm"
    data_unit: ClassVar[DataUnit]
    loss_unit: ClassVar[str]  # unit of evaluate(...)["loss"], e.g. "nats/token"
    metrics: ClassVar[tuple[Metric, ...]]  # every key evaluate() returns, "loss" first
    size_type: ClassVar[type]
    shape_type: ClassVar[type]
    options_type: ClassVar[type] = NoOptions

    supports_wsd: ClassVar[bool] = True  # a wsd branch continues the trial's one engine
    supports_probes: ClassVar[bool] = False  # next_token_logits scores text (capability probes)
    shared_evaluation: ClassVar[bool] = False  # every rank scores all held-out items (not a shard)

    # --- required -----------------------------------------------------------------------------

    def build(self, shape: Any) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Training loss on one batch: a scalar, in ``loss_unit``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """Held-out metrics (the names of ``metrics``), deterministic for given weights and
        batches; ``loss`` is lower-is-better and comparable across sizes."""
        raise NotImplementedError

    def example_batch(self, shape: Any, batch_size: int) -> torch.Tensor:
        """A random batch of the kind ``loss`` takes (tests and FLOP counting)."""
        raise NotImplementedError

    def tiny(self) -> Any:
        """A shape small enough for a forward/backward in well under a second on a CPU."""
        raise NotImplementedError

    # --- hooks, with their defaults -------------------------------------------------------------

    def shape(self, size: Any, options: Any, data: DataShape) -> Any:
        """The full shape of an explicit size: the size's fields, the options and data fields
        that ``shape_type`` has (options that are rules, like an aspect ratio, are not)."""
        fields = {f.name for f in dataclasses.fields(self.shape_type)}
        given = {**_fields(data), **_fields(options), **_fields(size)}
        return self.shape_type(**{k: v for k, v in given.items() if k in fields})

    def shape_from_params(self, target: int, options: Any, data: DataShape) -> Any:
        """A shape whose scaling N is close to ``target``, by the family's documented rule."""
        raise ValueError(f"family {self.name!r} has no rule for sizes given as params; give its shape fields")

    def num_params(self, shape: Any) -> ParamCount:
        """Default: every parameter counts towards N (counted on the meta device)."""
        with torch.device("meta"):
            total = sum(p.numel() for p in self.build(shape).parameters())
        return ParamCount(scaling=total, total=total)

    def flops_per_unit(self, shape: Any) -> float:
        """Training FLOPs (forward and backward) per data unit. Default: measured by
        FlopCounterMode on a real step of ``example_batch`` (``models.flops``)."""
        from models.flops import measured_flops_per_unit

        return measured_flops_per_unit(self, shape)

    def activation_bytes(self, shape: Any, micro_batch: int, half: bool) -> float | None:
        """Activation memory of one worker's forward and backward on ``micro_batch`` items, in
        16-bit (``half``) or fp32, for the dry run's memory estimate; None (the default): not
        estimated."""
        return None

    def networks(self, model: nn.Module) -> dict[str, nn.Module] | None:
        """Networks that get one optimizer and DeepSpeed engine each (a GAN's two), trained by
        ``train_step``; None (the default): the whole model is one engine."""
        return None

    def train_step(self, engines: Any, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer step of a family with ``networks``; returns ``loss`` and the family's
        other training losses (reported as ``train_<name>``). The default is the single-engine
        step: loss, backward, step."""
        loss = self.loss(engines, batch)
        engines.backward(loss)
        engines.step()
        return {"loss": loss}

    def prepare(self, model: nn.Module, preparation: Preparation) -> None:
        """Data-set-level state the metrics need, made before training (a GAN's feature
        network); nothing by default."""

    def health(self, history: list[dict[str, float]]) -> tuple[Status, str]:
        """(status, caveat) judged at every evaluation point from the held-out metrics so far
        (each with its ``step``): ``diverged`` ends the trial, ``collapsed`` marks it at the end."""
        return Status.COMPLETED, ""

    def artifacts(self, model: nn.Module, batches: list[torch.Tensor], n: int) -> dict[str, bytes]:
        """Images made when a trial completes ({caption: PNG bytes}), saved under
        ``samples/<trial_id>/`` and shown by the report; none by default."""
        return {}

    def next_token_logits(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for token ids [B, T] (``supports_probes`` families)."""
        raise NotImplementedError(f"family {self.name!r} does not score text")


def doc_field(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A dataclass field with its documentation (``metadata["doc"]``), which the generated
    spec reference (docs/spec.md) prints beside its name and default."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def check_fields(shape: Any, positive: Iterable[str]) -> None:
    """The checks every shape type makes when it is built: each field in ``positive`` is at
    least 1, and each field typed ``Literal[...]`` holds one of its values."""
    for name in positive:
        if getattr(shape, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(shape, name)}")
    for name, tp in typing.get_type_hints(type(shape)).items():
        allowed = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
        if allowed is not None and getattr(shape, name) not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(shape, name)!r}")


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


_REGISTRY: dict[str, ModelFamily] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: instantiate the family and register it under ``name``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"model family {name!r} is registered twice")
        clash = [k for k in SIZE_KEYS if k in {f.name for f in dataclasses.fields(cls.size_type)}]
        if clash:
            raise ValueError(f"family {name!r}: size fields {clash} are the spec's own keys")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return wrap


def get_family(name: str, module: str | None = None) -> ModelFamily:
    """The family registered as ``name``, importing its module on first use: the built-in
    one, or ``module`` (a family registered outside ``models``, recorded in every trial's
    config so that Ray workers find it too). KeyError lists the known names."""
    if name not in _REGISTRY:
        path = BUILTIN.get(name) or module
        if path:
            importlib.import_module(path)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {family_names()}") from None


def family_names() -> list[str]:
    """The built-in families and any registered since."""
    return sorted(set(BUILTIN) | set(_REGISTRY))


def family_module(name: str) -> str:
    """The module that registers family ``name`` (what a worker imports to find it)."""
    return BUILTIN.get(name) or type(get_family(name)).__module__
