"""CMRM's samples (method.md, section 2), one module for the collator and the relation probe.

For a linked mention: one positive (the entity's description, else a random 1-hop fact whose tail
is not a held-out head) and K negatives (hop 2..3, not hop 1, `kg_store.sample_negatives`), each
rendered as a short text (`sample_text`: the mention's name unless `cmrm.render` is "tail", the
relation if `cmrm.relation_in_text`, the tail's name, cut to `cmrm.sample_chars`); the batch's
unique texts are tokenized in one call (`tokenize_samples`, which also builds the pool mask of
`cmrm.pool`), texts that tokenize alike are merged, and with in-batch negatives every other text of
the batch is a candidate except those naming a 1-hop neighbour of the mention's entity.
`PretrainCollator` draws samples through `CMRMSampler`; `ckbert.evaluation.relation_probe` renders
and pools its candidates with `sample_text`, `name_chars` and `tokenize_samples`, so both see the
same texts and pools.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ckbert.data_prep.kg_store import KGStore, heldout_entity, is_neighbour, sample_negatives, sample_positive
from ckbert.train_config import CMRMConfig

# Counted per batch and logged: kept mentions; mentions dropped for lack of a positive / of any
# negative; mentions with fewer than K negatives (shortfall) and their missing slots; negatives
# dropped because they tokenize like the positive or another negative (merged); mentions of a
# held-out head (cmrm.heldout_heads), never anchors.
# "candidates": summed over kept mentions, the texts in each one's softmax (positive included), so
# that a window's mean is the chance level's ln(candidates) with in-batch negatives as without
CMRM_STAT_KEYS = ("mentions", "no_positive", "no_negative", "shortfall", "missing_slots", "merged", "heldout",
                  "candidates")
# Draws of a 1-hop fact before a mention counts as no_positive (its facts may all end at held-out heads).
POSITIVE_TRIES = 8


def sample_text(kg: KGStore, mention: str, rel: int | None, tail: int, cmrm: CMRMConfig) -> str:
    """A CMRM sample: the mention's entity name (unless `cmrm.render` is "tail"), then (optionally)
    the relation, then the tail's name, cut to `cmrm.sample_chars` characters (method.md, section 2).
    The relation probe renders its candidates with this function too."""
    text = mention if cmrm.render == "mention_tail" else ""
    if rel is not None and cmrm.relation_in_text:
        text += kg.relation_name(rel)
    return (text + kg.entity_name(tail))[: cmrm.sample_chars]


def name_chars(name: str, cmrm: CMRMConfig) -> int:
    """Characters of the mention's name at the start of its sample texts (0 when rendered "tail")."""
    return len(name) if cmrm.render == "mention_tail" else 0


def tokenize_samples(tokenizer: Any, texts: list[str], prefix_chars: list[int], cmrm: CMRMConfig
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample texts -> input_ids, attention_mask and pool mask [S, Ls] (int64). The pool mask is the
    attention mask (`cmrm.pool` "text") or the tokens whose characters start at or after the
    text's first `prefix_chars` (the mention's name; "tail"); a text with no tail token pools
    whole. Used by the collator and by the relation probe, so both pool alike."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=cmrm.sample_chars + 2, return_tensors="np",
                    return_token_type_ids=False, return_offsets_mapping=cmrm.pool == "tail")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    if cmrm.pool == "text":
        return ids, mask, mask
    offsets = enc["offset_mapping"]  # [S, Ls, 2]; special tokens and padding are (0, 0)
    real = offsets[..., 1] > offsets[..., 0]
    pool = (real & (offsets[..., 0] >= np.asarray(prefix_chars)[:, None])).astype(np.int64)
    empty = pool.sum(1) == 0
    pool[empty] = mask[empty]
    return ids, mask, pool


class CMRMSampler:
    """Draws and tokenizes one batch's CMRM samples from the KG store (the collator's second half)."""

    def __init__(self, kg: KGStore, cmrm: CMRMConfig, tokenizer: Any):
        self.kg = kg
        self.cmrm = cmrm
        self.tok = tokenizer
        self._heldout_cache: dict[int, bool] = {}

    def render(self, mention: str, rel: int | None, tail: int) -> str:
        return sample_text(self.kg, mention, rel, tail, self.cmrm)

    def heldout(self, ent: int) -> bool:
        if self.cmrm.heldout_heads <= 0:
            return False
        if ent not in self._heldout_cache:
            self._heldout_cache[ent] = heldout_entity(self.kg.entity_name(ent), self.cmrm.heldout_heads)
        return self._heldout_cache[ent]

    def positive_fact(self, ent: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """A random 1-hop fact whose tail is not a held-out head (redrawn up to POSITIVE_TRIES times)."""
        for _ in range(POSITIVE_TRIES if self.cmrm.heldout_heads > 0 else 1):
            fact = sample_positive(self.kg, ent, rng)
            if fact is None or not self.heldout(fact[1]):
                return fact
        return None

    def samples(self, mentions, rng, texts: dict[str, int], stats: dict[str, int],
                prefix: dict[str, int] | None = None, tails: dict[str, int] | None = None):
        """Per kept mention (start, end, entity): [positive, K negatives] as indices into `texts`
        (-1 = missing); `prefix` gets each text's name length in characters (where its tail
        starts), `tails` the entity each text names (-1 for a description)."""
        prefix = {} if prefix is None else prefix
        tails = {} if tails is None else tails
        k = self.cmrm.negatives
        if self.cmrm.heldout_heads > 0:  # before the cap, so held-out mentions leave room for others
            kept_out = [m for m in mentions if not self.heldout(m[2])]
            stats["heldout"] += len(mentions) - len(kept_out)
            mentions = kept_out
        if len(mentions) > self.cmrm.mentions_per_sequence:
            pick = np.sort(rng.choice(len(mentions), self.cmrm.mentions_per_sequence, replace=False))
            mentions = [mentions[i] for i in pick]
        kept, slots = [], []
        for start, end, ent in mentions:
            name = self.kg.entity_name(ent)
            desc = self.kg.description(ent)
            if desc:
                pos_text, pos_tail = (name[: name_chars(name, self.cmrm)] + desc)[: self.cmrm.sample_chars], -1
            else:
                fact = self.positive_fact(ent, rng)
                if fact is None:
                    stats["no_positive"] += 1
                    continue
                pos_text, pos_tail = self.render(name, int(fact[0]), int(fact[1])), int(fact[1])
            negs = sample_negatives(self.kg, ent, k, rng, max_hop=self.cmrm.max_hop) if k else []
            if len(negs) == 0 and k:
                stats["no_negative"] += 1
                continue
            if len(negs) < k:
                stats["shortfall"] += 1  # the gap stays -1 and is excluded from the softmax
                stats["missing_slots"] += k - len(negs)
            neg_texts = [self.render(name, None, int(t)) for t in negs]
            row = [texts.setdefault(t, len(texts)) for t in (pos_text, *neg_texts)]
            for t, tail in zip((pos_text, *neg_texts), (pos_tail, *negs), strict=True):
                prefix.setdefault(t, name_chars(name, self.cmrm))
                tails.setdefault(t, int(tail))
            slots.append(row + [-1] * (k - len(negs)))
            kept.append((start, end, int(ent)))
        return kept, slots

    def tokenize(self, texts: list[str], slots: list[list[int]], stats: dict[str, int],
                 prefix: dict[str, int], tails: dict[str, int] | None = None, ents: list[int] | None = None):
        """Tokenize the unique texts in one call, then merge texts that tokenize identically (e.g.
        names differing only in [UNK] characters): a negative identical to its positive, or to an
        earlier negative, is dropped and counted as a missing slot.

        A mention left without any negative would have a one-candidate softmax (loss 0, no
        gradient): it is dropped and counted as `no_negative`, not averaged into the loss.

        With in-batch negatives every other text of the batch is a candidate too, except texts
        naming a 1-hop neighbour of the mention's entity (`tails`, `ents`): another positive of the
        same entity is no negative (sample_exclude [N', S] marks them).

        Returns sample_input_ids [S, Ls], sample_attention_mask [S, Ls], sample_pool_mask [S, Ls]
        (the tokens the pool averages, `cmrm.pool`), sample_index [N', 1+K], sample_exclude
        [N', S] (bool; all False without in-batch negatives) and the kept mentions' indices [N']
        into `slots`."""
        ids, mask, pool = tokenize_samples(self.tok, texts, [prefix[t] for t in texts], self.cmrm)
        _, first, remap = np.unique(ids, axis=0, return_index=True, return_inverse=True)
        keep = np.sort(first)  # unique rows in first-seen order
        new_of_kept = np.full(len(texts), -1, dtype=np.int64)
        new_of_kept[keep] = np.arange(keep.size)
        to_new = new_of_kept[first[remap.reshape(-1)]]  # old text index -> row of the merged tensors
        k = self.cmrm.negatives
        index = np.full((len(slots), 1 + k), -1, dtype=np.int64)
        kept = np.zeros(len(slots), dtype=bool)
        exclude = np.zeros((len(slots), keep.size), dtype=bool)
        in_batch = self.cmrm.in_batch_negatives
        if in_batch:  # (merged text, entity it names) pairs; texts that tokenize alike are merged
            pairs = sorted({(int(to_new[old]), tails[text]) for old, text in enumerate(texts) if tails[text] >= 0})
            named_text = np.array([t for t, _ in pairs], dtype=np.int64)
            named_ent = np.array([e for _, e in pairs], dtype=np.int64)
        for n, row in enumerate(slots):
            out = [int(to_new[row[0]])]
            for old in row[1:]:
                if old >= 0 and int(to_new[old]) not in out:
                    out.append(int(to_new[old]))
            lost = len([o for o in row[1:] if o >= 0]) - (len(out) - 1)
            if lost:
                stats["merged"] += lost
                stats["missing_slots"] += lost
                if len([o for o in row[1:] if o >= 0]) == k:
                    stats["shortfall"] += 1
            index[n, : len(out)] = out
            if in_batch:
                # texts naming the entity or a 1-hop neighbour of it (bisection: a hub costs no more)
                hit = is_neighbour(self.kg, ents[n], named_ent) | (named_ent == ents[n])
                exclude[n] = np.bincount(named_text[hit], minlength=keep.size) > 0
                exclude[n, out[0]] = False
                candidates = keep.size - int(exclude[n].sum())  # every text it is not excluded from
            else:
                candidates = len(out)
            kept[n] = candidates > 1  # the positive and at least one other
            if kept[n]:
                stats["candidates"] += candidates
            else:
                stats["no_negative"] += 1
                stats["mentions"] -= 1
        return (ids[keep], mask[keep], pool[keep], torch.from_numpy(index[kept]), torch.from_numpy(exclude[kept]),
                np.flatnonzero(kept))
