"""The CPU dropout mask and the attention core with dropout (kernels/dropout.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ckbert.kernels.dropout import keep_scale, quantized_p
from ckbert.kernels.ops import attention, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_mask_rate_values_and_every_lane(p):
    torch.manual_seed(0)
    n = 1 << 20
    keep = keep_scale((n,), p, torch.float32, torch.device("cpu"))
    q = quantized_p(p)
    assert abs(q - p) <= 2**-17
    assert set(keep.unique().tolist()) == {0.0, torch.tensor(1 / (1 - q)).item()}
    sigma = math.sqrt(q * (1 - q) / (n // 4))
    # each of the four 16-bit lanes of a 64-bit draw drops at rate q (none is biased, e.g. a sign bit)
    for lane in range(4):
        rate = (keep[lane::4] == 0).float().mean().item()
        assert abs(rate - q) < 5 * sigma, (lane, rate, q)
    # neighbouring elements (lanes of one draw) are independent: P(both dropped) = q^2
    both = ((keep[0::4] == 0) & (keep[1::4] == 0)).float().mean().item()
    assert abs(both - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (n // 4))


def test_mask_follows_torch_generator_and_shape():
    torch.manual_seed(3)
    a = keep_scale((5, 7, 3), 0.1, torch.bfloat16, torch.device("cpu"))
    b = keep_scale((5, 7, 3), 0.1, torch.bfloat16, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(a, keep_scale((5, 7, 3), 0.1, torch.bfloat16, torch.device("cpu")))
    assert a.shape == (5, 7, 3) and a.dtype == torch.bfloat16
    assert not torch.equal(a, b)


def test_dropout_expectation_and_gradient():
    torch.manual_seed(1)
    x = torch.randn(512, 256, requires_grad=True)
    assert torch.equal(dropout(x, 0.1, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    scale = 1 / (1 - quantized_p(0.1))
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()  # the gradient is the mask: the scale where kept, 0 where dropped
    torch.testing.assert_close(x.grad, kept.float() * scale)
    ones = dropout(torch.ones(1 << 20), 0.1, training=True)
    assert abs(ones.mean().item() - 1.0) < 5 * math.sqrt(0.1 / 0.9 / (1 << 18))  # 2^18 draws
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.0, training=True)


def _reference(q, k, v, mask, keep):
    """softmax(q k^T / sqrt(d), masked) * keep @ v in float64."""
    q, k, v, keep = (t.double() for t in (q, k, v, keep))
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask, float("-inf"))
    return (torch.softmax(s, -1) * keep) @ v


def _qkv(dtype=torch.float32, b=3, heads=4, length=9, d=16):
    torch.manual_seed(2)
    q, k, v = (torch.randn(b, heads, length, d, dtype=dtype) for _ in range(3))
    mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
    mask[0, ..., 5:] = False  # a padded row
    mask[2, ..., 1:] = False  # a row of one token
    return q, k, v, mask


def test_attention_without_dropout_is_sdpa():
    q, k, v, mask = _qkv()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention(q, k, v, mask, 0.1, training=False), expected)
    ones = torch.ones(q.shape[0], q.shape[1], q.shape[2], q.shape[2])
    torch.testing.assert_close(attention(q, k, v, mask, 0.1, True, keep=ones), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_attention_with_a_given_mask_matches_the_definition(dtype, tol):
    q, k, v, mask = _qkv(dtype)
    torch.manual_seed(5)
    keep = keep_scale((3, 4, 9, 9), 0.3, dtype, torch.device("cpu"))
    out = attention(q, k, v, mask, 0.3, True, keep=keep)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask, keep), atol=tol, rtol=tol)


def test_attention_with_dropout_draws_the_cpu_mask_and_backpropagates():
    q, k, v, mask = _qkv()
    q.requires_grad_(True)
    torch.manual_seed(7)
    out = attention(q, k, v, mask, 0.2, training=True)
    torch.manual_seed(7)
    keep = keep_scale((3, 4, 9, 9), 0.2, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask, keep), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
