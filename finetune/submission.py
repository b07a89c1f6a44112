"""Writing outputs atomically: JSON reports, submission files and the submission zip."""

from __future__ import annotations

import datetime as dt
import os
import re
import zipfile
from pathlib import Path

from ckbert.outputs import write_text_atomic


def write_text(path: Path, text: str) -> None:
    """Write via a temporary name and rename, so a crash never leaves a complete-looking file (nor
    the temporary one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def zip_name(name: str, date: dt.date | None = None) -> str:
    """`submit_<name>_<YYYYMMDD>.zip` (clue.md); the name keeps letters, digits, '-' and '_'."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "model"
    return f"submit_{safe}_{(date or dt.date.today()).strftime('%Y%m%d')}.zip"


def write_zip(files: list[Path], out_dir: Path, name: str) -> Path:
    """Zip the prediction files flat (the leaderboard expects them at the archive root)."""
    path = out_dir / zip_name(name)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, arcname=f.name)
    os.replace(tmp, path)
    return path
