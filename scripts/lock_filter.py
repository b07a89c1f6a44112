"""Print requirements.lock without the entries of packages that an installed torch requires (and
read a lock's pins: `pinned`, for scripts/forward_check.sh and the tests).

scripts/setup_env.sh installs the lock with `pip install --no-deps --require-hashes`. When the venv
held a torch before the script ran (a GPU user's own build), the packages that torch requires and
that are installed (a CUDA build's pinned triton, its nvidia-* libraries, sympy, ...) are kept as
they are: their lock entries are left out. Usage: `python scripts/lock_filter.py LOCK [--keep-torch-deps]`.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(text: str) -> dict[str, str]:
    """Canonical name -> pinned version of every entry of a lock's text."""
    return {canonical(n): v for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==([^\s\\]+)", text, re.M)}


def torch_requirements_installed() -> set[str]:
    """Canonical names of the installed distributions that the installed torch requires."""
    out = set()
    for req in md.requires("torch") or []:
        name = canonical(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            continue
        out.add(name)
    return out


def filter_lock(text: str, drop: set[str]) -> tuple[str, list[str]]:
    """(the lock without the entries of `drop` (canonical names), the names dropped). An entry is its
    `name==version \\` line and the indented hash and comment lines after it."""
    kept, dropped, skip = [], [], False
    for line in text.splitlines(keepends=True):
        if line[:1].isalnum():
            name = canonical(line.split("==", 1)[0].strip())
            skip = name in drop
            if skip:
                dropped.append(name)
        if not skip:
            kept.append(line)
    return "".join(kept), dropped


def main(argv: list[str]) -> int:
    lock = argv[0]
    drop = torch_requirements_installed() if "--keep-torch-deps" in argv[1:] else set()
    with open(lock, encoding="utf-8") as f:
        text, dropped = filter_lock(f.read(), drop)
    for name in dropped:
        print(f"[setup] keeping the installed {name} (required by the venv's own torch)", file=sys.stderr)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
