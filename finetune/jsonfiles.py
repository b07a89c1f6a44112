"""Reading the official CLUE files: JSON Lines and whole-file JSON, with errors that name file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckbert.errors import UserError


def find_file(data_dir: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of `names` that exists in `data_dir` (CLUE renamed some test files between releases)."""
    for name in names:
        path = data_dir / name
        if path.is_file():
            return path
    raise UserError(f"{what} file not found (looked for {', '.join(names)})", path=data_dir)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line."""
    if not path.is_file():
        raise UserError("file not found", path=path)
    with path.open(encoding="utf-8") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"invalid JSON: {exc.msg}", path=path, line=lineno) from None
                if not isinstance(obj, dict):
                    raise UserError("expected a JSON object on each line", path=path, line=lineno)
                yield lineno, obj
        except UnicodeDecodeError:
            raise UserError("invalid UTF-8", path=path) from None


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path, line: int | None) -> Any:
    """obj[name], checked for presence and type, or a one-line UserError."""
    if name not in obj:
        raise UserError(f"missing field {name!r}", path=path, line=line)
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in (
        kind if isinstance(kind, tuple) else (kind,)
    ):
        raise UserError(f"field {name!r} has the wrong type ({type(value).__name__})", path=path, line=line)
    return value
