"""Dropout and the attention core with dropout, cheap on CPU (issue 13).

On a CPU, `F.dropout` draws its mask with `bernoulli_`, about 5 ns per element on the 2-core
bench machine: at BERT base it was 14% of a training step, more than the attention matmuls. Here
one 64-bit draw of torch's generator gives four 16-bit lanes and an element is dropped when its
lane falls below p * 2^16: the same Bernoulli mask, about 4x cheaper (docs/kernels.md). The drop
probability is p rounded to a multiple of 2^-16 (0.1 -> 0.1000061) and kept elements are scaled
by the inverse of the rounded keep probability, so the expectation is unchanged. Masks come from
torch's default generator, so `torch.manual_seed` and a checkpoint's RNG state reproduce them.

`attention`: SDPA's CPU kernels cannot drop attention probabilities, so with dropout PyTorch runs
its math path, which upcasts q, k and v to fp32 and draws with `bernoulli_`. With dropout on a CPU
this computes the same function in the inputs' dtype (bf16 under autocast: the two matmuls in
bf16 with fp32 accumulation, the softmax with fp32 arithmetic on bf16 scores), with the mask
above. Everywhere else (no dropout, eval, CUDA) it is SDPA.

On CUDA, `dropout` is `F.dropout` (PyTorch's fused kernel; the Triton backend has its own masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LANES = 1 << 16  # one mask element per 16-bit lane of a 64-bit draw


def _drops(p: float) -> int:
    """How many of the 2^16 lane values drop an element."""
    return round(p * LANES)


def quantized_p(p: float) -> float:
    """The drop probability actually used on CPU: p rounded to a multiple of 2^-16."""
    return _drops(p) / LANES


def keep_scale(
    shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """[shape] of `dtype`: 0 where dropped (probability `quantized_p(p)`), 1 / (1 - that) where kept."""
    drops = _drops(p)
    n = math.prod(shape)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = draws.view(torch.int16)[:n].view(shape)  # uniform in [-2^15, 2^15)
    scale = torch.full((), LANES / (LANES - drops), dtype=dtype, device=device)
    return torch.where(lanes >= drops - LANES // 2, scale, torch.zeros((), dtype=dtype, device=device))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the cheap mask on CPU."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    return x * keep_scale(x.shape, p, x.dtype, x.device)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float, training: bool,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """q, k, v [B, heads, L, head_dim], mask [B, 1, 1, L] bool (True = attend) or None
    -> [B, heads, L, head_dim]: softmax(q k^T / sqrt(head_dim), masked) with dropout on the
    probabilities, times v. `keep` ([B, heads, L, L], 0 or the keep scale) replays a given mask
    (tests)."""
    p = p if training else 0.0
    if keep is None and (p == 0.0 or q.device.type != "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if mask is not None:
        # a large finite value, not -inf: a query whose keys are all masked gets finite garbage, not NaN
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)  # scores is a fresh matmul output
    with torch.autocast(q.device.type, enabled=False):  # bf16 in and out, fp32 inside (no fp32 copies)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if keep is None:
        keep = keep_scale(probs.shape, p, probs.dtype, probs.device)
    return torch.matmul(probs * keep, v)
