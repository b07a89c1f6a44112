"""Triton kernels and launchers for residual (+ bias + dropout) + LayerNorm, forward and backward.

Each program handles a tile of BLOCK_M rows x BLOCK_N (>= hidden) columns; statistics are in fp32
whatever the input dtype. Dropout draws its keep mask from Philox (`tl.rand(seed, offset)`) with
offset = row * N + col, so the backward regenerates exactly the forward mask from the same seed
instead of storing it.
"""

import torch
import triton
import triton.language as tl

from .backend import check_device, interpreter_on, tile_elements


@triton.jit
def _fwd_kernel(
    X, B, R, W, LB, Seed,  # inputs: x, residual [M, N]; bias, ln weight, ln bias [N]; seed [1] int64
    Y, H, Mean, Rstd,  # outputs: y, h [M, N]; mean, rstd [M] fp32
    M, N, eps, p,
    HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_DROPOUT:
        keep = tl.rand(tl.load(Seed), (rows[:, None] * N + cols[None, :]).to(tl.int32)) >= p
        x = tl.where(keep, x / (1.0 - p), 0.0)
    h = x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    # Round h to the storage dtype first: the LayerNorm then sees exactly the residual stream that
    # is stored (and that the backward reloads), as the unfused PyTorch sequence does.
    h = h.to(H.dtype.element_ty)
    tl.store(H + offs, h, mask=mask)
    h = h.to(tl.float32)
    mean = tl.sum(h, axis=1) / N
    diff = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / N + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    lb = tl.load(LB + cols, mask=cmask, other=0.0).to(tl.float32)
    y = diff * rstd[:, None] * w[None, :] + lb[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    rmask = rows < M
    tl.store(Mean + rows, mean, mask=rmask)
    tl.store(Rstd + rows, rstd, mask=rmask)


@triton.jit
def _bwd_kernel(
    DY, DHO, H, W, Mean, Rstd, Seed,  # dy, grad of the h output (pre-LN) [M, N]; saved h, stats
    DH, DX,  # outputs: grad of h (= grad of residual), grad of x (dropout applied) [M, N]
    DW_part, DLB_part, DB_part,  # per-program partial column sums [programs, N] fp32
    M, N, p,
    HAS_DHO: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK_M
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dlb = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_DROPOUT:
        seed = tl.load(Seed)
    for start in range(pid * BLOCK_M, M, step):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=rmask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        wdy = dy * w[None, :]
        # d xhat -> d h:  rstd * (wdy - mean(wdy) - xhat * mean(wdy * xhat))
        c1 = tl.sum(wdy * xhat, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dh = tl.where(mask, (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)
        if HAS_DHO:
            dh += tl.load(DHO + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=mask)
        dx = dh
        if HAS_DROPOUT:
            keep = tl.rand(seed, (rows[:, None] * N + cols[None, :]).to(tl.int32)) >= p
            dx = tl.where(keep, dh / (1.0 - p), 0.0)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        dlb += tl.sum(dy, axis=0)
        if HAS_BIAS:
            db += tl.sum(dx, axis=0)
    tl.store(DW_part + pid * N + cols, dw, mask=cmask)
    tl.store(DLB_part + pid * N + cols, dlb, mask=cmask)
    if HAS_BIAS:
        tl.store(DB_part + pid * N + cols, db, mask=cmask)


def _tiling(n_rows: int, n_cols: int, rows_per_program: int | None) -> tuple[int, int, int]:
    block_n = triton.next_power_of_2(n_cols)
    if rows_per_program is None:
        rows_per_program = max(1, tile_elements() // block_n)
    block_m = min(triton.next_power_of_2(rows_per_program), triton.next_power_of_2(max(n_rows, 1)))
    num_warps = 8 if block_m * block_n >= 4096 else 4
    return block_m, block_n, num_warps


def _programs_for_reduction(n_row_blocks: int) -> int:
    """Backward programs: each loops over row blocks so column partial sums stay few."""
    if interpreter_on():
        return min(n_row_blocks, 4)
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return min(n_row_blocks, 4 * sms)


def add_layernorm_fwd(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor,
    ln_bias: torch.Tensor, seed: torch.Tensor, eps: float, p: float, out_dtype: torch.dtype,
    rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual [M, N] contiguous -> y, h [M, N] in out_dtype, mean, rstd [M] (fp32)."""
    check_device(x, residual, weight)
    n_rows, n_cols = x.shape
    y = torch.empty_like(x, dtype=out_dtype)
    h = torch.empty_like(x, dtype=out_dtype)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    block_m, block_n, num_warps = _tiling(n_rows, n_cols, rows_per_program)
    grid = (triton.cdiv(n_rows, block_m),)
    _fwd_kernel[grid](
        x, bias if bias is not None else x, residual, weight, ln_bias, seed, y, h, mean, rstd,
        n_rows, n_cols, eps, p,
        HAS_BIAS=bias is not None, HAS_DROPOUT=p > 0.0, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return y, h, mean, rstd


def add_layernorm_bwd(
    dy: torch.Tensor, dh_out: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor, seed: torch.Tensor, p: float, has_bias: bool,
    x_dtype: torch.dtype, rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> d h (= d residual) [M, N] in h's dtype, d x [M, N] in x_dtype (None without dropout: it
    equals d h), and fp32 column sums d weight, d ln_bias, d bias [N] (d bias None without bias)."""
    check_device(dy, h)
    n_rows, n_cols = h.shape
    block_m, block_n, num_warps = _tiling(n_rows, n_cols, rows_per_program)
    programs = _programs_for_reduction(triton.cdiv(n_rows, block_m))
    dh = torch.empty_like(h)
    dx = torch.empty_like(h, dtype=x_dtype) if p > 0.0 else dh
    part = torch.empty((3, programs, n_cols), dtype=torch.float32, device=h.device)
    _bwd_kernel[(programs,)](
        dy, dh_out if dh_out is not None else dy, h, weight, mean, rstd, seed, dh, dx,
        part[0], part[1], part[2], n_rows, n_cols, p,
        HAS_DHO=dh_out is not None, HAS_DROPOUT=p > 0.0, HAS_BIAS=has_bias,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    # Separate reductions (not views of one [3, N] sum): custom-op outputs may not share storage.
    dw, dlb = part[0].sum(dim=0), part[1].sum(dim=0)
    db = part[2].sum(dim=0) if has_bias else None
    return dh, (dx if p > 0.0 else None), dw, dlb, db


@triton.jit
def _keep_mask_kernel(Seed, Keep, M, N, p, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    keep = tl.rand(tl.load(Seed), offs.to(tl.int32)) >= p
    tl.store(Keep + offs, keep.to(tl.int8), mask=mask)


def dropout_keep_mask(seed: torch.Tensor, n_rows: int, n_cols: int, p: float) -> torch.Tensor:
    """The [M, N] bool keep mask the kernels draw for `seed` (for tests and debugging)."""
    keep = torch.empty((n_rows, n_cols), dtype=torch.int8, device=seed.device)
    block = 65536 if interpreter_on() else 1024
    _keep_mask_kernel[(triton.cdiv(n_rows * n_cols, block),)](seed, keep, n_rows, n_cols, p, BLOCK=block)
    return keep.bool()
