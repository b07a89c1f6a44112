"""Batch construction for pretraining: LMLM masks and CMRM samples, drawn at batch time.

Rows follow the prepared-dataset schema (docs/contracts.md). For each row the collator

1. picks whole words as prediction targets within a budget of `rate` x tokens (method.md, sec. 1):
   mode "arcs": DEP arcs (30%), SDP arcs (30%), then random whole words for the rest;
   mode "words": linked entity mentions and content words (by POS) take `priority_share` (60%),
   random whole words the rest;
   (`masking.strategy` "whole_word" / "random_token" replace this choice with random whole words /
   random single tokens, same budget, no markers: the ablation's baselines);
2. inserts `[dep]`/`[sdp]` markers around the words that whitelisted relations name; the markers
   are prediction targets too; truncates after insertion at a word boundary, so no marker pair is
   ever cut in half;
3. corrupts the targets 80/10/10 ([MASK] / random token / unchanged) and adds [CLS]/[SEP];
4. keeps up to `mentions_per_sequence` linked mentions (none of a held-out head) and draws their
   CMRM samples through `ckbert.cmrm_samples.CMRMSampler` (method.md, sec. 2): one positive and K
   hop-2..3 negatives per mention, rendered as short texts; with in-batch negatives, marks which of
   the batch's texts are no negative for each mention (they name one of its neighbours).

Everything random comes from one numpy Generator per row seeded with (seed, epoch, row index), so a
batch is reproducible wherever and whenever it is built, and every epoch sees new masks. The
batch's unique sample texts are tokenized once, in a single call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ckbert.cmrm_samples import CMRM_STAT_KEYS, CMRMSampler
from ckbert.data_prep.kg_store import KGStore
from ckbert.train_config import CMRMConfig, MaskingConfig

# Marker whitelist (method.md, sec. 1): which word of an arc gets the marker pair.
DEPENDENT, HEAD, BOTH = 1, 2, 3
DEP_MARKED = {"SBV": DEPENDENT, "RAD": DEPENDENT, "ATT": HEAD, "ADV": HEAD, "DBL": HEAD, "LAD": HEAD,
              "COO": BOTH, "HED": DEPENDENT}
SDP_MARKED = {"AGT": BOTH, "EXP": BOTH}

# Source of each prediction target, for the mask-rate statistics.
SRC_DEP, SRC_SDP, SRC_PRIORITY, SRC_RANDOM, SRC_MARKER = 1, 2, 3, 4, 5

@dataclass
class RowPlan:
    """One row after masking, before padding (all arrays are positions inside the row's body)."""

    ids: np.ndarray  # [T'] token ids with markers inserted, truncated, without [CLS]/[SEP]
    target_pos: np.ndarray  # [M] positions of prediction targets in `ids`
    target_src: np.ndarray  # [M] SRC_* per target
    mentions: list[tuple[int, int, int]]  # (start, end, entity id) in `ids` coordinates


def row_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The generator of one row in one epoch; (seed, epoch, row) fixes every random choice."""
    return np.random.default_rng([seed, epoch, row])


def _stochastic_round(x: float, rng: np.random.Generator) -> int:
    """floor(x) or ceil(x), unbiased: the DEP/SDP shares of a small budget stay 30% on average."""
    base = int(np.floor(x))
    return base + int(rng.random() < x - base)


def _mark_codes(labels: list[str], table: dict[str, int]) -> np.ndarray:
    return np.array([table.get(name, 0) for name in labels], dtype=np.int8)


class PretrainCollator:
    """Turns a list of `(epoch, row_index, row)` items into the batch of docs/contracts.md."""

    def __init__(
        self,
        tokenizer: Any,
        manifest: dict[str, Any],
        kg: KGStore | None,
        masking: MaskingConfig,
        cmrm: CMRMConfig,
        max_length: int,
        seed: int,
        pad_to_multiple_of: int = 1,
    ):
        self.tok = tokenizer
        self.masking = masking
        self.cmrm = cmrm
        self.seed = seed
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.mode = manifest["masking_mode"]
        if self.mode not in ("arcs", "words"):
            raise ValueError(f"unknown masking_mode {self.mode!r} in the manifest")
        if cmrm.enabled and kg is None:
            raise ValueError("CMRM needs the KG store")
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id
        self.dep_id = int(manifest["tokenizer"]["dep_token_id"])
        self.sdp_id = int(manifest["tokenizer"]["sdp_token_id"])
        # Random replacements come from the ordinary vocabulary (never [PAD]/[CLS]/markers ...).
        special = set(tokenizer.all_special_ids) | {self.dep_id, self.sdp_id}
        self.random_pool = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
        prefixes = tuple(masking.content_pos_prefixes)
        self.content_pos = np.array([tag.startswith(prefixes) for tag in manifest["pos_tags"]] + [False])
        self.dep_marks = _mark_codes(manifest.get("dep_labels", []), DEP_MARKED)
        self.sdp_marks = _mark_codes(manifest.get("sdp_labels", []), SDP_MARKED)
        self.sampler = CMRMSampler(kg, cmrm, tokenizer) if kg is not None else None

    # ---- LMLM -------------------------------------------------------------------------------
    def _select_arcs(self, rng, heads, labels, marks, word_len, masked, budget, source, src_code,
                     wraps, marker_id) -> int:
        """Mask both words of random unused arcs while `budget` tokens allow; returns tokens used.

        heads/labels: [W] per dependent word (head -1 = root: only the dependent is masked).
        """
        used = 0
        for w in rng.permutation(len(heads)):
            h = int(heads[w])
            words = [int(w)] if h < 0 else [int(w), h]
            new = [x for x in words if not masked[x]]
            cost = int(word_len[new].sum()) if new else 0
            if used + cost > budget:  # an arc whose words are masked already costs 0 and still marks
                continue
            masked[new] = True
            source[new] = src_code
            used += cost
            code = int(marks[labels[w]]) if self.masking.markers and labels[w] < len(marks) else 0
            if code in (DEPENDENT, BOTH):
                wraps.add((int(w), marker_id))
            if code in (HEAD, BOTH) and h >= 0:
                wraps.add((h, marker_id))
        return used

    @staticmethod
    def _fill(order: np.ndarray, word_len: np.ndarray, masked: np.ndarray, budget: int,
              source: np.ndarray, src_code: int) -> int:
        """Take words of `order` (skipping masked ones and ones that do not fit) up to `budget`."""
        order = order[~masked[order]]
        if budget <= 0 or order.size == 0:
            return 0
        cum = np.cumsum(word_len[order])
        take = order[cum <= budget]  # the prefix that fits, vectorised
        used = int(word_len[take].sum())
        rest = order[cum > budget]
        if used < budget and rest.size:  # then shorter words that still fit
            for w in rest:
                if used + word_len[w] <= budget:
                    take = np.append(take, w)
                    used += int(word_len[w])
                    if used == budget:
                        break
        masked[take] = True
        source[take] = src_code
        return used

    def _plan_row(self, row: dict[str, Any], rng: np.random.Generator) -> RowPlan:
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        word_ids = np.asarray(row["word_ids"], dtype=np.int64)
        n_tok = ids.size
        n_words = int(word_ids[-1]) + 1 if n_tok else 0
        word_len = np.bincount(word_ids, minlength=n_words)
        word_start = np.concatenate([[0], np.cumsum(word_len)[:-1]])
        masked = np.zeros(n_words, dtype=bool)
        source = np.zeros(n_words, dtype=np.int8)
        wraps: set[tuple[int, int]] = set()  # (word, marker id): word gets marker before and after
        budget = max(1, int(round(self.masking.rate * n_tok))) if n_tok else 0

        ent_start = np.asarray(row["ent_start"], dtype=np.int64)
        ent_end = np.asarray(row["ent_end"], dtype=np.int64)
        if self.cmrm.enabled and self.cmrm.anchor == "unmasked":  # mention words are never targets
            for s, e in zip(ent_start, ent_end, strict=True):
                masked[word_ids[s:e]] = True  # taken, with source 0: not a target
        used = 0
        lmlm = self.masking.strategy == "lmlm"  # else an ablation baseline: no linguistic choice, no markers
        if lmlm and self.mode == "arcs":
            dep_head = np.asarray(row["dep_head"], dtype=np.int64)
            sdp_head = np.asarray(row["sdp_head"], dtype=np.int64)
            if dep_head.size:
                used += self._select_arcs(rng, dep_head, np.asarray(row["dep_label"], dtype=np.int64),
                                          self.dep_marks, word_len, masked,
                                          _stochastic_round(budget * self.masking.dep_share, rng), source, SRC_DEP,
                                          wraps, self.dep_id)
            if sdp_head.size:
                used += self._select_arcs(rng, sdp_head, np.asarray(row["sdp_label"], dtype=np.int64),
                                          self.sdp_marks, word_len, masked,
                                          _stochastic_round(budget * self.masking.sdp_share, rng), source, SRC_SDP,
                                          wraps, self.sdp_id)
        elif lmlm:
            # Entity-mention words and content words (by POS) first, in random order.
            priority = self.content_pos[np.asarray(row["word_pos"], dtype=np.int64)]
            for s, e in zip(ent_start, ent_end, strict=True):
                priority[word_ids[s:e]] = True
            cand = np.flatnonzero(priority)
            share = _stochastic_round(budget * self.masking.priority_share, rng)  # the rest: random words
            used += self._fill(rng.permutation(cand), word_len, masked, share, source, SRC_PRIORITY)
        if self.masking.strategy != "random_token":
            used += self._fill(rng.permutation(n_words), word_len, masked, budget - used, source, SRC_RANDOM)

        # Marker insertion. Each wrap is one word; several wraps of one word nest ([sdp] outside).
        # Sort key per insert: (token position, closers before openers, nesting order).
        ins_pos, ins_key, ins_id = [], [], []
        for w, mid in sorted(wraps):
            level = 1 if mid == self.sdp_id else 0
            s = int(word_start[w])
            e = s + int(word_len[w])
            ins_pos += [s, e]
            ins_key += [(s, 1, -level), (e, 0, level)]
            ins_id += [mid, mid]
        tok_src = source[word_ids]  # [T] source of each original token (0 = not a target)
        if self.masking.strategy == "random_token":  # BERT's targets: single tokens, words ignored
            tok_src = np.zeros(n_tok, dtype=np.int8)
            free = np.flatnonzero(~masked[word_ids])  # all tokens, unless mentions are kept unmasked
            tok_src[rng.choice(free, size=min(budget, free.size), replace=False)] = SRC_RANDOM
        if ins_pos:
            order = sorted(range(len(ins_pos)), key=lambda i: ins_key[i])
            pos_sorted = np.array([ins_pos[i] for i in order], dtype=np.int64)
            new_ids = np.insert(ids, pos_sorted, [ins_id[i] for i in order])
            # new index of original token t = t + number of inserts placed before it
            shift = np.searchsorted(pos_sorted, np.arange(n_tok), side="right")
            new_tok = np.arange(n_tok) + shift
            marker_pos = np.setdiff1d(np.arange(new_ids.size), new_tok, assume_unique=True)
            # a word's unit starts at its first opening marker: new index of its first token minus
            # the openers at that position (closers of the previous word sit before them)
            openers = np.bincount([ins_pos[i] for i in order if ins_key[i][1] == 1], minlength=n_tok + 1)
            unit_start = new_tok[word_start] - openers[word_start]
        else:
            new_ids, new_tok = ids, np.arange(n_tok)
            marker_pos = np.zeros(0, dtype=np.int64)
            unit_start = word_start

        # Truncate at a word boundary: never inside a word, never between a marker pair.
        cap = self.max_length - 2
        cut = new_ids.size
        if cut > cap:
            ok = unit_start[unit_start <= cap]
            cut = int(ok.max()) if ok.size else cap
        tgt_tok = np.flatnonzero(tok_src)
        tpos = np.concatenate([new_tok[tgt_tok], marker_pos])
        tsrc = np.concatenate([tok_src[tgt_tok], np.full(marker_pos.size, SRC_MARKER, dtype=np.int8)])
        keep = tpos < cut
        order = np.argsort(tpos[keep], kind="stable")
        mentions = []
        for s, e, ent in zip(ent_start, ent_end, row["ent_id"], strict=True):
            ns, ne = int(new_tok[s]), int(new_tok[e - 1]) + 1
            if ne <= cut:
                mentions.append((ns, ne, int(ent)))
        return RowPlan(new_ids[:cut], tpos[keep][order], tsrc[keep][order], mentions)

    def _corrupt(self, ids: np.ndarray, pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """80/10/10: [MASK], a random ordinary token, or unchanged (in place on a copy)."""
        out = ids.copy()
        u = rng.random(pos.size)
        to_mask = u < self.masking.mask_prob
        to_rand = (u >= self.masking.mask_prob) & (u < self.masking.mask_prob + self.masking.random_prob)
        out[pos[to_mask]] = self.mask_id
        out[pos[to_rand]] = rng.choice(self.random_pool, size=int(to_rand.sum()))
        return out

    # ---- batch ------------------------------------------------------------------------------
    def __call__(self, items: list[tuple[int, int, dict[str, Any]]]) -> dict[str, torch.Tensor]:
        plans, corrupted = [], []
        texts: dict[str, int] = {}
        prefix: dict[str, int] = {}
        tails: dict[str, int] = {}
        stats = dict.fromkeys(CMRM_STAT_KEYS, 0)
        m_row, m_start, m_end, m_ent, m_slots = [], [], [], [], []
        for b, (epoch, index, row) in enumerate(items):
            rng = row_rng(self.seed, epoch, index)
            plan = self._plan_row(row, rng)
            plans.append(plan)
            corrupted.append(self._corrupt(plan.ids, plan.target_pos, rng))
            if self.cmrm.enabled and plan.mentions:
                kept, slots = self.sampler.samples(plan.mentions, rng, texts, stats, prefix, tails)
                stats["mentions"] += len(kept)
                m_row += [b] * len(kept)
                m_start += [s + 1 for s, _, _ in kept]  # +1: [CLS]
                m_end += [e + 1 for _, e, _ in kept]
                m_ent += [ent for _, _, ent in kept]
                m_slots += slots

        bsz = len(items)
        length = max(p.ids.size for p in plans) + 2
        mult = self.pad_to_multiple_of
        length = min(-(-length // mult) * mult, max(self.max_length, length))
        input_ids = np.full((bsz, length), self.pad_id, dtype=np.int64)
        attention = np.zeros((bsz, length), dtype=np.int64)
        flat_pos, labels, sources = [], [], []
        for b, (plan, ids) in enumerate(zip(plans, corrupted, strict=True)):
            n = ids.size
            input_ids[b, 0] = self.cls_id
            input_ids[b, 1 : n + 1] = ids
            input_ids[b, n + 1] = self.sep_id
            attention[b, : n + 2] = 1
            flat_pos.append(b * length + 1 + plan.target_pos)
            labels.append(plan.ids[plan.target_pos])
            sources.append(plan.target_src)

        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "mlm_positions": torch.from_numpy(np.concatenate(flat_pos).astype(np.int64)),
            "mlm_labels": torch.from_numpy(np.concatenate(labels).astype(np.int64)),
            "mlm_sources": torch.from_numpy(np.concatenate(sources).astype(np.int64)),
        }
        k = self.cmrm.negatives
        batch["mention_index"] = torch.tensor(m_row, dtype=torch.long)
        batch["mention_start"] = torch.tensor(m_start, dtype=torch.long)
        batch["mention_end"] = torch.tensor(m_end, dtype=torch.long)
        batch["sample_index"] = torch.zeros((0, 1 + k), dtype=torch.long)
        if texts:
            sample_ids, sample_mask, sample_pool, batch["sample_index"], batch["sample_exclude"], kept = \
                self.sampler.tokenize(list(texts), m_slots, stats, prefix, tails, m_ent)
            for key in ("mention_index", "mention_start", "mention_end"):
                batch[key] = batch[key][torch.from_numpy(kept)]
            batch["sample_input_ids"] = torch.from_numpy(sample_ids)
            batch["sample_attention_mask"] = torch.from_numpy(sample_mask)
            batch["sample_pool_mask"] = torch.from_numpy(sample_pool)
        else:
            for key in ("sample_input_ids", "sample_attention_mask", "sample_pool_mask"):
                batch[key] = torch.zeros((0, 2), dtype=torch.long)
            batch["sample_exclude"] = torch.zeros((0, 0), dtype=torch.bool)
        batch["cmrm_stats"] = torch.tensor([stats[key] for key in CMRM_STAT_KEYS], dtype=torch.long)
        return batch
