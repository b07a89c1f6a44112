"""bench/gpu_kernels.py stays runnable: its --smoke mode runs every row on CPU (Triton rows in the
interpreter), and without a GPU the full mode stops with a one-line message, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_kernels.py"
OPS = ["post-LN", "pre-LN", "bias+GELU", "MLM head", "contrastive"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("CKBERT_KERNELS", None)
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


@pytest.mark.slow
def test_smoke_mode_prints_every_row(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run("--smoke", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for op in OPS:
        impls = {impl for impl in ("eager", "compile(aot_eager)", "triton") if any(op in ln and impl in ln for ln in lines)}
        assert impls == {"eager", "compile(aot_eager)", "triton"}, (op, proc.stdout)
    for model in ("HF BertForMaskedLM (sdpa)", "ckbert (kernels=torch)", "ckbert (kernels=triton)"):
        assert any(model in ln and "smoke seq 32" in ln for ln in lines), proc.stdout
    assert "skipped" not in proc.stdout
    assert out.read_text().count('"impl"') == 3 * len(OPS) + 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_full_mode_without_gpu_says_so():
    proc = _run(timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
