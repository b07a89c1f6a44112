"""The collator on real prepared rows (mode "words") and on hand-checkable arc rows (mode "arcs")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckbert.cmrm_samples import CMRM_STAT_KEYS
from ckbert.collator import (
    SRC_DEP,
    SRC_MARKER,
    SRC_PRIORITY,
    SRC_RANDOM,
    SRC_SDP,
    PretrainCollator,
)
from ckbert.train import KeyedRows
from ckbert.train_config import CMRMConfig, MaskingConfig


def make(prepared, max_length=64, seed=0, **masking):
    manifest, ds, kg, tok = prepared
    return PretrainCollator(tok, manifest, kg, MaskingConfig(**masking), CMRMConfig(), max_length, seed)


def items(prepared, rows, epoch=0):
    return KeyedRows(prepared[1]).__getitems__([(epoch, r) for r in rows])


def test_budget_whole_words_and_sources(prepared):
    manifest, ds, kg, tok = prepared
    col = make(prepared)
    n_tok = n_tgt = 0
    src_counts = np.zeros(6, dtype=np.int64)
    for start in range(0, 640, 64):
        its = items(prepared, range(start, start + 64))
        batch = col(its)
        length = batch["input_ids"].shape[1]
        pos = batch["mlm_positions"].numpy()
        src = batch["mlm_sources"].numpy()
        src_counts += np.bincount(src, minlength=6)
        n_tgt += int((src != SRC_MARKER).sum())
        n_tok += sum(len(r["input_ids"]) for _, _, r in its)
        # whole words: a word is either entirely a target or not at all
        for b, (_, _, row) in enumerate(its):
            mine = pos[(pos // length) == b] % length - 1  # back to row positions (no markers in words mode)
            wids = np.asarray(row["word_ids"])
            hit = np.zeros(len(wids), dtype=bool)
            hit[mine] = True
            for w in np.unique(wids[hit]):
                assert hit[wids == w].all(), f"row {start + b}: word {w} only partly masked"
            # labels are the original tokens
            lab = batch["mlm_labels"].numpy()[(pos // length) == b]
            assert (lab == np.asarray(row["input_ids"])[mine]).all()
    rate = n_tgt / n_tok
    assert 0.13 < rate <= 0.155, rate  # whole words can undershoot the 15% budget slightly, never overshoot
    # words mode: mentions and content words take priority_share (60%) of the budget, random whole
    # words the rest (whole words undershoot a share a little, so the split is checked to +-5 points)
    assert src_counts[SRC_DEP] == src_counts[SRC_SDP] == src_counts[SRC_MARKER] == 0
    share = src_counts[SRC_PRIORITY] / (src_counts[SRC_PRIORITY] + src_counts[SRC_RANDOM])
    assert abs(share - 0.6) < 0.05, share


def test_words_mode_priority_share_is_configurable(prepared):
    its = items(prepared, range(0, 128))
    only = np.bincount(make(prepared, priority_share=1.0)(its)["mlm_sources"].numpy(), minlength=6)
    none = np.bincount(make(prepared, priority_share=0.0)(its)["mlm_sources"].numpy(), minlength=6)
    assert only[SRC_PRIORITY] > 5 * only[SRC_RANDOM]  # random words only where no content word fits
    assert none[SRC_PRIORITY] == 0 and none[SRC_RANDOM] > 0


def test_corruption_80_10_10(prepared):
    manifest, ds, kg, tok = prepared
    col = make(prepared)
    kinds = np.zeros(3)
    for start in range(0, 800 - 64, 64):
        batch = col(items(prepared, range(start, start + 64)))
        got = batch["input_ids"].view(-1)[batch["mlm_positions"]]
        lab = batch["mlm_labels"]
        kinds += [(got == tok.mask_token_id).sum(), ((got != tok.mask_token_id) & (got != lab)).sum(),
                  (got == lab).sum()]
    share = kinds / kinds.sum()
    # ~2,000 targets: 3 standard errors of a 10% share are about 2 points
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.025 and abs(share[2] - 0.1) < 0.025, share


def test_reproducible_per_row_and_new_every_epoch(prepared):
    col = make(prepared)
    a = col(items(prepared, [5, 6, 7]))
    b = col(items(prepared, [9, 6]))  # row 6 in another batch, at another position
    la, lb = a["input_ids"].shape[1], b["input_ids"].shape[1]
    row_a = a["input_ids"][1]
    row_b = b["input_ids"][1]
    n = int(a["attention_mask"][1].sum())
    assert torch.equal(row_a[:n], row_b[:n])
    pa = a["mlm_positions"][(a["mlm_positions"] // la) == 1] % la
    pb = b["mlm_positions"][(b["mlm_positions"] // lb) == 1] % lb
    assert torch.equal(pa, pb)
    # another epoch: other masks for most rows; another collator instance, same epoch: identical
    e0 = col(items(prepared, range(32)))
    e1 = col(items(prepared, range(32), epoch=1))
    assert not torch.equal(e0["mlm_positions"], e1["mlm_positions"])
    again = make(prepared)(items(prepared, range(32)))
    for key in ("input_ids", "mlm_positions", "mlm_labels", "sample_input_ids", "sample_index"):
        assert torch.equal(e0[key], again[key]), key


def test_cmrm_samples(prepared):
    manifest, ds, kg, tok = prepared
    col = make(prepared)
    seen = shortfall = full = 0
    for start in range(0, 320, 32):
        its = items(prepared, range(start, start + 32))
        batch = col(its)
        stats = batch["cmrm_stats"].tolist()
        shortfall += stats[3]
        assert stats[CMRM_STAT_KEYS.index("candidates")] == int((batch["sample_index"] >= 0).sum())
        sample_ids = [ids[m.bool()].tolist() for ids, m in zip(batch["sample_input_ids"], batch["sample_attention_mask"], strict=True)]
        assert len({tuple(x) for x in sample_ids}) == len(sample_ids)  # unique texts, tokenized once per batch

        def ids_of(text):
            return tok(text[:16])["input_ids"]

        length = batch["input_ids"].shape[1]
        for n in range(batch["mention_index"].numel()):
            b = int(batch["mention_index"][n])
            s, e = int(batch["mention_start"][n]), int(batch["mention_end"][n])
            row = its[b][2]
            # the span in the collated sequence is a linked mention of the row (+1 for [CLS])
            spans = {(rs + 1, re + 1): ent for rs, re, ent in zip(row["ent_start"], row["ent_end"], row["ent_id"], strict=True)}
            assert (s, e) in spans and e <= length
            ent = spans[(s, e)]
            name = kg.entity_name(ent)
            slots = batch["sample_index"][n].tolist()
            assert slots[0] >= 0  # the positive sits in slot 0: a 1-hop fact "mention + tail"
            hop1 = {int(t) for t in kg.neighbors(ent)[1]}
            hop1_texts = [ids_of(name + kg.entity_name(t)) for t in hop1]
            assert sample_ids[slots[0]] in hop1_texts or kg.description(ent)
            negs = [i for i in slots[1:] if i >= 0]
            assert slots[1 + len(negs):] == [-1] * (4 - len(negs))  # missing ones only at the end
            for i in negs:  # each negative starts with the mention
                assert sample_ids[i][: len(ids_of(name)) - 1] == ids_of(name)[:-1]
            seen += 1
            full += len(negs) == 4
    assert seen >= 20 and full > 0, (seen, full)
    assert shortfall == seen - full  # every mention with fewer than 4 negatives is counted


def test_negatives_are_not_one_hop(prepared):
    """At the text level (before tokenization): negatives render entities of hop 2..3, never hop 1."""
    manifest, ds, kg, tok = prepared
    col = make(prepared)
    checked = 0
    for r in range(200):
        row = ds[r]
        mentions = list(zip(row["ent_start"], row["ent_end"], row["ent_id"], strict=True))
        if not mentions:
            continue
        texts, stats = {}, dict.fromkeys(("no_positive", "no_negative", "shortfall", "missing_slots"), 0)
        kept, slots = col.sampler.samples(mentions, np.random.default_rng(r), texts, stats)
        by_index = {i: t for t, i in texts.items()}
        for (start, end, _), row_slots in zip(kept, slots, strict=True):
            ent = next(e for s, e2, e in mentions if (s, e2) == (start, end))
            name = kg.entity_name(ent)
            hop1 = {int(t) for t in kg.neighbors(ent)[1]}
            hop1_texts = {(name + kg.entity_name(t))[:16] for t in hop1}
            assert by_index[row_slots[0]] in hop1_texts  # positive: a 1-hop fact (no descriptions here)
            for i in row_slots[1:]:
                if i >= 0:
                    assert by_index[i] not in hop1_texts and by_index[i] != (name + name)[:16]
                    checked += 1
    assert checked >= 40, checked


# ---- mode "arcs": hand-made rows (the tests check placement, not linguistics) -------------------
DEP_LABELS = ["SBV", "HED", "VOB", "ATT", "COO", "ADV"]
SDP_LABELS = ["AGT", "PAT", "EXP"]


@pytest.fixture(scope="module")
def arc_setup(prepared):
    manifest, ds, kg, tok = prepared
    man = dict(manifest, masking_mode="arcs", dep_labels=DEP_LABELS, sdp_labels=SDP_LABELS)
    return man, tok


def arc_row(tok, words, dep_head, dep_label, sdp_head=(), sdp_label=()):
    ids, wids = [], []
    for k, w in enumerate(words):
        t = tok.convert_tokens_to_ids(list(w))
        ids += t
        wids += [k] * len(t)
    return {"input_ids": ids, "word_ids": wids, "word_pos": [0] * len(words),
            "dep_head": list(dep_head), "dep_label": [DEP_LABELS.index(x) for x in dep_label],
            "sdp_head": list(sdp_head), "sdp_label": [SDP_LABELS.index(x) for x in sdp_label],
            "ent_start": [], "ent_end": [], "ent_id": []}


def decode_units(batch, b, tok, dep_id, sdp_id):
    """The body of row b as a list of ('[dep]'|'[sdp]'|word-token-id) with the original labels put back."""
    length = batch["input_ids"].shape[1]
    ids = batch["input_ids"][b].clone()
    sel = (batch["mlm_positions"] // length) == b
    ids[batch["mlm_positions"][sel] % length] = batch["mlm_labels"][sel]
    n = int(batch["attention_mask"][b].sum())
    targets = set((batch["mlm_positions"][sel] % length).tolist())
    return ids[1 : n - 1].tolist(), {t - 1 for t in targets}


def check_pairs(seq, marker_ids):
    """Markers are balanced and each pair encloses exactly one run of non-marker tokens."""
    stack, wrapped = [], []
    for i, t in enumerate(seq):
        if t not in marker_ids:
            continue
        if stack and seq[stack[-1]] == t and any(x not in marker_ids for x in seq[stack[-1] + 1 : i]):
            j = stack.pop()
            wrapped.append((t, j, i))
        else:
            stack.append(i)
    assert not stack, f"unbalanced markers in {seq}"
    return wrapped


def test_marker_placement(arc_setup):
    man, tok = arc_setup
    dep_id, sdp_id = man["tokenizer"]["dep_token_id"], man["tokenizer"]["sdp_token_id"]
    # 我 爱 北京 的 天安门 : SBV(我->爱) HED(爱) ATT(北京->天安门) ... VOB(天安门->爱)
    words = ["我", "爱", "北京", "的", "天安门"]
    row = arc_row(tok, words, [1, -1, 4, 2, 1], ["SBV", "HED", "ATT", "VOB", "VOB"])
    col = PretrainCollator(tok, man, None, MaskingConfig(rate=0.99, dep_share=1.0, sdp_share=0.0),
                           CMRMConfig(enabled=False), 64, seed=0)
    word_tokens = [tok.convert_tokens_to_ids(list(w)) for w in words]
    expected_marked = {"SBV": [0], "HED": [1], "ATT": [4], "VOB": []}  # dependent / root / head / none
    for epoch in range(8):
        batch = col([(epoch, 0, row)])
        seq, targets = decode_units(batch, 0, tok, dep_id, sdp_id)
        pairs = check_pairs(seq, {dep_id, sdp_id})
        wrapped_words = set()
        for t, j, i in pairs:
            inner = seq[j + 1 : i]
            assert t == dep_id
            assert inner in word_tokens, inner
            wrapped_words.add(word_tokens.index(inner))
            assert {j, i} <= targets and set(range(j + 1, i)) <= targets  # markers and word are targets
        # with the whole budget on DEP every arc is used: all whitelisted words are wrapped
        want = {w for lab in ("SBV", "HED", "ATT") for w in expected_marked[lab]}
        assert wrapped_words == want, (epoch, wrapped_words)


def test_sdp_and_dep_nest_and_truncation_keeps_pairs(arc_setup):
    man, tok = arc_setup
    dep_id, sdp_id = man["tokenizer"]["dep_token_id"], man["tokenizer"]["sdp_token_id"]
    words = ["我", "爱", "北京", "的", "天安门"] * 4
    heads, labels, sheads, slabels = [], [], [], []
    for k in range(4):
        o = 5 * k
        heads += [o + 1, -1 if k == 0 else 1, o + 4, o + 2, o + 1]
        labels += ["SBV", "HED" if k == 0 else "COO", "ATT", "VOB", "VOB"]
        sheads += [o + 1, -1 if k == 0 else 1, o + 4, o + 2, o + 1]
        slabels += ["AGT", "PAT", "PAT", "PAT", "EXP"]
    row = arc_row(tok, words, heads, labels, sheads, slabels)
    n_tok = len(row["input_ids"])
    for max_length in (n_tok + 2, n_tok - 1, 17, 12):
        col = PretrainCollator(tok, man, None, MaskingConfig(rate=0.6, dep_share=0.5, sdp_share=0.5),
                               CMRMConfig(enabled=False), max_length, seed=3)
        for epoch in range(10):
            batch = col([(epoch, 0, row)])
            assert batch["input_ids"].shape[1] <= max(max_length, 8)
            seq, targets = decode_units(batch, 0, tok, dep_id, sdp_id)
            assert len(seq) <= max_length - 2
            check_pairs(seq, {dep_id, sdp_id})
            # the kept body is a prefix of whole words of the row
            body = [t for t in seq if t not in (dep_id, sdp_id)]
            assert body == row["input_ids"][: len(body)]
            assert len(body) == n_tok or row["word_ids"][len(body)] != row["word_ids"][len(body) - 1]
            src = batch["mlm_sources"].tolist()
            assert SRC_PRIORITY not in src
            if max_length == n_tok + 2:  # untruncated: markers of both kinds appear
                assert SRC_MARKER in src and (SRC_DEP in src or SRC_SDP in src)


def test_arc_shares(arc_setup):
    """Budget split 30/30/40 (DEP/SDP/random) holds on average over many rows and epochs."""
    man, tok = arc_setup
    rng = np.random.default_rng(0)
    vocab = [t for t in "我爱北京的天安门中国人民日报新年"]
    rows = []
    for _ in range(40):
        n = 40
        words = ["".join(rng.choice(vocab, size=rng.integers(1, 3))) for _ in range(n)]
        heads = [int(rng.integers(0, n)) if i else -1 for i in range(n)]
        heads = [h if h != i else -1 for i, h in enumerate(heads)]
        rows.append(arc_row(tok, words, heads, [DEP_LABELS[int(rng.integers(0, 6))] for _ in range(n)],
                            heads, [SDP_LABELS[int(rng.integers(0, 3))] for _ in range(n)]))
    col = PretrainCollator(tok, man, None, MaskingConfig(markers=False), CMRMConfig(enabled=False), 128, seed=0)
    counts = np.zeros(6)
    n_tok = 0
    for epoch in range(5):
        batch = col([(epoch, i, r) for i, r in enumerate(rows)])
        counts += np.bincount(batch["mlm_sources"].numpy(), minlength=6)
        n_tok += sum(len(r["input_ids"]) for r in rows)
    total = counts[[SRC_DEP, SRC_SDP, SRC_RANDOM]].sum()
    assert 0.14 < total / n_tok <= 0.155
    share = counts / total
    assert abs(share[SRC_DEP] - 0.3) < 0.03 and abs(share[SRC_SDP] - 0.3) < 0.03, share
    assert abs(share[SRC_RANDOM] - 0.4) < 0.04, share


def test_heldout_heads_are_never_anchors_nor_positive_tails(prepared):
    """cmrm.heldout_heads: mentions of held-out entities are dropped (counted), and no positive ends
    at a held-out entity, so the relation probe's held-out triples are unseen by CMRM."""
    from ckbert.data_prep.kg_store import heldout_entity

    manifest, ds, kg, tok = prepared
    share = 0.5
    col = PretrainCollator(tok, manifest, kg, MaskingConfig(), CMRMConfig(heldout_heads=share), 64, 0)
    names = [kg.entity_name(i) for i in range(kg.num_entities)]
    out = {n for n in names if heldout_entity(n, share)}
    assert 0.3 < len(out) / len(names) < 0.7  # about the share, by name
    assert heldout_entity("感冒", 0.5) == heldout_entity("感冒", 0.5) and not heldout_entity("感冒", 0.0)
    heldout = kept = 0
    for r in range(300):
        row = ds[r]
        mentions = list(zip(row["ent_start"], row["ent_end"], row["ent_id"], strict=True))
        texts, stats = {}, dict.fromkeys(("no_positive", "no_negative", "shortfall", "missing_slots", "heldout"), 0)
        spans, slots = col.sampler.samples(mentions, np.random.default_rng(r), texts, stats)
        heldout += stats["heldout"]
        assert stats["heldout"] == sum(kg.entity_name(e) in out for _, _, e in mentions[:])
        by_index = {i: t for t, i in texts.items()}
        for (start, end, _), row_slots in zip(spans, slots, strict=True):
            ent = next(e for s, e2, e in mentions if (s, e2) == (start, end))
            name = kg.entity_name(ent)
            assert name not in out
            tails = {t for t in (int(x) for x in kg.neighbors(ent)[1]) if kg.entity_name(t) not in out}
            assert by_index[row_slots[0]] in {(name + kg.entity_name(t))[:16] for t in tails}
            kept += 1
    assert heldout > 10 and kept > 10, (heldout, kept)


def test_tail_pool_and_unmasked_anchor_variants(prepared):
    """cmrm.pool "tail" pools the tokens after the mention's name; cmrm.anchor "unmasked" keeps
    every linked mention out of the MLM targets (so the anchor sees the mention)."""
    manifest, ds, kg, tok = prepared
    rows = items(prepared, range(64))
    base = PretrainCollator(tok, manifest, kg, MaskingConfig(), CMRMConfig(), 64, 0)(rows)
    assert torch.equal(base["sample_pool_mask"], base["sample_attention_mask"])
    tail = PretrainCollator(tok, manifest, kg, MaskingConfig(), CMRMConfig(pool="tail"), 64, 0)(rows)
    assert torch.equal(tail["sample_input_ids"], base["sample_input_ids"])
    pool, mask = tail["sample_pool_mask"], tail["sample_attention_mask"]
    assert bool((pool <= mask).all()) and int(pool.sum()) < int(mask.sum())
    assert not bool(pool[:, 0].any())  # [CLS] is never pooled in "tail" mode
    for name in ("lmlm", "random_token"):
        col = PretrainCollator(tok, manifest, kg, MaskingConfig(strategy=name), CMRMConfig(anchor="unmasked"), 64, 0)
        batch = col(rows)
        length = batch["input_ids"].shape[1]
        targets = set(batch["mlm_positions"].tolist())
        for n in range(batch["mention_index"].numel()):
            b, s, e = (int(batch[k][n]) for k in ("mention_index", "mention_start", "mention_end"))
            assert not targets & {b * length + p for p in range(s, e)}  # no mention token is a target
        assert batch["mlm_labels"].numel() > 0


def test_in_batch_negatives_tail_render_and_false_negatives_left_out(prepared):
    """cmrm.render "tail" drops the mention's name from the texts; with in-batch negatives and K = 0
    each mention competes against every other text of the batch, except those naming one of its
    1-hop neighbours (another positive of the same entity is not a negative)."""
    manifest, ds, kg, tok = prepared
    cmrm = CMRMConfig(in_batch_negatives=True, negatives=0, render="tail")
    col = PretrainCollator(tok, manifest, kg, MaskingConfig(), cmrm, 64, 0)
    rows = items(prepared, range(96))
    batch = col(rows)
    n, s = batch["sample_index"].shape[0], batch["sample_input_ids"].shape[0]
    assert batch["sample_index"].shape == (n, 1) and batch["sample_exclude"].shape == (n, s) and n > 5
    texts = [tuple(ids[m.bool()].tolist()) for ids, m in
             zip(batch["sample_input_ids"], batch["sample_attention_mask"], strict=True)]
    length = batch["input_ids"].shape[1]
    excluded = 0
    for i in range(n):
        b, st, en = (int(batch[k][i]) for k in ("mention_index", "mention_start", "mention_end"))
        row = rows[b][2]
        ent = next(e for a, z, e in zip(row["ent_start"], row["ent_end"], row["ent_id"], strict=True)
                   if (a + 1, z + 1) == (st, en))
        hop1 = {tuple(tok(kg.entity_name(int(t))[:16])["input_ids"]) for t in kg.neighbors(ent)[1]}
        pos = int(batch["sample_index"][i, 0])
        assert texts[pos] in hop1  # the tail alone, without the mention's name
        assert not bool(batch["sample_exclude"][i, pos])
        excluded += int(batch["sample_exclude"][i].sum())
        assert length > 0
    assert excluded > 0  # the demo graph's common mentions (e.g. places) share neighbours
    # the softmax width of each mention, summed (the chance level's ln(candidates / mentions))
    stats = dict(zip(CMRM_STAT_KEYS, batch["cmrm_stats"].tolist(), strict=True))
    assert stats["mentions"] == n and stats["candidates"] == n * s - excluded
    # exactly the texts naming a 1-hop neighbour (or the entity) are left out, the positive never
    texts, stats, prefix, tails, ents, slots = {}, dict.fromkeys(CMRM_STAT_KEYS, 0), {}, {}, [], []
    for r in range(96):
        row = ds[r]
        kept, sl = col.sampler.samples(list(zip(row["ent_start"], row["ent_end"], row["ent_id"], strict=True)),
                                np.random.default_rng(r), texts, stats, prefix, tails)
        ents += [e for _, _, e in kept]
        slots += sl
    ids, mask, pool, index, exclude, kept = col.sampler.tokenize(list(texts), slots, stats, prefix, tails, ents)
    named = [set() for _ in range(ids.shape[0])]
    rows_of = {tuple(x): j for j, x in enumerate(ids.tolist())}
    for text, t in tails.items():
        enc = col.tok([text], padding="max_length", truncation=True, max_length=ids.shape[1],
                      return_token_type_ids=False)["input_ids"][0]
        named[rows_of[tuple(enc)]].add(t)
    for i, n in enumerate(kept):
        hop1 = set(kg.neighbors(ents[n])[1].tolist()) | {ents[n]}
        want = [bool(nm & hop1) for nm in named]
        want[int(index[i, 0])] = False
        assert exclude[i].tolist() == want
    with pytest.raises(ValueError, match="negatives must be >= 1"):
        CMRMConfig(negatives=0).validate()
