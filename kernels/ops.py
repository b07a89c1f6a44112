"""The accelerator layer's public surface: `from ckbert.kernels import ops` (or `from ckbert.kernels.ops import linear`).

Triton fused kernels, their PyTorch references, backend selection. Imports nothing else of ckbert
(design.md, section 1). Each op has a pure-PyTorch reference (the "torch" backend and the CPU path)
next to its Triton kernels; `select_backend` decides once per process which one runs
(docs/kernels.md). Triton itself is imported only when a Triton kernel runs.

`kernels/` has no `__init__.py` on purpose: from the repository root a regular package named
`kernels` would shadow Hugging Face's `kernels` distribution, which transformers imports
(docs/contracts.md, "Import names").
"""
from .add_layernorm import add_layernorm, add_layernorm_reference, bias_dropout_add_layernorm
from .backend import reset_backend, select_backend
from .bias_gelu import bias_gelu, bias_gelu_reference
from .contrastive import contrastive_loss, contrastive_loss_reference
from .cpu_linear import CPU_BF16_GEMM_IS_FALLBACK, linear
from .dropout import attention, dropout
from .embedding import embedding
from .linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference

__all__ = [
    "CPU_BF16_GEMM_IS_FALLBACK",
    "add_layernorm",
    "add_layernorm_reference",
    "attention",
    "bias_dropout_add_layernorm",
    "bias_gelu",
    "bias_gelu_reference",
    "contrastive_loss",
    "contrastive_loss_reference",
    "dropout",
    "embedding",
    "linear",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "reset_backend",
    "select_backend",
]
