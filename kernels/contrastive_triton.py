"""Triton kernel and launcher for the contrastive scoring loss, loss and gradients in one pass.

Per anchor row (one per program on a GPU), the kernel loads the anchor [H] and its K candidates [K, H] once, normalises
them, takes the K cosines, divides by the temperature, masks the missing candidates, and computes the
row's cross-entropy against slot 0 together with the gradients of both inputs (the loss is a scalar,
so the backward only scales them).

Gradients, with a^ = a / |a|, c^_k = c_k / |c_k|, cos_k = a^ . c^_k, s_k = cos_k / T, p = softmax(s):
  g_k = (p_k - [k == 0]) / T                       (d loss_row / d cos_k)
  d c_k = g_k (a^ - cos_k c^_k) / |c_k|
  d a   = (sum_k g_k c^_k - (sum_k g_k cos_k) a^) / |a|
Norms are clamped at 1e-12 as in torch.nn.functional.normalize.
"""

import torch
import triton
import triton.language as tl

from .backend import check_device, interpreter_on

_NORM_EPS = tl.constexpr(1e-12)


@triton.jit
def _contrastive_kernel(
    A, C, Valid,  # anchor [N, H], candidates [N, K, H], valid [N, K] int8
    Loss, DA, DC,  # outputs: loss [N] fp32, d anchor [N, H], d candidates [N, K, H] (of the row sum)
    N, K, H, inv_temperature,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # A tile is BLOCK_N anchors with their K candidates: one anchor per program on a GPU
    # (BLOCK_N = 1), several under the interpreter, where each program instance is expensive.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    hs = tl.arange(0, BLOCK_H)
    rmask = rows < N
    kmask = ks < K
    hmask = hs < H
    r64 = rows.to(tl.int64)
    a_mask = rmask[:, None] & hmask[None, :]  # [BN, BH]
    c_mask = a_mask[:, None, :] & kmask[None, :, None]  # [BN, BK, BH]
    a_offs = r64[:, None] * H + hs[None, :]
    c_offs = (r64[:, None, None] * K + ks[None, :, None]) * H + hs[None, None, :]
    a = tl.load(A + a_offs, mask=a_mask, other=0.0).to(tl.float32)
    c = tl.load(C + c_offs, mask=c_mask, other=0.0).to(tl.float32)
    vk_mask = rmask[:, None] & kmask[None, :]  # [BN, BK]
    valid = tl.load(Valid + r64[:, None] * K + ks[None, :], mask=vk_mask, other=0) != 0
    is_pos = (ks == 0)[None, :]  # [1, BK]
    counted = tl.sum(tl.where(is_pos & valid, 1, 0), axis=1) > 0  # [BN] the positive is present
    a_norm = tl.maximum(tl.sqrt(tl.sum(a * a, axis=1)), _NORM_EPS)  # [BN]
    c_norm = tl.maximum(tl.sqrt(tl.sum(c * c, axis=2)), _NORM_EPS)  # [BN, BK]
    a_hat = a / a_norm[:, None]
    c_hat = c / c_norm[:, :, None]
    cos = tl.sum(c_hat * a_hat[:, None, :], axis=2)  # [BN, BK]
    s = tl.where(valid, cos * inv_temperature, float("-inf"))
    s_max = tl.max(s, axis=1)
    s_max = tl.where(counted, s_max, 0.0)  # rows with no valid slot: keep exp() finite
    e = tl.where(valid, tl.exp(s - s_max[:, None]), 0.0)
    e_sum = tl.where(counted, tl.sum(e, axis=1), 1.0)
    lse = s_max + tl.log(e_sum)
    s0 = tl.sum(tl.where(is_pos, tl.where(valid, s, 0.0), 0.0), axis=1)
    tl.store(Loss + rows, tl.where(counted, lse - s0, 0.0), mask=rmask)
    p = e / e_sum[:, None]
    g = tl.where(valid & counted[:, None], (p - tl.where(is_pos, 1.0, 0.0)) * inv_temperature, 0.0)  # [BN, BK]
    dc = g[:, :, None] * (a_hat[:, None, :] - cos[:, :, None] * c_hat) / c_norm[:, :, None]
    tl.store(DC + c_offs, dc.to(DC.dtype.element_ty), mask=c_mask)
    da = (tl.sum(g[:, :, None] * c_hat, axis=1) - tl.sum(g * cos, axis=1)[:, None] * a_hat) / a_norm[:, None]
    tl.store(DA + a_offs, da.to(DA.dtype.element_ty), mask=a_mask)


def contrastive_fwd(
    anchor: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor, temperature: float,
    rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """anchor [N, H], candidates [N, K, H], valid [N, K] int8 (contiguous) -> mean loss (fp32 scalar,
    over rows whose slot 0 is valid), d anchor [N, H], d candidates [N, K, H] (of the mean)."""
    check_device(anchor, candidates, valid)
    n, k, h = candidates.shape
    loss_rows = torch.empty(n, dtype=torch.float32, device=anchor.device)
    da = torch.empty_like(anchor)
    dc = torch.empty_like(candidates)
    block_k, block_h = triton.next_power_of_2(k), triton.next_power_of_2(h)
    if rows_per_program is None:
        rows_per_program = max(1, 65536 // (block_k * block_h)) if interpreter_on() else 1
    block_n = min(triton.next_power_of_2(n), triton.next_power_of_2(rows_per_program))
    _contrastive_kernel[(triton.cdiv(n, block_n),)](
        anchor, candidates, valid, loss_rows, da, dc, n, k, h, 1.0 / temperature,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_H=block_h, num_warps=8 if block_k * block_h >= 8192 else 4,
    )
    inv_count = 1.0 / (valid[:, 0] != 0).sum().to(torch.float32)  # no host sync; 0 rows -> nan
    return loss_rows.sum() * inv_count, (da * inv_count).to(da.dtype), (dc * inv_count).to(dc.dtype)
