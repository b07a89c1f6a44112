"""Word-embedding lookup whose [V, H] weight gradient is built in a buffer reused across steps (CPU).

`F.embedding`'s backward makes a zero [V, H] tensor and adds the looked-up rows' gradients into it.
On a CPU a fresh tensor that large (65 MB at V 21,130, H 768, above glibc's mmap threshold) is
faulted in from the OS page by page on every step: 85 ms of an 800 ms BERT-base training step
(bench/train_step.py, 8 x 128, bf16; issue 13). Here it is a workspace zeroed in place. Autograd
then adds it into the tied decoder's gradient (or copies it into `.grad`) and lets go of it, so
the next backward finds it free. When it is still held (a second lookup of the same shape in one
backward, or a caller keeping what `torch.autograd.grad` returned), that backward gets a fresh
tensor, as with `F.embedding`: the values are the same either way (tests/kernels/test_embedding.py).

Elsewhere (CUDA, no gradient, torch.compile) `embedding` is `F.embedding`. The workspaces live for
the process: one [V, H] tensor per shape and dtype.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

_WORKSPACES: dict[tuple, torch.Tensor] = {}


def _references_when_free() -> int:
    """What `sys.getrefcount` says of a workspace nobody else holds, seen as `_zeroed_workspace` sees
    it (held by a dict and a local name); measured, since the count differs between Python versions."""
    holder = {"key": torch.empty(0)}
    buf = holder["key"]
    return sys.getrefcount(buf)


_FREE = _references_when_free()
_USE_COUNT = getattr(torch.Tensor, "_use_count", None)  # the TensorImpl's reference count


def _zeroed_workspace(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (tuple(shape), dtype, str(device))
    buf = _WORKSPACES.get(key)
    if buf is None:
        buf = _WORKSPACES[key] = torch.zeros(shape, dtype=dtype, device=device)
        return buf
    # free = no other Python reference and no C++ holder such as autograd's input buffer (a
    # TensorImpl count of 1: its Python object); a torch without `_use_count` always gets a fresh one
    if sys.getrefcount(buf) > _FREE or _USE_COUNT is None or _USE_COUNT(buf) > 1:
        return torch.zeros(shape, dtype=dtype, device=device)
    return buf.zero_()


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.meta = (weight.shape, weight.dtype, weight.device, padding_idx)
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        shape, dtype, device, padding_idx = ctx.meta
        out = _zeroed_workspace(shape, dtype, device)
        out.index_add_(0, ids.reshape(-1), grad.reshape(-1, shape[1]).to(dtype))
        if padding_idx is not None:  # as F.embedding: the padding row gets no gradient
            out[padding_idx].zero_()
        return out, None, None


def embedding(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    """`F.embedding(ids, weight, padding_idx)`: ids [...] -> [..., H]."""
    if (weight.device.type != "cpu" or not (weight.requires_grad and torch.is_grad_enabled())
            or torch.compiler.is_compiling()):
        return F.embedding(ids, weight, padding_idx)
    return _Lookup.apply(weight, ids, padding_idx)
