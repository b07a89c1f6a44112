"""Kernel tests run the Triton kernels on CPU through the Triton interpreter.

Triton picks interpreter or GPU compilation when a kernel is decorated (`triton.jit` reads
TRITON_INTERPRET at that moment), so the variable is set here, at import time, before the kernel
modules are imported, and the modules are imported right away. The variable is then restored, so that
tests of other stages in the same pytest process keep the default backend ("auto" -> "torch" on a
CPU machine); the autouse fixture below sets it again for each kernel test, which makes
`select_backend` see the interpreter. The backend decision is reset around every test.
"""

import os

import pytest
import torch

_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import ckbert.kernels.add_layernorm_triton  # noqa: F401
    import ckbert.kernels.bias_gelu_triton  # noqa: F401
    import ckbert.kernels.contrastive_triton  # noqa: F401
    import ckbert.kernels.linear_cross_entropy_triton  # noqa: F401
finally:
    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved

from ckbert.kernels.ops import reset_backend  # noqa: E402


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("CKBERT_KERNELS", raising=False)
    reset_backend()
    yield
    reset_backend()


@pytest.fixture
def to_double():
    return _to_double


@pytest.fixture
def assert_close_to_exact():
    return _assert_close_to_exact


def _to_double(*tensors):
    """Leaf fp64 copies (same values) for the exact reference."""
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]


def _assert_close_to_exact(got, ref_lowp, ref_exact, what: str, factor: float = 2.0, ulps: float = 4.0):
    """The kernel may be off the fp64 reference by at most `factor` times the error of the PyTorch
    reference computed in the same dtype, plus `ulps` units in the last place of the largest value.

    Why this bound: the kernels compute in fp32 and round once into the output dtype, while the
    reference rounds after every op in that dtype; so the kernel should be about as close to the
    exact value as the reference is (factor 2 leaves room for a different summation order), and the
    final rounding alone costs half an ulp of each output (the ulps floor covers fp32, where the
    reference error can be near zero for well-conditioned values).
    """
    assert got.shape == ref_exact.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref_exact.shape)}"
    assert got.dtype == ref_lowp.dtype, f"{what}: dtype {got.dtype} != {ref_lowp.dtype}"
    exact = ref_exact.detach().double()
    err = (got.detach().double() - exact).abs().max().item()
    ref_err = (ref_lowp.detach().double() - exact).abs().max().item()
    scale = max(exact.abs().max().item(), 1e-30)
    bound = factor * ref_err + ulps * torch.finfo(got.dtype).eps * scale
    assert err <= bound, f"{what}: max error {err:.3e} > bound {bound:.3e} (reference error {ref_err:.3e})"
