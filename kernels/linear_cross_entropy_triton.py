"""Triton kernel and chunked driver for linear + cross-entropy (the MLM head's loss).

The full [M, V] logits are never held: rows are processed in chunks of C rows. For each chunk the
logits [C, V] come from one GEMM (cuBLAS); the Triton kernel then computes each row's loss with an
online softmax over V and overwrites the logits in place with d loss / d logits; two more GEMMs turn
them into the chunk's grad_hidden [C, H] and its share of grad_weight [V, H]. Gradients are thus
computed in the forward (the loss is a scalar, so the backward only scales them by grad_output).
"""

import math

import torch
import triton
import triton.language as tl

from .backend import check_device, interpreter_on

_NEG_BIG = tl.constexpr(-3.0e38)  # finite "minus infinity" for masked lanes: keeps exp(m_old - m_new) free of nan


@triton.jit
def _ce_rows_kernel(
    Logits, stride, Labels, Loss,  # logits [C, V] (overwritten by d loss_row / d logits), labels [C], loss [C] fp32
    C, V, ignore_index, smoothing,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # A tile is BLOCK_M rows x BLOCK_V classes: one row per program on a GPU (BLOCK_M = 1), many
    # rows per program under the interpreter, where each program instance is expensive.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < C
    ptr = Logits + rows[:, None].to(tl.int64) * stride  # [BM, 1]
    label = tl.load(Labels + rows, mask=rmask, other=ignore_index)
    valid = label != ignore_index
    safe_label = tl.where(valid, label, 0)
    # Pass 1: per-lane running max m and sum s of exp(z - m); plus the sum of logits (smoothing term).
    m = tl.full((BLOCK_M, BLOCK_V), _NEG_BIG, tl.float32)
    s = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    zsum = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols < V)[None, :]
        z = tl.load(ptr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.where(mask, z, _NEG_BIG)  # after the upcast: -3e38 does not fit fp16/bf16
        m_new = tl.maximum(m, z)
        s = s * tl.exp(m - m_new) + tl.exp(z - m_new)
        zsum += tl.where(mask, z, 0.0)
        m = m_new
    row_max = tl.max(m, axis=1)
    lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max[:, None]), axis=1))  # [BM]
    lse = tl.where(rmask, lse, 0.0)  # rows past C: keeps pass 2's exp finite (their stores are masked)
    z_label = tl.load(Logits + rows.to(tl.int64) * stride + safe_label, mask=rmask, other=0.0).to(tl.float32)
    # PyTorch's label smoothing: (1 - eps) * nll + eps * mean_j(-log p_j), mean_j(-log p_j) = lse - mean(z)
    loss = (1.0 - smoothing) * (lse - z_label) + smoothing * (lse - tl.sum(zsum, axis=1) / V)
    tl.store(Loss + rows, tl.where(valid, loss, 0.0), mask=rmask)
    # Pass 2: d loss / d z_j = softmax_j - eps / V - (1 - eps) [j == label]; zero for ignored rows.
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols < V)[None, :]
        z = tl.load(ptr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(z - lse[:, None]) - smoothing / V
        g -= tl.where(cols[None, :] == safe_label[:, None], 1.0 - smoothing, 0.0)
        g = tl.where(valid[:, None], g, 0.0)
        tl.store(ptr + cols[None, :], g.to(Logits.dtype.element_ty), mask=mask)


MIN_CHUNK_LOGITS = 2**23  # 8M logits: 16 MiB in bf16


def default_chunk_size(n_rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk: a chunk's logits [C, V] about the size of hidden [M, H], but at least
    MIN_CHUNK_LOGITS elements, because each chunk also pays a full pass over the fp32 grad_weight
    [V, H] (few large chunks beat many small ones once the logits are small next to it)."""
    target = max(n_rows * hidden, MIN_CHUNK_LOGITS)
    rows = min(n_rows, max(1, math.ceil(target / vocab)))
    return triton.next_power_of_2(rows)


def linear_cross_entropy_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    ignore_index: int, smoothing: float, chunk_size: int | None, rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """hidden [M, H], weight [V, H], bias [V] | None, labels [M] (all contiguous, one dtype) ->
    mean loss (fp32 scalar), grad_hidden [M, H], grad_weight [V, H], grad_bias [V] | None (of the mean)."""
    check_device(hidden, weight, labels)
    n_rows, _ = hidden.shape
    vocab = weight.shape[0]
    chunk = chunk_size or default_chunk_size(n_rows, hidden.shape[1], vocab)
    block_v = min(triton.next_power_of_2(vocab), 65536 if interpreter_on() else 4096)
    if rows_per_program is None:
        rows_per_program = max(1, 65536 // block_v) if interpreter_on() else 1
    block_m = min(triton.next_power_of_2(chunk), triton.next_power_of_2(rows_per_program))
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if bias is not None else None
    for start in range(0, n_rows, chunk):
        h = hidden[start:start + chunk]  # [C, H]
        logits = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())  # [C, V]
        n = h.shape[0]
        _ce_rows_kernel[(triton.cdiv(n, block_m),)](
            logits, logits.stride(0), labels[start:start + chunk], loss_rows[start:start + chunk],
            n, vocab, ignore_index, smoothing,
            BLOCK_M=block_m, BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4,
        )
        grad_hidden[start:start + chunk] = logits @ weight  # [C, H]
        grad_weight += (logits.t() @ h).float()  # [V, H], accumulated in fp32 across chunks
        if grad_bias is not None:
            grad_bias += logits.sum(dim=0, dtype=torch.float32)
    # Scale by 1 / (number of counted rows) on the device: no host sync. All rows ignored gives
    # nan, as torch.nn.functional.cross_entropy does.
    inv_count = 1.0 / (labels != ignore_index).sum().to(torch.float32)
    loss = loss_rows.sum() * inv_count
    grad_hidden = (grad_hidden * inv_count).to(hidden.dtype)
    grad_weight = grad_weight.mul_(inv_count).to(weight.dtype)
    if grad_bias is not None:
        grad_bias = (grad_bias * inv_count).to(bias.dtype)
    return loss, grad_hidden, grad_weight, grad_bias
