"""Triton kernels and launchers for bias + GELU (exact erf form and tanh form), fwd and bwd.

Elementwise over the flattened [M, N] activations; the bias is broadcast along the last dim
(column = flat index % N). Compute is fp32 for every storage dtype.
"""

import torch
import triton
import triton.language as tl

from .backend import check_device, interpreter_on

_SQRT_1_2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1/sqrt(2*pi)
_SQRT_2_PI = tl.constexpr(0.7978845608028654)  # sqrt(2/pi)
_TANH_C = tl.constexpr(0.044715)


@triton.jit
def _gelu_and_grad(z, APPROX_TANH: tl.constexpr, NEED_GRAD: tl.constexpr):
    if APPROX_TANH:
        # tanh(u) and 1 - tanh(u)^2 from e = exp(-2|u|) <= 1: no overflow, and no cancellation in
        # 1 - t*t where t -> +-1 (that form failed the fp32 gradient test at |z| ~ 10).
        u = _SQRT_2_PI * (z + _TANH_C * z * z * z)
        e = tl.exp(-2.0 * tl.abs(u))
        t = tl.where(u >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)
        y = 0.5 * z * (1.0 + t)
        if NEED_GRAD:
            sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e))
            g = 0.5 * (1.0 + t) + 0.5 * z * sech2 * _SQRT_2_PI * (1.0 + 3.0 * _TANH_C * z * z)
        else:
            g = y
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(z * _SQRT_1_2))
        y = z * cdf
        if NEED_GRAD:
            g = cdf + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
        else:
            g = y
    return y, g


@triton.jit
def _fwd_kernel(X, B, Y, total, N, APPROX_TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
    y, _ = _gelu_and_grad(z, APPROX_TANH, False)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(DY, X, B, DX, total, N, APPROX_TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
    _, g = _gelu_and_grad(z, APPROX_TANH, True)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + offs, (dy * g).to(DX.dtype.element_ty), mask=mask)


def _block() -> int:
    return 65536 if interpreter_on() else 2048


def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """x [M, N] contiguous, bias [N] -> gelu(x + bias) [M, N] in out_dtype."""
    check_device(x, bias)
    y = torch.empty_like(x, dtype=out_dtype)
    total, block = x.numel(), _block()
    _fwd_kernel[(triton.cdiv(total, block),)](x, bias, y, total, x.shape[-1], APPROX_TANH=approx_tanh,
                                              BLOCK=block, num_warps=8)
    return y


def bias_gelu_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool) -> torch.Tensor:
    """-> d x [M, N] in x's dtype (the bias gradient is its column sum, taken by the caller)."""
    check_device(dy, x)
    dx = torch.empty_like(x)
    total, block = x.numel(), _block()
    _bwd_kernel[(triton.cdiv(total, block),)](dy, x, bias, dx, total, x.shape[-1], APPROX_TANH=approx_tanh,
                                              BLOCK=block, num_warps=8)
    return dx
