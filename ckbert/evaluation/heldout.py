"""How a model is judged: held-out rows, random-token masks, the unigram baseline, and collapse.

A run's own objective (LMLM masks) can flatter a model that only learned which tokens tend to be
targets, so every evaluation reports, on rows never trained on (the last rows of the prepared
dataset, `heldout_start`):

- the MLM cross-entropy and top-1 accuracy on **random-token masks** (15% of the tokens, every
  target replaced by [MASK]: nothing can be copied), and on the objective's own masks;
- beside each, the **unigram baseline**: the same targets scored by the token frequencies of the
  training rows (add-one smoothed), and its top-1 (always the most frequent token);
- the **CMRM accuracy**: how often a mention's positive sample scores strictly above all its
  negatives, beside chance (the mean of 1 / candidates);
- the **collapse signal**: the mean pairwise cosine of last-layer states at real positions. A model
  on the first plateau of pretraining maps every position to one vector (cosine near 1), and then
  neither the MLM head nor CMRM can tell tokens apart.

`ckbert.train` uses these during a run; `ckbert.evaluation.mlm` applies them to any exported folder
through plain `transformers`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ckbert.train_config import MaskingConfig

# The random-token evaluation masks: 15% single tokens, all shown as [MASK].
RANDOM_TOKEN_EVAL = MaskingConfig(rate=0.15, strategy="random_token", mask_prob=1.0, random_prob=0.0)
COLLAPSE_COSINE = 0.9  # above this mean cosine after warm-up, a run warns once
COSINE_ROWS = 16  # the collapse signal is measured on the first held-out rows (random-token masks)


def heldout_start(n_rows: int, eval_rows: int) -> int:
    """Rows [start, n_rows) are held out for evaluation (at most a tenth of the data)."""
    return n_rows - min(eval_rows, n_rows // 10)


# The held-out rows (and, in `ckbert.data_prep.kg_store.heldout_part`, the held-out heads) are split
# in two (issue 24): "validation" for screens and recipe choices, "test" reported once per recipe.
SPLITS = ("validation", "test", "all")


def split_rows(n_rows: int, eval_rows: int, split: str) -> range:
    """The held-out rows of `split`: validation is the first half of [start, n_rows), test the rest."""
    start = heldout_start(n_rows, eval_rows)
    mid = start + (n_rows - start) // 2
    return {"validation": range(start, mid), "test": range(mid, n_rows), "all": range(start, n_rows)}[split]


def recorded_split(hf_config: Any) -> dict[str, Any] | None:
    """config.json `ckbert_split` of an export (`ckbert.export.recorded_split`), or None."""
    value = getattr(hf_config, "ckbert_split", None)
    return dict(value) if isinstance(value, dict) else None


def eval_rows_for(hf_config: Any, n_rows: int, requested: int | None, source: Any) -> int:
    """The held-out row count to score a model on: `requested` (an --eval-rows) or the one the model
    recorded; refused when it would take in rows the model trained on, or when the model recorded
    another dataset's row count. Without a record: `requested`, else 256."""
    from ckbert.errors import UserError

    split = recorded_split(hf_config)
    if split is None:
        return 256 if requested is None else requested
    if split.get("rows") != n_rows:
        raise UserError(f"the model recorded a split of {split.get('rows')} rows, this dataset has {n_rows}: "
                        "not the data it was trained on", path=source)
    held = n_rows - int(split["train_rows"])
    if requested is not None and heldout_start(n_rows, requested) < int(split["train_rows"]):
        raise UserError(f"--eval-rows {requested} takes in rows the model trained on (it held out the last {held} "
                        f"of {n_rows} rows)")
    return held if requested is None else requested


def unigram_log_probs(dataset, n_train: int, vocab_size: int) -> torch.Tensor:
    """log p(token) [V] from the token counts of rows [0, n_train), add-one smoothed. Counted chunk by
    chunk of the memory-mapped Arrow column (a shard's rows at a time), so memory is O(vocabulary +
    one chunk), not a copy of every training token."""
    column = dataset.data.column("input_ids").slice(0, n_train)  # Arrow list<int> column, no Python rows
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in column.chunks:
        ids = np.asarray(chunk.flatten())
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    smoothed = counts.astype(np.float64) + 1.0
    return torch.from_numpy(np.log(smoothed / smoothed.sum())).float()


def mean_pairwise_cosine(hidden: torch.Tensor, attention_mask: torch.Tensor, max_positions: int = 256) -> torch.Tensor:
    """hidden [B, L, H], attention_mask [B, L] -> mean cosine over pairs of distinct real positions
    (at most `max_positions`, evenly spaced over the batch's real tokens)."""
    real = hidden.reshape(-1, hidden.shape[-1])[attention_mask.reshape(-1).bool()].float()
    if real.shape[0] > max_positions:
        real = real[torch.linspace(0, real.shape[0] - 1, max_positions, device=real.device).long()]
    n = real.shape[0]
    if n < 2:
        return hidden.new_zeros(())
    unit = F.normalize(real, dim=-1)
    total = (unit.sum(0) ** 2).sum()  # sum over all ordered pairs, diagonal included
    return (total - n) / (n * (n - 1))


def mlm_counts(logits: torch.Tensor, labels: torch.Tensor, unigram: torch.Tensor) -> dict[str, float]:
    """logits [M, V], labels [M] -> summed CE and top-1 hits of the model and of the unigram baseline."""
    logits = logits.float()
    v = unigram.shape[0]
    uni = unigram.to(logits.device)
    return {
        "ce": F.cross_entropy(logits, labels, reduction="sum").item(),
        "hits": (logits.argmax(-1) == labels).sum().item(),
        "uni_ce": -uni[labels.clamp(max=v - 1)].sum().item(),
        "uni_hits": (labels == int(uni.argmax())).sum().item(),
        "n": labels.numel(),
    }


def cmrm_counts(scores: torch.Tensor) -> dict[str, float]:
    """scores [N, 1+K] (slot 0 the positive, -inf for missing slots) -> summed loss, strict wins of
    the positive (a tie, e.g. a collapsed model, is not a win) and the chance level's sum."""
    if scores.shape[0] == 0:
        return {"cmrm_ce": 0.0, "cmrm_hits": 0.0, "cmrm_chance": 0.0, "cmrm_n": 0}
    scores = scores.float()
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    valid = torch.isfinite(scores).sum(1).float()
    return {
        "cmrm_ce": F.cross_entropy(scores, target, reduction="sum").item(),
        "cmrm_hits": (scores[:, 0] > scores[:, 1:].max(1).values).sum().item(),
        "cmrm_chance": (1.0 / valid).sum().item(),
        "cmrm_n": scores.shape[0],
    }


def summarise(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Totals of `mlm_counts` -> {prefix_mlm, prefix_top1, prefix_unigram_mlm, prefix_unigram_top1}."""
    n = max(sums.get("n", 0), 1)
    return {f"{prefix}_mlm": sums.get("ce", 0.0) / n, f"{prefix}_top1": sums.get("hits", 0) / n,
            f"{prefix}_unigram_mlm": sums.get("uni_ce", 0.0) / n, f"{prefix}_unigram_top1": sums.get("uni_hits", 0) / n}


def summarise_cmrm(sums: dict[str, float]) -> dict[str, float]:
    n = sums.get("cmrm_n", 0)
    if not n:
        return {}
    return {"cmrm": sums["cmrm_ce"] / n, "cmrm_acc": sums["cmrm_hits"] / n,
            "cmrm_chance": sums["cmrm_chance"] / n, "cmrm_mentions": int(n)}


def add(total: dict[str, float], part: dict[str, Any]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value
