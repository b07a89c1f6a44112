"""Where commands write their results: checked before the work, written whole or not at all.

The rule for every command that writes results (`finetune`, `clue`, `probe`, `export`, `prepare`,
`demo-data`; docs/contracts.md, "Outputs"):
- `--out` is checked before any work starts: a non-empty folder (for a file output, an existing
  file) is refused unless `--overwrite` is given; a folder where a file is expected (or the
  reverse) and a parent that cannot be written are refused too;
- results are built in a hidden sibling (`.NAME.tmp-PID`) and moved into place only when complete,
  so a failed or interrupted run never leaves a half-written `--out`, and an earlier result is
  replaced whole, never mixed with new files;
- files and folders get the modes the umask gives (libraries such as safetensors write 0600, and
  `tempfile.mkdtemp` makes 0700 folders).

Standard library and `ckbert.errors` only, so `data_prep` may use it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ckbert.errors import UserError

OVERWRITE_HINT = "pass --overwrite to replace it, or choose a new --out"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _writable_ancestor(path: Path) -> Path:
    """The nearest existing folder above `path` (where a missing parent would be created)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def _check_parent(out: Path, make_parents: bool) -> None:
    parent = out.absolute().parent
    if not parent.exists() and not make_parents:
        raise UserError("the output's parent folder does not exist", path=out)
    ancestor = _writable_ancestor(out)
    if not ancestor.is_dir():
        raise UserError(f"cannot create the output: {ancestor} is not a folder", path=out)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the output: {ancestor} is not writable", path=out)


def check_out_dir(out: Path, overwrite: bool, make_parents: bool = True) -> None:
    """A one-line error, before any work, when `out` cannot take this command's result folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder is not empty (an earlier result?); {OVERWRITE_HINT}", path=out)
    _check_parent(out, make_parents)
    if out.is_dir() and not os.access(out.absolute().parent, os.W_OK | os.X_OK):
        raise UserError("cannot replace the output folder: its parent is not writable", path=out)


def check_out_file(out: Path, overwrite: bool) -> None:
    """The same for a result written as one file."""
    out = Path(out)
    if out.is_dir():
        raise UserError("output path is a folder; give a file path (e.g. FOLDER/report.json)", path=out)
    if out.exists() and not overwrite:
        raise UserError(f"output file exists; {OVERWRITE_HINT}", path=out)
    _check_parent(out, make_parents=True)


def apply_umask(root: Path) -> None:
    """Give `root` and everything under it the modes a plain open()/mkdir() would (0666/0777 less
    the umask), keeping execute bits of files that have them."""
    mask = _umask()
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = 0o777 if os.stat(path).st_mode & stat.S_IXUSR else 0o666
            os.chmod(path, mode & ~mask)


def staging_dir(out: Path) -> Path:
    """A fresh hidden sibling of `out` to build the result in (parents created)."""
    out = Path(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = out.absolute().parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` into place as `out`, replacing an earlier `out` whole (the caller
    checked --overwrite). An existing `out` keeps its mode; everything else follows the umask."""
    out = Path(out)
    apply_umask(tmp)
    old = None
    if out.is_dir():
        os.chmod(tmp, stat.S_IMODE(out.stat().st_mode))
        old = out.absolute().parent / f".{out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None and old.is_symlink():  # --out was a link to a folder: the link goes, not its target
        old.unlink()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def output_dir(out: Path, overwrite: bool, keep_partial: bool = False) -> Iterator[Path]:
    """Check `out`, yield a staging folder to write into, and put it in place when the body ends
    without an exception. On failure the staging folder is removed (`keep_partial`: kept, and the
    exception's message is not changed; the caller may name it)."""
    check_out_dir(out, overwrite)
    tmp = staging_dir(out)
    try:
        yield tmp
    except BaseException:
        if not keep_partial:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, out)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a hidden temporary file and rename; nothing is left behind on failure."""
    path = Path(path)
    tmp = path.absolute().parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """`data` as indented UTF-8 JSON, written atomically (`write_text_atomic`); parent folders made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
