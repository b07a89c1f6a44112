"""Backend selection: one decision per process, logged, overridable, never a silent fallback."""

import logging

import pytest
import torch

from ckbert.kernels.backend import check_device
from ckbert.kernels.ops import bias_gelu, reset_backend, select_backend


def test_auto_picks_triton_under_the_interpreter_and_logs_once(caplog):
    with caplog.at_level(logging.INFO, logger="ckbert.kernels.backend"):
        assert select_backend() == "triton"
        assert select_backend() == "triton"
        assert select_backend("auto") == "triton"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "backend triton (Triton interpreter, CPU)" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rule")
def test_auto_is_torch_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert select_backend("auto") == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rule")
def test_requesting_triton_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="'triton' was requested .*no CUDA device"):
        select_backend("triton")
    monkeypatch.setenv("CKBERT_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="environment CKBERT_KERNELS"):
        select_backend()
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="cannot run"):
        bias_gelu(x, torch.zeros(3), backend="triton")  # a per-call request is checked too


def test_environment_and_config_override(monkeypatch):
    monkeypatch.setenv("CKBERT_KERNELS", "torch")
    assert select_backend() == "torch"
    reset_backend()
    assert select_backend("triton") == "triton"  # the config wins over the environment


def test_decision_is_made_once_per_process():
    assert select_backend("torch") == "torch"
    assert select_backend() == "torch"
    with pytest.raises(RuntimeError, match="already set to 'torch'"):
        select_backend("triton")


def test_invalid_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        select_backend("cuda")
    monkeypatch.setenv("CKBERT_KERNELS", "fast")
    with pytest.raises(ValueError, match="environment CKBERT_KERNELS"):
        select_backend()
    with pytest.raises(ValueError, match="one of"):
        bias_gelu(torch.randn(2, 3), torch.zeros(3), backend="auto")


def test_ops_follow_the_process_decision(monkeypatch):
    """backend=None uses select_backend(): with "torch" chosen the op is the reference itself."""
    select_backend("torch")
    monkeypatch.delenv("TRITON_INTERPRET")  # a Triton launch would now fail the device check
    x, b = torch.randn(3, 5), torch.randn(5)
    torch.testing.assert_close(bias_gelu(x, b), torch.nn.functional.gelu(x + b), rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rule")
def test_device_check_names_the_problem(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        check_device(torch.zeros(1))
