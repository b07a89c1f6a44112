"""Fused residual (+ bias + dropout) + LayerNorm: Triton (interpreter) against the PyTorch reference."""

import pytest
import torch

from ckbert.kernels.add_layernorm_triton import dropout_keep_mask
from ckbert.kernels.ops import add_layernorm, add_layernorm_reference, bias_dropout_add_layernorm

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]

    def leaf(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(dtype).requires_grad_()

    x, residual = leaf(*shape), leaf(*shape, scale=2.0)
    bias = leaf(n, scale=0.5) if with_bias else None
    return x, bias, residual, leaf(n, scale=0.2, shift=1.0), leaf(n, scale=0.2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (7, 768), (3, 1023), (2, 3, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_post_ln_forward_and_gradients(shape, dtype, with_bias, assert_close_to_exact, to_double):
    x, bias, r, w, lb = _inputs(shape, dtype, with_bias)
    eps = 1e-12
    y = bias_dropout_add_layernorm(x, bias, r, w, lb, eps, 0.1, False, backend="triton")
    y_ref, _ = add_layernorm_reference(x, bias, r, w, lb, eps)
    exact = to_double(x, bias, r, w, lb)
    y_exact, _ = add_layernorm_reference(*exact, eps)
    assert_close_to_exact(y, y_ref, y_exact, "y")

    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    leaves = [t for t in (x, bias, r, w, lb) if t is not None]
    exact_leaves = [t for t in exact if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy)
    grads_exact = torch.autograd.grad(y_exact, exact_leaves, dy.double())
    names = ["dx", "dbias", "dresidual", "dweight", "dln_bias"] if with_bias else ["dx", "dresidual", "dweight", "dln_bias"]
    for name, got, ref, ex in zip(names, grads, grads_ref, grads_exact, strict=True):
        assert_close_to_exact(got, ref, ex, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 7), (7, 1023)])
def test_pre_ln_returns_residual_and_takes_its_gradient(shape, dtype, assert_close_to_exact, to_double):
    """Both outputs are used downstream in the pre-LN layout: y feeds the next sublayer and
    new_residual is carried; the backward must add the residual stream's gradient."""
    x, _, r, w, lb = _inputs(shape, dtype, with_bias=False, seed=3)
    y, h = add_layernorm(x, r, w, lb, 1e-5, backend="triton")
    y_ref, h_ref = add_layernorm_reference(x, None, r, w, lb, 1e-5)
    xe, _, re_, we, lbe = to_double(x, None, r, w, lb)
    y_ex, h_ex = add_layernorm_reference(xe, None, re_, we, lbe, 1e-5)
    assert_close_to_exact(y, y_ref, y_ex, "y")
    assert_close_to_exact(h, h_ref, h_ex, "new_residual")
    g = torch.Generator().manual_seed(4)
    dy, dh = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    got = torch.autograd.grad((y, h), (x, r, w, lb), (dy, dh))
    ref = torch.autograd.grad((y_ref, h_ref), (x, r, w, lb), (dy, dh))
    ex = torch.autograd.grad((y_ex, h_ex), (xe, re_, we, lbe), (dy.double(), dh.double()))
    for name, a, b, c in zip(["dx", "dresidual", "dweight", "dln_bias"], got, ref, ex, strict=True):
        assert_close_to_exact(a, b, c, name)


def test_column_sums_across_many_programs():
    """rows_per_program=2 on 7 rows: 4 programs each write partial dweight/dbias sums (and the last
    tile is half masked); the total must match the single-program result."""
    x, bias, r, w, lb = _inputs((7, 96), torch.float32, with_bias=True, seed=5)
    dy = torch.randn(7, 96, generator=torch.Generator().manual_seed(6))
    outs = []
    for rows in (2, 0):
        y = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, 0.0, True, backend="triton", rows_per_program=rows)
        outs.append([y, *torch.autograd.grad(y, (x, bias, r, w, lb), dy)])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # same math, fp32 sums in another order


def test_mixed_dtypes_follow_type_promotion():
    """Under autocast the matmul output x is bf16 while bias, residual and LayerNorm parameters may be
    fp32: the output takes the promoted dtype (as the reference) and each gradient its input's dtype."""
    x, _, _, _, _ = _inputs((5, 40), torch.bfloat16, with_bias=False)
    _, bias, r, w, lb = _inputs((5, 40), torch.float32, with_bias=True)
    y = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, 0.0, False, backend="triton")
    y_ref, _ = add_layernorm_reference(x, bias, r, w, lb, 1e-5)
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)  # both fp32 compute on the same bf16 x
    grads = torch.autograd.grad(y.sum(), (x, bias, r, w, lb))
    assert [t.dtype for t in grads] == [torch.bfloat16] + [torch.float32] * 4


P = 0.3


def test_dropout_mask_statistics_and_determinism():
    seed = torch.tensor([20261128])
    keep = dropout_keep_mask(seed, 64, 1023, P)
    n = keep.numel()
    # Kept fraction ~ Binomial(n, 1 - p) / n: 6 standard deviations make a false failure negligible.
    sigma = (P * (1 - P) / n) ** 0.5
    assert abs(keep.float().mean().item() - (1 - P)) < 6 * sigma
    # No structure along rows or columns (a broken offset would repeat one row's mask).
    assert not torch.equal(keep[0], keep[1]) and not torch.equal(keep[:, 0], keep[:, 1])
    assert torch.equal(keep, dropout_keep_mask(seed, 64, 1023, P))
    assert not torch.equal(keep, dropout_keep_mask(seed + 1, 64, 1023, P))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dropout_forward_and_backward_use_the_same_mask(dtype, assert_close_to_exact, to_double):
    """The forward equals the reference fed with the mask drawn for the seed; so do all gradients,
    which the backward regenerates from the seed: any other mask would change dx and dbias."""
    shape = (7, 130)
    x, bias, r, w, lb = _inputs(shape, dtype, with_bias=True, seed=7)
    seed = torch.tensor([12345])
    keep = dropout_keep_mask(seed, 7, 130, P)
    y = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, P, True, backend="triton", seed=seed)
    y_ref, _ = add_layernorm_reference(x, bias, r, w, lb, 1e-5, P, True, keep=keep)
    exact = to_double(x, bias, r, w, lb)
    y_ex, _ = add_layernorm_reference(*exact, 1e-5, P, True, keep=keep)
    assert_close_to_exact(y, y_ref, y_ex, "y")
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(8)).to(dtype)
    got = torch.autograd.grad(y, (x, bias, r, w, lb), dy)
    ref = torch.autograd.grad(y_ref, (x, bias, r, w, lb), dy)
    ex = torch.autograd.grad(y_ex, exact, dy.double())
    for name, a, b, c in zip(["dx", "dbias", "dresidual", "dweight", "dln_bias"], got, ref, ex, strict=True):
        assert_close_to_exact(a, b, c, name)
    assert torch.equal(got[0] == 0, ~keep | (got[2] == 0))  # dx is zero exactly where dropped


def test_dropout_seed_from_torch_generator_and_eval_is_exact():
    x, bias, r, w, lb = _inputs((4, 33), torch.float32, with_bias=True)
    torch.manual_seed(0)
    a = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, P, True, backend="triton")
    torch.manual_seed(0)
    b = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, P, True, backend="triton")
    c = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, P, True, backend="triton")
    assert torch.equal(a, b) and not torch.equal(a, c)
    # training=False and p=0 are both "no dropout" and must be bit-identical to each other.
    ev = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, P, False, backend="triton")
    p0 = bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, 0.0, True, backend="triton")
    assert torch.equal(ev, p0)


def test_bad_arguments():
    x, bias, r, w, lb = _inputs((2, 8), torch.float32, with_bias=True)
    with pytest.raises(ValueError, match="dropout probability"):
        bias_dropout_add_layernorm(x, bias, r, w, lb, 1e-5, 1.0, True, backend="triton")
    with pytest.raises(ValueError, match="same shape"):
        bias_dropout_add_layernorm(x, bias, r[:1], w, lb, 1e-5, 0.1, True, backend="triton")
