"""The sweep-spec reference (the generated part of docs/spec.md), read off the spec's own
dataclasses and every family's size and options dataclasses: each field with its type, its
default and its ``doc_field`` text. ``python -m experiments.spec_docs`` prints it;
``tests/test_docs.py`` fails when docs/spec.md says something else.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, Union

from analysis.adaptive_spec import AdaptiveSpec, Target
from experiments.spec import (BudgetSpec, DataSpec, DeepSpeedSpec, EvalSpec, LRSearchSpec, MLflowSpec, ProbeSpec,
                              ResourceSpec, SizeSpec, SweepSpec, SyntheticSpec, TensorBoardSpec, TrackingSpec,
                              TrainingSpec, WandbSpec)
from models.family import BUILTIN, get_family

SECTIONS = [  # (YAML path, dataclass) in the order a spec is usually written
    ("(top level)", SweepSpec), ("budgets", BudgetSpec), ("budgets.adaptive", AdaptiveSpec),
    ("budgets.adaptive.target", Target), ("data", DataSpec), ("data.synthetic", SyntheticSpec),
    ("training", TrainingSpec), ("training.lr: {search: …}", LRSearchSpec), ("deepspeed", DeepSpeedSpec),
    ("resources", ResourceSpec), ("evaluation", EvalSpec), ("probes", ProbeSpec), ("tracking", TrackingSpec),
    ("tracking.mlflow", MLflowSpec), ("tracking.tensorboard", TensorBoardSpec), ("tracking.wandb", WandbSpec),
]


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        name = " or ".join(type_name(a) for a in args)
        return name + " or null" if len(args) < len(typing.get_args(tp)) else name
    if origin is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(m.value for m in tp)
    if dataclasses.is_dataclass(tp):
        return "mapping (below)"
    return {int: "integer", float: "number", str: "string", bool: "true \\| false"}.get(tp, getattr(tp, "__name__", str(tp)))


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
        if isinstance(value, enum.Enum):
            value = value.value
        if value is None:
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return "[" + ", ".join(map(str, value)) + "]"
        return f"{value:g}" if isinstance(value, float) else str(value)
    if field.default_factory is not dataclasses.MISSING:
        return "(its defaults)"
    return "**required**"


def table(cls: type, skip: tuple[str, ...] = ()) -> str:
    hints = typing.get_type_hints(cls)
    rows = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {type_name(hints[f.name])} | {default_of(f)} | {doc} |")
    return "\n".join(rows)


def markdown() -> str:
    parts = []
    for path, cls in SECTIONS:
        skip = ("model",) if cls is SweepSpec else ()
        parts.append(f"### `{path}`\n\n{table(cls, skip)}")
    parts.append("### `model`\n\n`sizes` (**required**), a list of sizes; the other keys are the family's "
                 "options (below). Each size is `params` (a target N) or the family's size fields, and may set:\n\n"
                 + table(SizeSpec, skip=("shape",)))
    for name in sorted(BUILTIN):
        family = get_family(name)
        parts.append(f"#### `family: {name}` (D in {family.data_unit}; loss in {family.loss_unit})\n\n"
                     f"Size fields:\n\n{table(family.size_type)}\n\n"
                     + (f"Options:\n\n{table(family.options_type)}" if dataclasses.fields(family.options_type)
                        else "No options."))
    return "\n\n".join(parts)


def families_markdown() -> str:
    """Each built-in family's data unit, loss and held-out metrics (the generated part of
    docs/families.md)."""
    parts = []
    for name in sorted(BUILTIN):
        family = get_family(name)
        rows = "\n".join(f"| `{m}` | {m.unit} | {m.meaning.replace('|', '/')} |" for m in family.metrics)
        parts.append(f"#### `{name}`: held-out metrics\n\nD counts {family.data_unit}; `loss` is in "
                     f"{family.loss_unit}.\n\n| metric | unit | meaning |\n| --- | --- | --- |\n{rows}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(markdown())
