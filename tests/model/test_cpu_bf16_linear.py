"""`ckbert.kernels.linear`: F.linear, with bf16 GEMMs on CPU in faster operand layouts (same precision)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ckbert.kernels.ops import CPU_BF16_GEMM_IS_FALLBACK, linear, linear_cross_entropy

# Where oneDNN runs bf16 GEMMs, `linear` is plain F.linear for every dtype.
EXPECT_LAYOUT_PATH = CPU_BF16_GEMM_IS_FALLBACK


def _layout_path_ran(y: torch.Tensor) -> bool:
    fn = y.grad_fn
    if type(fn).__name__ == "ViewBackward0":  # [..., N] outputs are a view of the [T, N] result
        fn = fn.next_functions[0][0]
    return type(fn).__name__ == "_CpuBf16LinearBackward"


def _inputs(shape_x, n_out, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape_x, generator=g).requires_grad_()
    w = (0.1 * torch.randn(n_out, shape_x[-1], generator=g)).requires_grad_()
    b = torch.randn(n_out, generator=g).requires_grad_()
    return x, w, b


def _run(fn, x, w, b, use_bias, grad_seed=1):
    for t in (x, w, b):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(x, w, b if use_bias else None)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y.dtype)
    y.backward(g)
    return y.detach(), x.grad.clone(), w.grad.clone(), (b.grad.clone() if use_bias else None), y


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape_x", [(37, 24), (3, 11, 24)])
def test_matches_f_linear_under_bf16_autocast(shape_x, use_bias):
    x, w, b = _inputs(shape_x, 40)
    ref = _run(F.linear, x, w, b, use_bias)
    ours = _run(linear, x, w, b, use_bias)
    assert _layout_path_ran(ours[4]) == EXPECT_LAYOUT_PATH
    assert ours[0].dtype == ref[0].dtype == torch.bfloat16 and ours[0].shape == ref[0].shape
    # bf16 output: a different summation order may flip the last bit (relative 2**-8)
    for got, want in zip(ours[:4], ref[:4], strict=True):
        if want is None:
            assert got is None
            continue
        assert got.dtype == want.dtype
        scale = want.float().abs().max()
        assert (got.float() - want.float()).abs().max() <= 2**-7 * scale


def test_bf16_tensors_without_autocast():
    x, w, b = (t.detach().bfloat16().requires_grad_() for t in _inputs((9, 16), 8))
    y = linear(x, w, b)
    ref = F.linear(x.detach(), w.detach(), b.detach())
    assert _layout_path_ran(y) == EXPECT_LAYOUT_PATH
    torch.testing.assert_close(y.detach().float(), ref.float(), rtol=2**-7, atol=2**-7)


def test_fp32_is_plain_f_linear():
    x, w, b = _inputs((5, 7, 12), 6)
    y = linear(x, w, b)
    assert torch.equal(y, F.linear(x, w, b))
    assert not _layout_path_ran(y)


def test_decoder_cross_entropy_bf16_matches_reference():
    from ckbert.kernels import ops

    x, w, b = _inputs((12, 16), 50)
    labels = torch.tensor([3, -100, 7, 49, 0, 1, 2, 3, -100, 5, 6, 8])
    losses, grads = [], []
    for fn in (lambda: ops.linear_cross_entropy_reference(x, w, b, labels, label_smoothing=0.1),
               lambda: linear_cross_entropy(x, w, b, labels, label_smoothing=0.1, backend="torch")):
        for t in (x, w, b):
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn()
        loss.backward()
        losses.append(loss.detach())
        grads.append([t.grad.clone() for t in (x, w, b)])
    assert losses[1].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-2, atol=1e-3)
    for got, want in zip(*grads, strict=True):
        assert (got - want).abs().max() <= 2**-6 * want.abs().max()
