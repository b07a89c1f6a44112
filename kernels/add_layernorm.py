"""Residual (+ bias + dropout) + LayerNorm, fused: the BERT sublayer output in both layouts.

post-LN (BERT base/large):  y = LayerNorm(residual + dropout(x + bias))
pre-LN (Megatron, huge):    h = residual + dropout(x + bias); y = LayerNorm(h); returns (y, h)

A LayerNorm alone does not beat PyTorch at hidden 768-1024; fusing the bias, dropout and residual
add into it saves three full read/write passes over the activations (issue 4).

Layers, each calling only the one below: Triton kernels and launchers (add_layernorm_triton.py)
-> torch.library custom ops (with fake implementations, so torch.compile can trace them)
-> `_AddLayerNormFn` (autograd.Function) -> the public functions. `add_layernorm_reference` is the
pure-PyTorch definition and the "torch" backend.

Output dtype follows PyTorch type promotion of x, bias and residual (what the reference returns).
"""

import torch
import torch.nn.functional as F

from .backend import resolve
from .dropout import dropout


def add_layernorm_reference(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, ln_weight: torch.Tensor,
    ln_bias: torch.Tensor, eps: float, p: float = 0.0, training: bool = False,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (y, h). `keep` (bool, x's shape) replays a given dropout mask instead of drawing one."""
    z = x if bias is None else x + bias
    if training and p > 0.0:
        z = z * keep / (1.0 - p) if keep is not None else dropout(z, p, training=True)
    h = residual + z
    return F.layer_norm(h, (h.shape[-1],), ln_weight, ln_bias, eps), h


@torch.library.custom_op("ckbert::add_layernorm_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, ln_weight: torch.Tensor,
    ln_bias: torch.Tensor, seed: torch.Tensor, eps: float, p: float, rows_per_program: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .add_layernorm_triton import add_layernorm_fwd

    out_dtype = _out_dtype(x, bias, residual)
    return add_layernorm_fwd(x, bias, residual, ln_weight, ln_bias, seed, eps, p, out_dtype,
                             rows_per_program or None)


@_fwd_op.register_fake
def _(x, bias, residual, ln_weight, ln_bias, seed, eps, p, rows_per_program):
    out_dtype = _out_dtype(x, bias, residual)
    stats = x.new_empty(x.shape[0], dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape, dtype=out_dtype), stats, stats.clone()


@torch.library.custom_op("ckbert::add_layernorm_bwd", mutates_args=())
def _bwd_op(
    dy: torch.Tensor, dh_out: torch.Tensor | None, h: torch.Tensor, ln_weight: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor, seed: torch.Tensor, p: float, has_bias: bool,
    x_dtype: torch.dtype, rows_per_program: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .add_layernorm_triton import add_layernorm_bwd

    dh, dx, dw, dlb, db = add_layernorm_bwd(dy, dh_out, h, ln_weight, mean, rstd, seed, p, has_bias,
                                            x_dtype, rows_per_program or None)
    # custom ops may not return aliases or None: empty tensors stand for "same as dh" / "no bias".
    if dx is None:
        dx = h.new_empty(0, dtype=torch.float32)
    if db is None:
        db = h.new_empty(0, dtype=torch.float32)
    return dh, dx, dw, dlb, db


@_bwd_op.register_fake
def _(dy, dh_out, h, ln_weight, mean, rstd, seed, p, has_bias, x_dtype, rows_per_program):
    n = h.shape[1]
    col = h.new_empty(n, dtype=torch.float32)
    dx = h.new_empty(h.shape, dtype=x_dtype) if p > 0.0 else h.new_empty(0, dtype=torch.float32)
    return torch.empty_like(h), dx, col, col.clone(), (col.clone() if has_bias else h.new_empty(0))


def _out_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _AddLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, ln_weight, ln_bias, eps, p, seed, rows_per_program):
        shape = x.shape
        n = shape[-1]
        x2 = x.reshape(-1, n).contiguous()
        r2 = residual.reshape(-1, n).contiguous()
        y, h, mean, rstd = torch.ops.ckbert.add_layernorm_fwd(
            x2, bias, r2, ln_weight, ln_bias, seed, eps, p, rows_per_program)
        ctx.save_for_backward(h, ln_weight, mean, rstd, seed)
        ctx.set_materialize_grads(False)
        ctx.p, ctx.shape, ctx.rows_per_program = p, shape, rows_per_program
        ctx.dtypes = (x.dtype, None if bias is None else bias.dtype, residual.dtype, ln_weight.dtype,
                      ln_bias.dtype)
        return y.view(shape), h.view(shape)

    @staticmethod
    def backward(ctx, dy, dh_out):
        h, ln_weight, mean, rstd, seed = ctx.saved_tensors
        x_dtype, bias_dtype, r_dtype, w_dtype, lb_dtype = ctx.dtypes
        n = h.shape[1]
        dy = torch.zeros_like(h) if dy is None else dy.reshape(-1, n).contiguous()
        if dh_out is not None:
            dh_out = dh_out.reshape(-1, n).contiguous()
        dh, dx, dw, dlb, db = torch.ops.ckbert.add_layernorm_bwd(
            dy, dh_out, h, ln_weight, mean, rstd, seed, ctx.p, bias_dtype is not None, x_dtype,
            ctx.rows_per_program)
        if ctx.p == 0.0:
            dx = dh
        shape = ctx.shape
        return (
            dx.to(x_dtype).view(shape),
            None if bias_dtype is None else db.to(bias_dtype),
            dh.to(r_dtype).view(shape),
            dw.to(w_dtype),
            dlb.to(lb_dtype),
            None, None, None, None,
        )


def _fused(x, bias, residual, ln_weight, ln_bias, eps, p, training, backend, seed, rows_per_program):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} must have the same shape")
    p = p if training else 0.0
    if resolve(backend) == "torch":
        return add_layernorm_reference(x, bias, residual, ln_weight, ln_bias, eps, p, training)
    if p > 0.0 and seed is None:
        # Drawn from torch's generator, so torch.manual_seed makes the mask reproducible.
        seed = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=x.device)
    elif seed is None:
        seed = torch.zeros(1, dtype=torch.int64, device=x.device)
    return _AddLayerNormFn.apply(x, bias, residual, ln_weight, ln_bias, eps, p, seed, rows_per_program)


def bias_dropout_add_layernorm(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, ln_weight: torch.Tensor,
    ln_bias: torch.Tensor, eps: float, p: float, training: bool, backend: str | None = None, *,
    seed: torch.Tensor | None = None, rows_per_program: int = 0,
) -> torch.Tensor:
    """Post-LN sublayer output: LayerNorm(residual + dropout(x + bias)).

    x is the matmul output without its bias, [..., N]; residual has x's shape; bias, ln_weight,
    ln_bias are [N]. `seed` (int64 [1]) fixes the Triton dropout mask; `rows_per_program` (0 =
    automatic) sets the kernel tiling, for tests.
    """
    y, _ = _fused(x, bias, residual, ln_weight, ln_bias, eps, p, training, backend, seed, rows_per_program)
    return y


def add_layernorm(
    x: torch.Tensor, residual: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
    backend: str | None = None, *, bias: torch.Tensor | None = None, p: float = 0.0,
    training: bool = False, seed: torch.Tensor | None = None, rows_per_program: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-LN form: new_residual = residual + dropout(x + bias); returns (LayerNorm(new_residual),
    new_residual). With the defaults (no bias, no dropout) it is residual + x then LayerNorm."""
    return _fused(x, bias, residual, ln_weight, ln_bias, eps, p, training, backend, seed, rows_per_program)
