"""No folder of the checkout is imported in place of an installed distribution (docs/contracts.md,
"Import names"): the repository root is on `sys.path` whenever Python starts there (`python -c`,
`python -m pytest`, a notebook), so its folders must never shadow an installed package such as
Hugging Face's `kernels`, which transformers 5.25+ imports.
"""

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix).resolve()  # the venv may live inside the checkout (.venv/)


def _in_checkout(place: str) -> bool:
    p = Path(place).resolve()
    return (p == ROOT or ROOT in p.parents) and not (p == PREFIX or PREFIX in p.parents)

# Run from the repository root with the root first on sys.path, as `python -c` puts it there.
_RESOLVE = r"""
import importlib.metadata as md, importlib.util, json, os, sys
root = os.getcwd()
assert sys.path[0] in ("", root), sys.path[:2]
names = {}
for name, dists in md.packages_distributions().items():
    if not name.isidentifier() or set(dists) == {"ckbert"}:
        continue
    try:
        spec = importlib.util.find_spec(name)
    except Exception as e:  # a package that fails to locate itself is not ours to judge
        continue
    if spec is None:
        continue
    places = [spec.origin or ""] + list(spec.submodule_search_locations or [])
    names[name] = {"dists": sorted(set(dists)), "places": [p for p in places if p]}
print(json.dumps(names))
"""


def _run_from_root(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_no_top_level_name_of_an_installed_distribution_resolves_into_the_checkout():
    proc = _run_from_root(["-c", _RESOLVE])
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert "transformers" in resolved and "torch" in resolved  # the scan saw the installed packages
    shadowed = {
        name: rec for name, rec in resolved.items()
        if any(_in_checkout(p) for p in rec["places"])
    }
    assert not shadowed, f"folders of the checkout shadow installed distributions: {shadowed}"


def test_the_design_card_folders_are_not_regular_packages():
    # a regular package (with __init__.py) wins over any later sys.path entry; a namespace portion
    # never does, so these folders cannot shadow an installed `kernels` / `data_prep` / `finetune`
    for folder in ("ckbert", "kernels", "data_prep", "finetune"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_transformers_hub_kernels_imports_from_the_repository_root():
    try:
        md.distribution("kernels")
    except md.PackageNotFoundError:
        pytest.skip("Hugging Face `kernels` is not installed (transformers < 5.25 does not require it)")
    proc = _run_from_root(["-c", "import kernels, transformers.integrations.hub_kernels; print(kernels.__file__)"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _in_checkout(proc.stdout.strip()), proc.stdout


def test_the_subpackages_import_from_the_repository_root():
    code = ("import ckbert.cli, ckbert.kernels.ops as ops, ckbert.data_prep.prepare, ckbert.finetune.run, "
            "transformers; from transformers import AutoModelForMaskedLM; print(ops.__file__)")
    proc = _run_from_root(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).resolve() == ROOT / "kernels" / "ops.py"


def test_pytest_collects_the_suite_from_the_repository_root():
    proc = _run_from_root(["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "error" not in proc.stdout.lower().splitlines()[-1], proc.stdout[-2000:]
