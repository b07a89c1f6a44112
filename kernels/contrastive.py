"""Contrastive scoring loss (CKBERT's multi-hop relation modeling, method.md): for each anchor, one
positive (slot 0) and K-1 negatives; loss = cross-entropy over cos(anchor, candidate_k) / T with the
positive as target, averaged over anchors.

Missing candidates (valid[n, k] False) are left out of the softmax; an anchor whose positive is
missing (valid[n, 0] False) is left out of the mean. All rows missing gives nan, as an empty mean
of torch.nn.functional.cross_entropy does.

Layers: Triton kernel and launcher (contrastive_triton.py) -> torch.library custom op with a fake
implementation -> `_ContrastiveFn` (autograd.Function; gradients come from the single forward pass,
the backward scales them) -> `contrastive_loss`. `contrastive_loss_reference` is the pure-PyTorch
definition and the "torch" backend. Both compute in fp32 and return an fp32 scalar.
"""

import torch
import torch.nn.functional as F

from .backend import resolve


def contrastive_loss_reference(
    anchor: torch.Tensor, candidates: torch.Tensor, temperature: float, valid: torch.Tensor | None = None,
) -> torch.Tensor:
    a = F.normalize(anchor.float(), dim=-1)  # [N, H]
    c = F.normalize(candidates.float(), dim=-1)  # [N, K, H]
    scores = torch.einsum("nh,nkh->nk", a, c) / temperature  # [N, K]
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    if valid is not None:
        counted = valid[:, 0]
        # Only counted rows get -inf for missing candidates: an all -inf row would put nan into
        # the softmax backward even when its target is ignored.
        scores = scores.masked_fill(~valid & counted[:, None], float("-inf"))
        targets = targets.masked_fill(~counted, -100)
    return F.cross_entropy(scores, targets, ignore_index=-100)


@torch.library.custom_op("ckbert::contrastive_fwd", mutates_args=())
def _fwd_op(
    anchor: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .contrastive_triton import contrastive_fwd

    return contrastive_fwd(anchor, candidates, valid, temperature)


@_fwd_op.register_fake
def _(anchor, candidates, valid, temperature):
    return anchor.new_empty((), dtype=torch.float32), torch.empty_like(anchor), torch.empty_like(candidates)


class _ContrastiveFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, candidates, valid, temperature):
        loss, da, dc = torch.ops.ckbert.contrastive_fwd(anchor, candidates, valid, temperature)
        ctx.save_for_backward(da, dc)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        da, dc = ctx.saved_tensors
        g = grad_loss.to(torch.float32)
        return (da * g).to(da.dtype), (dc * g).to(dc.dtype), None, None


def contrastive_loss(
    anchor: torch.Tensor, candidates: torch.Tensor, temperature: float, valid: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """anchor [N, H], candidates [N, K, H] (slot 0 the positive), valid [N, K] bool | None -> scalar."""
    if anchor.dim() != 2 or candidates.dim() != 3 or candidates.shape[::2] != anchor.shape:
        raise ValueError(f"anchor [N, H] and candidates [N, K, H] expected, got {tuple(anchor.shape)} "
                         f"and {tuple(candidates.shape)}")
    if valid is not None and valid.shape != candidates.shape[:2]:
        raise ValueError(f"valid must be [N, K] = {tuple(candidates.shape[:2])}, got {tuple(valid.shape)}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if resolve(backend) == "torch":
        return contrastive_loss_reference(anchor, candidates, temperature, valid)
    if valid is None:
        valid = torch.ones(candidates.shape[:2], dtype=torch.int8, device=candidates.device)
    return _ContrastiveFn.apply(anchor.contiguous(), candidates.contiguous(),
                                valid.to(torch.int8).contiguous(), float(temperature))
