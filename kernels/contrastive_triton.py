"""Triton kernel and launcher for the contrastive scoring loss, loss and gradients in one pass.

One program per anchor row: it loads the anchor [H] and its K candidates [K, H] once, normalises
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

from .backend import check_device

_NORM_EPS = 1e-12


@triton.jit
def _contrastive_kernel(
    A, C, Valid,  # anchor [N, H], candidates [N, K, H], valid [N, K] int8
    Loss, DA, DC,  # outputs: loss [N] fp32, d anchor [N, H], d candidates [N, K, H] (of the row sum)
    K, H, inv_temperature,
    BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    hs = tl.arange(0, BLOCK_H)
    kmask = ks < K
    hmask = hs < H
    mask = kmask[:, None] & hmask[None, :]
    a = tl.load(A + row * H + hs, mask=hmask, other=0.0).to(tl.float32)  # [BH]
    c_offs = row * K * H + ks[:, None] * H + hs[None, :]
    c = tl.load(C + c_offs, mask=mask, other=0.0).to(tl.float32)  # [BK, BH]
    valid = tl.load(Valid + row * K + ks, mask=kmask, other=0) != 0  # [BK]
    row_counts = tl.sum(tl.where(ks == 0, valid.to(tl.int32), 0), axis=0) > 0  # positive present
    a_norm = tl.maximum(tl.sqrt(tl.sum(a * a, axis=0)), _NORM_EPS)
    c_norm = tl.maximum(tl.sqrt(tl.sum(c * c, axis=1)), _NORM_EPS)  # [BK]
    a_hat = a / a_norm
    c_hat = c / c_norm[:, None]
    cos = tl.sum(c_hat * a_hat[None, :], axis=1)  # [BK]
    s = tl.where(valid, cos * inv_temperature, float("-inf"))
    s_max = tl.max(s, axis=0)
    e = tl.where(valid, tl.exp(s - s_max), 0.0)
    lse = s_max + tl.log(tl.sum(e, axis=0))
    s0 = tl.sum(tl.where(ks == 0, s, 0.0), axis=0)
    tl.store(Loss + row, tl.where(row_counts, lse - s0, 0.0))
    p = e / tl.sum(e, axis=0)
    g = tl.where(valid & row_counts, (p - tl.where(ks == 0, 1.0, 0.0)) * inv_temperature, 0.0)  # [BK]
    dc = g[:, None] * (a_hat[None, :] - cos[:, None] * c_hat) / c_norm[:, None]
    tl.store(DC + c_offs, dc.to(DC.dtype.element_ty), mask=mask)
    da = (tl.sum(g[:, None] * c_hat, axis=0) - tl.sum(g * cos, axis=0) * a_hat) / a_norm
    tl.store(DA + row * H + hs, da.to(DA.dtype.element_ty), mask=hmask)


def contrastive_fwd(
    anchor: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """anchor [N, H], candidates [N, K, H], valid [N, K] int8 (contiguous) -> mean loss (fp32 scalar,
    over rows whose slot 0 is valid), d anchor [N, H], d candidates [N, K, H] (of the mean)."""
    check_device(anchor, candidates, valid)
    n, k, h = candidates.shape
    loss_rows = torch.empty(n, dtype=torch.float32, device=anchor.device)
    da = torch.empty_like(anchor)
    dc = torch.empty_like(candidates)
    block_k, block_h = triton.next_power_of_2(k), triton.next_power_of_2(h)
    _contrastive_kernel[(n,)](
        anchor, candidates, valid, loss_rows, da, dc, k, h, 1.0 / temperature,
        BLOCK_K=block_k, BLOCK_H=block_h, num_warps=8 if block_k * block_h >= 8192 else 4,
    )
    inv_count = 1.0 / (valid[:, 0] != 0).sum().to(torch.float32)  # no host sync; 0 rows -> nan
    return loss_rows.sum() * inv_count, (da * inv_count).to(da.dtype), (dc * inv_count).to(dc.dtype)
