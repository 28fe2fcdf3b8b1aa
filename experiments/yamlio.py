"""Typed loading of YAML into frozen dataclasses, with errors that name file, line and field.

``load_yaml`` parses with PyYAML's safe loader and remembers the line of every key;
``build`` turns plain data into a dataclass by its type hints. Supported field types: int,
float, str, bool, Literal, Enum (by value), Optional, unions, nested dataclasses and tuples
of any of these. Numbers written as ``1e5`` (a string to YAML 1.1) are accepted wherever a
number is expected. ``to_plain`` and ``from_plain`` are the same conversion for JSON (a
TrialConfig in ``plan.json`` and in the trials table's ``config``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from analysis.errors import UserError


class FieldError(ValueError):
    """A problem with one field of a spec found outside the loader (the planner's data
    checks); ``path`` is the field's path, which the caller turns into FILE:LINE."""

    def __init__(self, path: tuple, message: str) -> None:
        super().__init__(f"{'.'.join(map(str, path))}: {message}")
        self.path, self.message = path, message


class Located:
    """Where each value of a parsed YAML file came from: path tuple -> line number (1-based)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[tuple, int] = {}

    def where(self, path: tuple) -> str:
        for end in range(len(path), -1, -1):  # the nearest ancestor that has a line
            if path[:end] in self.lines:
                return f"{self.source}:{self.lines[path[:end]]}"
        return self.source

    def error(self, path: tuple, message: str) -> UserError:
        field = ".".join(str(p) for p in path) or "(top level)"
        return UserError(f"{self.where(path)}: {field}: {message}")


def load_yaml(path: str | Path) -> tuple[Any, Located]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: spec file not found (expected a YAML sweep spec)")
    text = path.read_text()
    located = Located(str(path))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if node is None:
        raise UserError(f"{path}: the file is empty (expected a YAML mapping)")
    return _to_python(node, (), located), located


def _to_python(node: yaml.Node, path: tuple, located: Located) -> Any:
    located.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node)
            if key in out:
                raise located.error(path + (key,), "appears twice")
            out[key] = _to_python(value_node, path + (key,), located)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), located) for i, v in enumerate(node.value)]
    return yaml.SafeLoader(" ").construct_object(node)


def build(cls: type, data: Any, path: tuple, located: Located, *, extra_keys: tuple[str, ...] = (),
          built: dict[str, Any] | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``; every error names the field and its line.
    ``built`` holds fields already built by the caller (they are not converted); an unknown
    key lists ``extra_keys`` among the expected ones (keys the caller takes out first)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise located.error(path, f"expected a mapping of {cls.__name__} fields, got {_kind(data)}")
    built = built or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise located.error(
            path + (unknown[0],), f"unknown field; expected one of {sorted(set(fields) | set(extra_keys))}"
        )
    kwargs = dict(built)
    for name, field in fields.items():
        if name in built:
            continue
        if name in data:
            kwargs[name] = convert(hints[name], data[name], path + (name,), located)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise located.error(path + (name,), "is required")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise located.error(path, str(exc)) from None


def convert(tp: Any, value: Any, path: tuple, located: Located) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return convert(option, value, path, located)
            except UserError as exc:
                errors.append(str(exc).split(": ", 2)[-1])
        raise located.error(path, " or ".join(errors))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise located.error(path, f"expected one of {list(allowed)}, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise located.error(path, f"expected one of {[m.value for m in tp]}, got {value!r}") from None
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list):
            value = [value]  # a single value where a list is expected is a list of one
        return tuple(convert(item_type, v, path + (i,), located) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, located)
    if tp is bool:
        if not isinstance(value, bool):
            raise located.error(path, f"expected true or false, got {_kind(value)}")
        return value
    if tp in (int, float):
        return _number(tp, value, path, located)
    if tp is str:
        if not isinstance(value, str):
            raise located.error(path, f"expected a string, got {_kind(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"yamlio cannot convert to {tp!r}")  # a bug in a spec dataclass


def _number(tp: type, value: Any, path: tuple, located: Located) -> int | float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise located.error(path, f"expected a number, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise located.error(path, f"expected a finite number, got {_kind(value)}")
    if tp is int:
        if float(number) != int(number):
            raise located.error(path, f"expected a whole number, got {value!r}")
        return int(number)
    return float(number)


def _kind(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r}"


def to_plain(value: Any) -> Any:
    """A dataclass (or tuple, Enum, …) as JSON-able plain data: the inverse of ``from_plain``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(cls: type, data: dict, source: str = "JSON", **built: Any) -> Any:
    """Dataclass ``cls`` from ``to_plain``'s output (``built``: fields the caller converts)."""
    return build(cls, data, (), Located(source), built=built)
