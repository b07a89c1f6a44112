"""The committed lock (requirements.lock, scripts/lock.sh) matches pyproject.toml, and setup_env's
filter keeps a user's own torch requirements (scripts/lock_filter.py)."""

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the lock is resolved for 3.11)

ROOT = Path(__file__).resolve().parents[1]
LOCK = (ROOT / "requirements.lock").read_text(encoding="utf-8")


def lock_filter():
    spec = importlib.util.spec_from_file_location("lock_filter", ROOT / "scripts" / "lock_filter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins() -> dict[str, str]:
    return lock_filter().pinned(LOCK)


def canonical(name: str) -> str:
    return lock_filter().canonical(name)


def test_every_declared_dependency_is_pinned_in_the_lock_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    locked = pins()
    for text in declared:
        req = Requirement(text)
        if canonical(req.name) == "torch":
            continue  # installed apart: the machine's, the user's, or 2.13.0 (scripts/setup_env.sh)
        assert canonical(req.name) in locked, f"{req.name} is declared in pyproject.toml but not in requirements.lock " \
                                              "(run scripts/lock.sh)"
        assert req.specifier.contains(locked[canonical(req.name)], prereleases=True), (text, locked[canonical(req.name)])


def test_the_lock_pins_hashes_and_leaves_torch_and_cuda_packages_out():
    entries = re.split(r"^(?=[A-Za-z0-9])", LOCK, flags=re.M)[1:]
    assert len(entries) == len(pins()) > 50
    assert all("--hash=sha256:" in e for e in entries)
    assert "torch" not in pins() and not [n for n in pins() if n.startswith("nvidia-")]
    assert "scikit-learn" not in pins()  # declared once, never imported: dropped


def test_the_filter_drops_whole_entries_and_keeps_the_rest():
    mod = lock_filter()
    text, dropped = mod.filter_lock(LOCK, {"triton", "sympy"})
    assert sorted(dropped) == ["sympy", "triton"]
    assert set(mod.pinned(text)) == set(pins()) - {"triton", "sympy"}
    assert "triton==" not in text and all(line.startswith(("    ", "#")) or "==" in line or not line.strip()
                                          for line in text.splitlines())
    assert mod.filter_lock(LOCK, set()) == (LOCK, [])
    assert "sympy" in mod.torch_requirements_installed()  # the installed torch requires it
