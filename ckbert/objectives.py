"""The two pretraining objectives as small functions returning scalar losses (method.md, 1-2).

The training step (`ckbert.train.PretrainForward` and `train_step`) calls these and forms the total
`L_mlm + lambda * L_cmrm` in one place; nothing here knows about weights, precision or devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckbert.model import decoder_cross_entropy


def mlm_loss(rows: torch.Tensor, decoder_weight: torch.Tensor, decoder_bias: torch.Tensor,
             labels: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Sparse MLM cross-entropy on the gathered target rows only.

    rows [M, H] (the MLM head's transform output at the M targets), decoder_weight [V, H],
    decoder_bias [V], labels [M] -> mean cross-entropy over the M targets. Goes through
    `ckbert.model.decoder_cross_entropy`, i.e. `ckbert.kernels.linear_cross_entropy` (the Triton
    path never materialises [M, V] logits; the torch path is the plain reference, with faster GEMM
    layouts for bf16 on CPU); `backend` is the model's, decided once.
    An empty batch of targets gives a zero that still depends on the inputs (so backward works).
    """
    if labels.numel() == 0:
        return rows.sum() * 0.0
    return decoder_cross_entropy(rows, decoder_weight, decoder_bias, labels, backend)


def mention_anchors(hidden: torch.Tensor, mention_index: torch.Tensor, start: torch.Tensor,
                    end: torch.Tensor) -> torch.Tensor:
    """Mean of each mention's token states: hidden [B, L, H], mention_index/start/end [N] -> [N, H].

    One matmul with a [N, B*L] averaging matrix (row n has 1/len over the mention's tokens)."""
    b, length, h = hidden.shape
    pos = torch.arange(length, device=hidden.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])  # [N, L]
    weights = inside.to(hidden.dtype) / (end - start).clamp(min=1)[:, None].to(hidden.dtype)
    full = hidden.new_zeros(mention_index.numel(), b, length)
    full[torch.arange(mention_index.numel(), device=hidden.device), mention_index] = weights
    return full.view(-1, b * length) @ hidden.reshape(b * length, h)


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [S, Ls, H], attention_mask [S, Ls] (1 = real token) -> mean over real tokens [S, H].

    Padding neither attends (the encoder masks it) nor enters the mean (the reference did both)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [S, Ls, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def cmrm_scores(anchor: torch.Tensor, sample_emb: torch.Tensor, sample_index: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """anchor [N, H], sample_emb [S, H], sample_index [N, 1+K] -> cosine / temperature [N, 1+K] of
    each mention's positive (slot 0) and K negatives; -inf where a negative is missing (-1)."""
    a = F.normalize(anchor.float(), dim=-1)
    s = F.normalize(sample_emb.float(), dim=-1)
    picked = (a @ s.T / temperature).gather(1, sample_index.clamp(min=0))  # [N, 1+K]
    return picked.masked_fill(sample_index < 0, float("-inf"))


def cmrm_loss(anchor: torch.Tensor, sample_emb: torch.Tensor, sample_index: torch.Tensor,
              temperature: float, in_batch_negatives: bool = False) -> torch.Tensor:
    """Contrastive loss over mentions (method.md, section 2).

    anchor [N, H]: mention means from the MLM pass; sample_emb [S, H]: pooled sample texts;
    sample_index [N, 1+K]: row of the positive (slot 0) and of K negatives in `sample_emb`,
    -1 for a missing negative (excluded from the softmax). Score = cosine / temperature;
    cross-entropy with slot 0 as the target, averaged over the N mentions (not over tokens).
    With `in_batch_negatives`, every sample text of the batch other than the positive is a negative.
    Returns a zero that depends on the inputs when N == 0.
    """
    if anchor.shape[0] == 0:
        return anchor.sum() * 0.0 + sample_emb.sum() * 0.0
    if in_batch_negatives:
        a = F.normalize(anchor.float(), dim=-1)
        s = F.normalize(sample_emb.float(), dim=-1)
        return F.cross_entropy(a @ s.T / temperature, sample_index[:, 0])
    picked = cmrm_scores(anchor, sample_emb, sample_index, temperature)
    target = torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device)
    return F.cross_entropy(picked, target)
