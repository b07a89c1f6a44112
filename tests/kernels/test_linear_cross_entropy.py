"""Chunked linear + cross-entropy: Triton (interpreter) against the full-logits PyTorch reference."""

import pytest
import torch

from ckbert.kernels.linear_cross_entropy_triton import default_chunk_size, linear_cross_entropy_fwd
from ckbert.kernels.ops import linear_cross_entropy, linear_cross_entropy_reference


def _inputs(m, h, v, dtype, with_bias, ignore_every, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype).requires_grad_()
    bias = (torch.randn(v, generator=g) * 0.1).to(dtype).requires_grad_() if with_bias else None
    labels = torch.randint(0, v, (m,), generator=g)
    if ignore_every:
        labels[::ignore_every] = -100
    return hidden, weight, bias, labels


CASES = [
    # (M, H, V, chunk): single row and single class; chunks that do not divide M; one chunk; V odd
    (1, 7, 1, None),
    (7, 24, 1000, 3),
    (9, 16, 1023, 4),
    (13, 7, 37, None),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,h,v,chunk", CASES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_loss_and_gradients(m, h, v, chunk, dtype, smoothing, with_bias, assert_close_to_exact, to_double):
    hidden, weight, bias, labels = _inputs(m, h, v, dtype, with_bias, ignore_every=3 if m > 1 else 0)
    loss = linear_cross_entropy(hidden, weight, bias, labels, label_smoothing=smoothing, chunk_size=chunk,
                                backend="triton")
    loss_ref = linear_cross_entropy_reference(hidden, weight, bias, labels, label_smoothing=smoothing)
    ex = to_double(hidden, weight, bias)
    loss_ex = linear_cross_entropy_reference(*ex, labels, label_smoothing=smoothing)
    assert_close_to_exact(loss, loss_ref, loss_ex, "loss")
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    leaves_ex = [t for t in ex if t is not None]
    # A grad_output other than 1 checks that the backward scales the stored gradients.
    got = torch.autograd.grad(loss * 2.5, leaves)
    ref = torch.autograd.grad(loss_ref * 2.5, leaves)
    exact = torch.autograd.grad(loss_ex * 2.5, leaves_ex)
    for name, a, b, c in zip(["dhidden", "dweight", "dbias"], got, ref, exact, strict=False):
        # dhidden = dlogits @ weight sums V products: the kernel's dlogits (online softmax, its own
        # rounding) and the GEMM's blocking (which depends on the BLAS thread count) differ from the
        # reference's, and such rounding differences grow like sqrt(V) ulps in a length-V fp32 sum.
        # The reference's own error can be luckily small, so the ulps floor scales with sqrt(V).
        ulps = 4.0 * max(1.0, v**0.5) if name == "dhidden" else 4.0
        assert_close_to_exact(a, b, c, name, ulps=ulps)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bf16(smoothing, assert_close_to_exact, to_double):
    """bf16 logits loaded and reduced in fp32 by the kernel; one shape keeps the interpreter time low."""
    hidden, weight, bias, labels = _inputs(7, 24, 1000, torch.bfloat16, True, ignore_every=3)
    loss = linear_cross_entropy(hidden, weight, bias, labels, label_smoothing=smoothing, chunk_size=3,
                                backend="triton")
    loss_ref = linear_cross_entropy_reference(hidden, weight, bias, labels, label_smoothing=smoothing)
    ex = to_double(hidden, weight, bias)
    loss_ex = linear_cross_entropy_reference(*ex, labels, label_smoothing=smoothing)
    assert_close_to_exact(loss, loss_ref, loss_ex, "loss")
    got = torch.autograd.grad(loss, (hidden, weight, bias))
    ref = torch.autograd.grad(loss_ref, (hidden, weight, bias))
    exact = torch.autograd.grad(loss_ex, ex)
    for name, a, b, c in zip(["dhidden", "dweight", "dbias"], got, ref, exact, strict=True):
        assert_close_to_exact(a, b, c, name)


def test_ignored_rows_get_no_gradient_and_do_not_count():
    hidden, weight, bias, labels = _inputs(6, 8, 50, torch.float32, True, ignore_every=0)
    labels[1] = labels[4] = -100
    loss = linear_cross_entropy(hidden, weight, bias, labels, chunk_size=4, backend="triton")
    (dh,) = torch.autograd.grad(loss, (hidden,))
    assert torch.all(dh[[1, 4]] == 0) and torch.all(dh[[0, 2, 3, 5]].abs().sum(1) > 0)
    keep = labels != -100
    kept = linear_cross_entropy(hidden[keep], weight, bias, labels[keep], backend="triton")
    torch.testing.assert_close(loss, kept, rtol=1e-6, atol=0)  # mean over the 4 counted rows only


def test_custom_ignore_index_and_autocast_dtype():
    hidden, weight, bias, labels = _inputs(5, 8, 30, torch.float32, True, ignore_every=2)
    labels[labels == -100] = 7
    loss = linear_cross_entropy(hidden, weight, bias, labels, ignore_index=7, backend="triton")
    ref = linear_cross_entropy_reference(hidden, weight, bias, labels, ignore_index=7)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    # Under autocast the GEMMs run in the autocast dtype, as F.linear would; gradients reach the
    # fp32 leaves in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, bias, labels, ignore_index=7, backend="triton")
        ref = linear_cross_entropy_reference(hidden, weight, bias, labels, ignore_index=7)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)  # both from bf16 logits (8-bit mantissa)
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    assert all(g.dtype == torch.float32 for g in grads)


def test_default_chunk_size():
    # MLM at base scale: 2458 masked rows, H 768, V 21128: 8M-logit floor -> 397 rows -> 512 per chunk
    # (5 chunks, 22 MB of bf16 logits each) instead of all 2458 x V at once.
    assert default_chunk_size(2458, 768, 21128) == 512
    assert default_chunk_size(1, 768, 21128) == 1
    assert default_chunk_size(100, 1024, 512) == 128  # small V: everything in one chunk
    # Many rows: logits chunk about the size of hidden: 65536 * 1024 / 21128 = 3177 rows -> 4096.
    assert default_chunk_size(65536, 1024, 21128) == 4096


def test_bad_shapes():
    hidden, weight, bias, labels = _inputs(4, 8, 10, torch.float32, True, 0)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(hidden, weight, bias, labels[:3], backend="triton")
    with pytest.raises(ValueError, match="hidden"):
        linear_cross_entropy(hidden, weight[:, :4], bias, labels, backend="triton")


def test_gpu_tiling_one_row_per_program_matches():
    """On a GPU the kernel runs one row per program; the interpreter default packs many rows into a
    program. Both tilings must give the same loss and gradients."""
    hidden, weight, bias, labels = _inputs(7, 16, 300, torch.float32, True, ignore_every=3)
    h, w, b = hidden.detach(), weight.detach(), bias.detach()
    one = linear_cross_entropy_fwd(h, w, b, labels, -100, 0.1, 4, rows_per_program=1)
    packed = linear_cross_entropy_fwd(h, w, b, labels, -100, 0.1, 4)
    for a, c in zip(one, packed, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)  # same arithmetic per row
