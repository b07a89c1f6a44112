"""Triton kernels and launchers for bias + GELU (exact erf form and tanh form), fwd and bwd.

Elementwise over [M, N] activations in 2-D tiles of BLOCK_M rows x BLOCK_N columns; the bias tile
[BLOCK_N] is broadcast over the rows. Compute is fp32 for every storage dtype.
"""

import torch
import triton
import triton.language as tl

from .backend import check_device, tile_elements

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
def _fwd_kernel(X, B, Y, M, N, APPROX_TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    y, _ = _gelu_and_grad(z, APPROX_TANH, False)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(DY, X, B, DX, M, N, APPROX_TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    _, g = _gelu_and_grad(z, APPROX_TANH, True)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + offs, (dy * g).to(DX.dtype.element_ty), mask=mask)


def _tiling(n_rows: int, n_cols: int) -> tuple[tuple[int, int], int, int]:
    """-> grid, BLOCK_M, BLOCK_N: 2-D tiles, so the bias is loaded once per tile (no per-element
    modulo to find its column)."""
    block_n = min(triton.next_power_of_2(n_cols), 1024)
    block_m = max(1, tile_elements() // block_n)
    block_m = min(block_m, triton.next_power_of_2(max(n_rows, 1)))
    return (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n)), block_m, block_n


def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """x [M, N] contiguous, bias [N] -> gelu(x + bias) [M, N] in out_dtype."""
    check_device(x, bias)
    y = torch.empty_like(x, dtype=out_dtype)
    grid, block_m, block_n = _tiling(*x.shape)
    _fwd_kernel[grid](x, bias, y, x.shape[0], x.shape[1], APPROX_TANH=approx_tanh, BLOCK_M=block_m,
                      BLOCK_N=block_n, num_warps=8 if block_m * block_n >= 4096 else 4)
    return y


def bias_gelu_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool) -> torch.Tensor:
    """-> d x [M, N] in x's dtype (the bias gradient is its column sum, taken by the caller)."""
    check_device(dy, x)
    dx = torch.empty_like(x)
    grid, block_m, block_n = _tiling(*x.shape)
    _bwd_kernel[grid](dy, x, bias, dx, x.shape[0], x.shape[1], APPROX_TANH=approx_tanh, BLOCK_M=block_m,
                      BLOCK_N=block_n, num_warps=8 if block_m * block_n >= 4096 else 4)
    return dx
