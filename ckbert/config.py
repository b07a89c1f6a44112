"""Typed configuration: YAML is data, parsed into dataclasses that validate themselves.

`load_dataclass(cls, mapping, source)` builds a (possibly nested) dataclass from a mapping,
rejecting unknown keys and wrong types with a one-line `UserError` that names the file and the
dotted key. Dataclasses may define `validate(self)` for cross-field checks; it is called after
construction. `apply_overrides` applies ``key.sub=value`` strings from the command line (values
parsed as YAML scalars), so the CLI never grows a flag per field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ckbert.errors import UserError

# A decimal number in exponent form without a dot (`5e-4`, `1E+3`), which YAML 1.1 leaves a string.
_FLOAT_TEXT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=path, line=line) from None
    except UnicodeDecodeError:
        raise UserError("config is not valid UTF-8", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("config must be a mapping at the top level", path=path)
    return data


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise UserError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads `5e-4` (no dot) as a string; accept it as the number it spells.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(
            f"unknown config key {prefix}{unknown[0]!s} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _check_type(value, hints[name], key)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise UserError(f"{where or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise UserError(f"{where + ': ' if where else ''}{exc}") from None
    return obj


def load_dataclass(cls: type[T], data: dict[str, Any], source: str | Path | None = None) -> T:
    """Build `cls` from `data`; errors name `source` (a file path) when given."""
    try:
        return _build(cls, data, "")
    except UserError as exc:
        if source is None:
            raise
        raise UserError(str(exc), path=source) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested mapping (values are YAML scalars)."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain data (for checkpoints, manifests and model cards)."""
    return dataclasses.asdict(obj)
