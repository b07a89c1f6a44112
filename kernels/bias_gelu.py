"""bias + GELU, fused: the FFN intermediate activation, gelu(x + bias) with x = x @ W1^T.

Both forms of GELU: "none" (exact, 0.5 z (1 + erf(z / sqrt 2)), BERT's "gelu") and "tanh"
(0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))), "gelu_new"). The backward recomputes z = x + bias
from the saved input instead of storing z.

Layers: Triton kernels and launchers (bias_gelu_triton.py) -> torch.library custom ops with fake
implementations -> `_BiasGeluFn` (autograd.Function) -> `bias_gelu`. `bias_gelu_reference` is the
pure-PyTorch definition and the "torch" backend. The output has x's dtype, as a linear layer's output
with its bias under autocast: with x in bf16 and an fp32 bias, the [T, 4H] activation stays bf16
instead of becoming fp32 and being cast back for the next matmul (4% of a base step on CPU, issue 13).
"""

import torch
import torch.nn.functional as F

from .backend import resolve

APPROXIMATIONS = ("none", "tanh")


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x + bias.to(x.dtype), approximate=approximate)


@torch.library.custom_op("ckbert::bias_gelu_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool) -> torch.Tensor:
    from .bias_gelu_triton import bias_gelu_fwd

    return bias_gelu_fwd(x, bias, approx_tanh, x.dtype)


@_fwd_op.register_fake
def _(x, bias, approx_tanh):
    return x.new_empty(x.shape)


@torch.library.custom_op("ckbert::bias_gelu_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool) -> torch.Tensor:
    from .bias_gelu_triton import bias_gelu_bwd

    return bias_gelu_bwd(dy, x, bias, approx_tanh)


@_bwd_op.register_fake
def _(dy, x, bias, approx_tanh):
    return torch.empty_like(x)


class _BiasGeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approx_tanh):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        ctx.save_for_backward(x2, bias)
        ctx.approx_tanh, ctx.shape = approx_tanh, shape
        return torch.ops.ckbert.bias_gelu_fwd(x2, bias, approx_tanh).view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        dx = torch.ops.ckbert.bias_gelu_bwd(dy.reshape(x2.shape).contiguous(), x2, bias, ctx.approx_tanh)
        dbias = dx.sum(dim=0, dtype=torch.float32).to(bias.dtype)  # [N], accumulated in fp32
        return dx.view(ctx.shape), dbias, None


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none", backend: str | None = None) -> torch.Tensor:
    """gelu(x + bias); x [..., N], bias [N]; approximate "none" (erf) or "tanh"."""
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    if resolve(backend) == "torch":
        return bias_gelu_reference(x, bias, approximate)
    return _BiasGeluFn.apply(x, bias, approximate == "tanh")
