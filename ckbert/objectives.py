"""CMRM as small functions (method.md, section 2): anchors, pooling, scores and the loss.

The MLM loss is the model's head (`CKBertForPreTraining.mlm_loss`: the decoder is the tied word
embedding); the training step (`ckbert.train.PretrainForward` and `train_step`) forms the total
`L_mlm + lambda * L_cmrm` in one place. Nothing here knows about weights, precision or devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mention_anchors(hidden: torch.Tensor, mention_index: torch.Tensor, start: torch.Tensor,
                    end: torch.Tensor) -> torch.Tensor:
    """Mean of each mention's token states: hidden [B, L, H], mention_index/start/end [N] -> [N, H].

    A gather of the mentions' T tokens and a segment sum (index_add), divided by the lengths."""
    length, h = hidden.shape[1], hidden.shape[2]
    lens = (end - start).clamp(min=0)  # [N]
    owner = torch.repeat_interleave(torch.arange(lens.numel(), device=hidden.device), lens)  # [T]
    first = torch.cumsum(lens, 0) - lens  # [N] where each mention's tokens start in the flat list
    offset = torch.arange(owner.numel(), device=hidden.device) - first[owner]  # [T] position inside its mention
    rows = hidden.reshape(-1, h).index_select(0, mention_index[owner] * length + start[owner] + offset)  # [T, H]
    sums = hidden.new_zeros(lens.numel(), h).index_add_(0, owner, rows)
    return sums / lens.clamp(min=1)[:, None].to(hidden.dtype)


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [S, Ls, H], attention_mask [S, Ls] (1 = real token) -> mean over real tokens [S, H].

    Padding neither attends (the encoder masks it) nor enters the mean (the reference did both)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [S, Ls, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def cmrm_scores(anchor: torch.Tensor, sample_emb: torch.Tensor, sample_index: torch.Tensor,
                temperature: float, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Each mention's candidates scored by cosine / temperature, positive first.

    anchor [N, H], sample_emb [S, H], sample_index [N, 1+K] (slot 0 the positive's row in
    sample_emb, then K negatives, -1 = missing). Without `exclude`: [N, 1+K], -inf where a negative
    is missing. With `exclude` [N, S] (in-batch negatives; True = not a candidate of that mention):
    [N, 1+S], the positive in column 0 and every sample text in columns 1.. (-inf where excluded
    and at the positive's own column), so that column 0 is the target either way."""
    a = F.normalize(anchor.float(), dim=-1)
    s = F.normalize(sample_emb.float(), dim=-1)
    logits = a @ s.T / temperature  # [N, S]
    positive = sample_index[:, :1]  # [N, 1]
    if exclude is not None:
        off = exclude.clone()
        off.scatter_(1, positive, True)  # the positive sits in column 0 instead
        return torch.cat([logits.gather(1, positive), logits.masked_fill(off, float("-inf"))], dim=1)
    picked = logits.gather(1, sample_index.clamp(min=0))  # [N, 1+K]
    return picked.masked_fill(sample_index < 0, float("-inf"))


def cmrm_loss(anchor: torch.Tensor, sample_emb: torch.Tensor, sample_index: torch.Tensor,
              temperature: float, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Contrastive loss over mentions (method.md, section 2).

    anchor [N, H]: mention means from the MLM pass; sample_emb [S, H]: pooled sample texts;
    sample_index [N, 1+K]: row of the positive (slot 0) and of K negatives in `sample_emb`,
    -1 for a missing negative (excluded from the softmax). Score = cosine / temperature;
    cross-entropy with the positive as the target, averaged over the N mentions (not over tokens).
    With `exclude` [N, S] (in-batch negatives), every sample text of the batch that `exclude` does
    not rule out for a mention is one of its negatives (`cmrm_scores`).
    Returns a zero that depends on the inputs when N == 0.
    """
    if anchor.shape[0] == 0:
        return anchor.sum() * 0.0 + sample_emb.sum() * 0.0
    picked = cmrm_scores(anchor, sample_emb, sample_index, temperature, exclude)
    target = torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device)
    return F.cross_entropy(picked, target)
