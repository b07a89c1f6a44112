"""Linear + cross-entropy without materialising the full logits: the MLM head's decoder and loss.

loss = mean over rows with label != ignore_index of CE(hidden @ weight^T + bias, label), with
optional label smoothing (PyTorch's definition). hidden [M, H] are the masked positions' transformed
states, weight [V, H] the (tied) word embeddings. The Triton path works in row chunks (see
linear_cross_entropy_triton.py), so its peak extra memory is one chunk of logits plus grad_weight
instead of the [M, V] logits, their fp32 copy and their gradient.

Layers: Triton kernel and chunked driver -> torch.library custom op with a fake implementation ->
`_LinearCrossEntropyFn` (autograd.Function; gradients come from the forward, the backward scales
them) -> `linear_cross_entropy`. `linear_cross_entropy_reference` is the pure-PyTorch definition and
the "torch" backend (with `cpu_linear.linear`'s GEMM layouts for bf16 on CPUs without oneDNN bf16).

Precision: the GEMMs run in the compute dtype (the autocast dtype when autocast is on, as F.linear
would, else the promoted dtype of hidden and weight); softmax and loss in fp32; grad_weight is
accumulated in fp32 across chunks. The loss is an fp32 scalar.
"""

import torch
import torch.nn.functional as F

from .backend import resolve
from .cpu_linear import linear, uses_cpu_bf16_layouts


def linear_cross_entropy_reference(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    ignore_index: int = -100, label_smoothing: float = 0.0,
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)  # [M, V]
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, label_smoothing=label_smoothing)


@torch.library.custom_op("ckbert::linear_cross_entropy_fwd", mutates_args=())
def _fwd_op(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    ignore_index: int, label_smoothing: float, chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .linear_cross_entropy_triton import linear_cross_entropy_fwd

    loss, gh, gw, gb = linear_cross_entropy_fwd(hidden, weight, bias, labels, ignore_index,
                                                label_smoothing, chunk_size or None)
    return loss, gh, gw, (gb if gb is not None else hidden.new_empty(0))  # custom ops return no None


@_fwd_op.register_fake
def _(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size):
    loss = hidden.new_empty((), dtype=torch.float32)
    gb = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight), gb


class _LinearCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size):
        loss, gh, gw, gb = torch.ops.ckbert.linear_cross_entropy_fwd(
            hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size)
        ctx.save_for_backward(gh, gw, gb)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        gh, gw, gb = ctx.saved_tensors
        g = grad_loss.to(torch.float32)
        return (
            (gh * g).to(gh.dtype), (gw * g).to(gw.dtype), (gb * g).to(gb.dtype) if ctx.has_bias else None,
            None, None, None, None,
        )


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    ignore_index: int = -100, label_smoothing: float = 0.0, chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of hidden [M, H] @ weight [V, H]^T + bias [V] against labels [M].

    Rows whose label is ignore_index are left out of the mean. chunk_size: rows per chunk on the
    Triton path (None: logits chunk about the size of hidden).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [M, H] and weight [V, H] expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [M] = {tuple(hidden.shape[:1])}, got {tuple(labels.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if resolve(backend) == "torch":
        if uses_cpu_bf16_layouts(hidden, weight):  # the reference's definition, faster bf16 GEMM layouts
            logits = linear(hidden, weight, bias)  # [M, V]
            return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, label_smoothing=label_smoothing)
        return linear_cross_entropy_reference(hidden, weight, bias, labels, ignore_index, label_smoothing)
    dtype = _compute_dtype(hidden, weight)
    # The casts are autograd ops: gradients reach the original dtypes (as under autocast).
    hidden, weight = hidden.to(dtype).contiguous(), weight.to(dtype).contiguous()
    bias = bias.to(dtype).contiguous() if bias is not None else None
    return _LinearCrossEntropyFn.apply(hidden, weight, bias, labels.contiguous(), ignore_index,
                                       label_smoothing, chunk_size or 0)
