"""`linear`: F.linear, with bf16 GEMMs on CPU in faster operand layouts where PyTorch has no oneDNN bf16.

Decided once per process (`CPU_BF16_GEMM_IS_FALLBACK`), like the kernel backend: on CPUs where
oneDNN takes bf16 (AVX512 BW/VL/DQ or AVX-NE-CONVERT) and on GPUs, `linear` is F.linear. The MLM
head's torch path (`linear_cross_entropy` with backend "torch") uses it too, since the decoder
GEMMs are the largest of a small model's step.
"""

import torch
import torch.nn.functional as F


def _k_major(a: torch.Tensor) -> torch.Tensor:
    """[M, K] -> the same values as an [M, K] view of a contiguous [K, M] copy."""
    return a.t().contiguous().t()


class _CpuBf16Linear(torch.autograd.Function):
    """y = x @ weight^T + bias for bf16 tensors on CPU, every GEMM with both operands stored
    reduction-dimension-major.

    Where oneDNN refuses bf16 (`bf16_gemm_is_fallback`), PyTorch's CPU bf16 GEMM is its own loop,
    and its speed depends on operand layout by up to 20x: A @ B runs fastest when A is an [M, K]
    view of a contiguous [K, M] tensor and B is a contiguous [K, N] tensor. The layouts F.linear
    produces (x @ W^T, and in backward grad @ W) are among the slow ones. Here the forward uses x^T
    and W^T copies, the input gradient a grad^T copy, and the weight gradient grad^T @ x is in the
    fast layout as is; the copies are elementwise and cheap next to the GEMMs. Same bf16 inputs,
    fp32 accumulation and bf16 outputs as F.linear; only the summation order (rounding in the last
    bf16 bit) may differ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x [T, K], weight [N, K], bias [N] -> [T, N]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        a, w_t = _k_major(x), weight.t().contiguous()
        return torch.mm(a, w_t) if bias is None else torch.addmm(bias, a, w_t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()  # [T, N]
        dx = torch.mm(_k_major(grad), weight) if ctx.needs_input_grad[0] else None  # [T, K]
        dw = torch.mm(grad.t(), x) if ctx.needs_input_grad[1] else None  # [N, K]
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def bf16_gemm_is_fallback() -> bool:
    """True when PyTorch's CPU bf16 GEMM is its own loop: oneDNN takes bf16 only on CPUs with
    AVX512 (BW/VL/DQ) or AVX-NE-CONVERT; there `_CpuBf16Linear`'s layouts buy nothing."""
    return not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


CPU_BF16_GEMM_IS_FALLBACK = bf16_gemm_is_fallback()  # decided once per process


def uses_cpu_bf16_layouts(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when F.linear(x, weight) would run a bf16 GEMM on the CPU's fallback loop."""
    if x.device.type != "cpu" or not CPU_BF16_GEMM_IS_FALLBACK:
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == weight.dtype == torch.bfloat16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., K], weight [N, K] -> [..., N]; bf16 on a CPU without
    oneDNN bf16 (autocast or bf16 tensors) runs through `_CpuBf16Linear`: same precision, faster
    GEMM layouts."""
    if not uses_cpu_bf16_layouts(x, weight):
        return F.linear(x, weight, bias)
    dt = torch.bfloat16
    y = _CpuBf16Linear.apply(x.reshape(-1, x.shape[-1]).to(dt), weight.to(dt), None if bias is None else bias.to(dt))
    return y if x.dim() == 2 else y.view(*x.shape[:-1], weight.shape[0])
