"""Typed configuration: YAML is data, parsed into dataclasses that validate themselves.

`load_dataclass(cls, mapping, source)` builds a (possibly nested) dataclass from a mapping,
rejecting unknown keys and wrong types with a one-line `UserError` that names the file and the
dotted key. Dataclasses may define `validate(self)` for cross-field checks; it is called after
construction. `apply_overrides` applies ``key.sub=value`` strings from the command line (values
parsed as YAML scalars), so the CLI never grows a flag per field; an error about a key an override
set names the override, not the file. `read_json` reads a JSON file or raises a one-line
`UserError`; `check_number` checks a numeric command-line argument (finite, in range).
"""

from __future__ import annotations

import dataclasses
import json
import math
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


def read_json(path: str | Path, what: str, *, require_object: bool = True) -> Any:
    """A JSON file's content, or a one-line `UserError` naming the file and saying why not.

    `what` names the file for the user ("manifest", "trainer state"); by default the top level
    must be a JSON object (a dict)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found" + (" (a folder)" if path.is_dir() else ""), path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} is not valid UTF-8", path=path) from None
    except OSError as exc:
        raise UserError(f"cannot read the {what} ({exc.strerror or exc})", path=path) from None
    if not text.strip():
        raise UserError(f"{what} is empty (half written?)", path=path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not valid JSON ({exc.msg}, column {exc.colno})", path=path,
                        line=exc.lineno) from None
    if require_object and not isinstance(data, dict):
        raise UserError(f"{what} must be a JSON object, got {type(data).__name__}", path=path)
    return data


def check_number(flag: str, value: float | int | None, low: float | None = None,
                 high: float | None = None) -> None:
    """A one-line `UserError` unless `value` (a command-line number; None = not given) is finite and
    within [low, high]."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}")
    if low is not None and value < low:
        raise UserError(f"{flag} must be >= {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UserError(f"{flag} must be <= {high:g}, got {value:g}")


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
        raise _KeyError(where, f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise _KeyError(where, f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _KeyError(where, f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _KeyError(where, f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _KeyError(where, f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _KeyError(where, f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads `5e-4` (no dot) as a string; accept it as the number it spells.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _KeyError(where, f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise _KeyError(where, f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _KeyError(where, f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _KeyError(where, f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _KeyError(where, f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _KeyError(where, f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise _KeyError(
            f"{prefix}{unknown[0]!s}", unknown=True, message=f"unknown config key {prefix}{unknown[0]!s} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _check_type(value, hints[name], key)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise _KeyError(where, f"{where or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise _KeyError(where, f"{where + ': ' if where else ''}{exc}") from None
    return obj


class _KeyError(UserError):
    """A config error about one dotted key ('' = the whole config), so that `load_dataclass` can
    blame the command-line override that set it rather than the file."""

    def __init__(self, key: str, message: str, unknown: bool = False):
        super().__init__(message)
        self.key = key
        self.unknown = unknown  # the key is not a field: whatever override lies inside it added it


class _Overridden(dict):
    """The mapping `apply_overrides` returns: remembers which dotted keys the command line set."""

    overrides: dict[str, str]


def _blame(overrides: dict[str, str], exc: _KeyError) -> tuple[list[str], bool]:
    """The overrides behind an error about `exc.key` ('' = a check of the whole config), and whether
    they are surely to blame: one set the key (or a section above it, or something inside an
    unknown key), or a cross-field check names the key one set. Otherwise every override inside
    the key, as a possible cause."""
    key, message = exc.key, str(exc)
    inside = [(k, item) for k, item in overrides.items()
              if not key or k == key or key.startswith(k + ".") or k.startswith(key + ".")]
    exact = [item for k, item in inside if k == key or key.startswith(k + ".") or exc.unknown]
    if exact:
        return exact, True
    named = [item for k, item in inside if re.search(rf"(?<![\w.]){re.escape(k.rsplit('.', 1)[-1])}\b", message)]
    if named:
        return named, True
    return [item for _, item in inside], False


def load_dataclass(cls: type[T], data: dict[str, Any], source: str | Path | None = None) -> T:
    """Build `cls` from `data`; errors name `source` (a file path) when given, or the command-line
    override (`apply_overrides`) that set the offending key."""
    try:
        return _build(cls, data, "")
    except _KeyError as exc:
        items, sure = _blame(getattr(data, "overrides", {}), exc)
        if items and sure:
            which = "override" if len(items) == 1 else "overrides"
            raise UserError(f"command-line {which} {', '.join(map(repr, items))}: {exc}") from None
        if items:  # a cross-field check: the file and the overrides together
            raise UserError(f"{exc} (with the command-line overrides {' '.join(items)})",
                            path=source) from None
        if source is None:
            raise UserError(str(exc)) from None
        raise UserError(str(exc), path=source) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested mapping (values are YAML scalars)."""
    out = _Overridden(_deepcopy(data))
    out.overrides = dict(getattr(data, "overrides", {}))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: the value is not a YAML scalar or list "
                            f"({getattr(exc, 'problem', None) or 'invalid YAML'})") from None
        out.overrides[key] = item
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
