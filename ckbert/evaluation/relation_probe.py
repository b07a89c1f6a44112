"""`ckbert probe --kind relation`: does the encoder place a mention near its KG neighbours, as CMRM
scores them? (issue 12; method.md, sections 2 and 4)

On the rows a pretraining run never trains on (the last `--eval-rows` of a prepared dataset,
`ckbert.evaluation.heldout`), each linked mention's anchor is the mean of its last-layer states (the row
unmasked, plain `transformers`). For up to `--per-mention` true 1-hop neighbours t of the mention's
entity, the text "mention + t" (rendered as CMRM renders it, `ckbert.cmrm_samples.sample_text`) is
ranked against K texts "mention + x" for
- `hop 2-3`: x drawn from the entity's hop-2..3 neighbourhood (CMRM's negatives), and
- `random`: x drawn uniformly from all entities that are neither the entity nor a 1-hop neighbour,
by the cosine of the anchor and the candidate text's mean pool (CMRM's score; a temperature does
not change a ranking). A candidate whose text equals an earlier one (long names cut to
`sample_chars`) is dropped and counted; a tie is broken at random in expectation.

One protocol for every model (issue 24): the candidate texts and their pooling are fixed by the
probe, not read from how the model was trained, and each rendering is a row of its own
(`PROTOCOLS`: "mention+tail" texts, the reference's, and "tail" texts, the tail's name alone; both
pooled over every real token). Every model sees the same items and the same texts.

Each ranking is also made with the anchor of another mention (of another head), a diagnostic: it
is at chance unless the model scores candidate texts without regard to the mention. It is not the
control of a knowledge claim, since in-batch CMRM trains exactly that situation; the control is a
model trained with the same CMRM on the shuffled graph (`ckbert kg-shuffle`).

Items are grouped `seen` / `held_out` by the head entity: `held_out` heads are the share of KG
entities that CMRM never used (`cmrm.heldout_heads`, a fixed function of the name,
`ckbert.data_prep.kg_store.heldout_entity`; read from the model's config.json `ckbert_split` or
`ckbert_cmrm` when it has one, else `--heldout-share`), and both the held-out rows and heads are
halved into validation and test (`--split`). Accuracy@1 and MRR are reported beside the exact chance
level of the same candidate sets, with 95% bootstrap intervals over head entities (`probe.summarise`),
the number of distinct heads, and the accuracy split by whether the tail's tokens occur in the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ckbert.cmrm_samples import name_chars, sample_text, tokenize_samples
from ckbert.data_prep.kg_store import heldout_entity, heldout_part, sample_negatives
from ckbert.objectives import masked_mean_pool, mention_anchors
from ckbert.train_config import CMRMConfig

NEGATIVE_SETS = ("hop 2-3", "random")
# The diagnostic: the same candidate texts scored against another mention's anchor (another head).
# A model that ranks the true text first without relating it to the mention (say, it learned which
# tails are typical positives) scores as well here; one that relates them falls to chance.
CONTROL = ", control: another mention's anchor"
# The probe's protocol: how candidate texts are rendered and pooled, the same for every model.
PROTOCOLS: dict[str, CMRMConfig] = {
    "mention+tail": CMRMConfig(render="mention_tail", pool="text"),
    "tail": CMRMConfig(render="tail", pool="text"),
}
# Items are built under the rendering that merges the most texts (a prefix shortens the tail's part):
# two tails whose "tail" texts coincide also coincide as "mention+tail" texts.
BUILD = PROTOCOLS["mention+tail"]


@dataclass
class RelationItem:
    row: int  # index of the held-out row in the prepared dataset
    start: int  # mention span in the row's tokens, without [CLS]
    end: int
    head: int  # entity ids: the mention's entity, a true 1-hop neighbour and its relation
    tail: int
    relation: int
    negatives: dict[str, list[int]]  # negative set -> entity ids, each rendered like the true tail
    group: str  # "seen" / "held_out"
    tail_in_row: bool | None = None  # the tail's tokens occur in the row (None: not computed)
    graph: str | None = None  # the relation's graph in a store merged from several (KGStore.relation_graph)


def random_entities(store: Any, exclude: set[int], k: int, rng: np.random.Generator) -> list[int]:
    """k distinct entities drawn uniformly from the store, none in `exclude`."""
    out: list[int] = []
    while len(out) < k and len(exclude) + len(out) < store.num_entities:
        e = int(rng.integers(store.num_entities))
        if e not in exclude and e not in out:
            out.append(e)
    return out


def item_texts(store: Any, it: RelationItem, cmrm: CMRMConfig) -> dict[str, list[str]]:
    """Per negative set: [true text, negative texts], rendered as a model trained with `cmrm` saw them."""
    name = store.entity_name(it.head)
    true = sample_text(store, name, it.relation, it.tail, cmrm)
    return {key: [true, *(sample_text(store, name, None, x, cmrm) for x in xs)] for key, xs in it.negatives.items()}


def _contains(row: list[int], part: list[int]) -> bool:
    n = len(part)
    return n > 0 and any(row[i : i + n] == part for i in range(len(row) - n + 1))


def build_items(dataset: Any, rows: range, store: Any, cmrm: CMRMConfig, share: float, k: int,
                per_mention: int, seed: int, stats: dict[str, int], tokenizer: Any = None,
                split: str = "all") -> list[RelationItem]:
    """Probe items for every linked mention of `rows`, seeded. A negative whose text (rendered as
    `cmrm` renders: `BUILD` for the probe) equals the true one's or an earlier negative's is
    dropped and counted (`merged`); rendering the tail alone keeps those texts distinct too. With a
    `tokenizer`, each item records whether the tail's tokens occur in its row. `split` "validation"
    or "test" keeps the held-out heads of that half only (`heldout_part`); `rows` is the caller's."""
    rng = np.random.default_rng(seed)
    items: list[RelationItem] = []
    for r in rows:
        row = dataset[r]
        for start, end, ent in zip(row["ent_start"], row["ent_end"], row["ent_id"], strict=True):
            ent = int(ent)
            rels, tails = store.neighbors(ent)
            hop1 = {int(t) for t in tails} - {ent}
            if not hop1:
                stats["no_neighbour"] = stats.get("no_neighbour", 0) + 1
                continue
            name = store.entity_name(ent)
            group = "held_out" if heldout_entity(name, share) else "seen"
            if group == "held_out" and split != "all" and heldout_part(name, share) != split:
                stats["other_split_head"] = stats.get("other_split_head", 0) + 1
                continue
            hard = sample_negatives(store, ent, k, rng, max_hop=cmrm.max_hop)
            if not hard:
                stats["no_hop23"] = stats.get("no_hop23", 0) + 1
                continue
            easy = random_entities(store, hop1 | {ent}, k, rng)
            first = {}  # tail -> relation of its first edge (the rendered relation, if any)
            for rel, t in zip(rels.tolist(), tails.tolist(), strict=True):
                first.setdefault(int(t), int(rel))
            for t in rng.permutation(sorted(hop1))[:per_mention].tolist():
                seen_texts = {sample_text(store, name, first[t], t, cmrm)}
                negatives: dict[str, list[int]] = {}
                for key, xs in (("hop 2-3", hard), ("random", easy)):
                    kept, texts = [], set(seen_texts)
                    for x in xs:
                        text = sample_text(store, name, None, x, cmrm)
                        if text in texts:
                            stats["merged"] = stats.get("merged", 0) + 1
                            continue
                        texts.add(text)
                        kept.append(x)
                    negatives[key] = kept
                if any(not v for v in negatives.values()):
                    stats["no_distinct_negative"] = stats.get("no_distinct_negative", 0) + 1
                    continue
                in_row = None
                if tokenizer is not None:
                    tail_ids = tokenizer(store.entity_name(t), add_special_tokens=False)["input_ids"]
                    in_row = _contains(list(row["input_ids"]), list(tail_ids))
                items.append(RelationItem(r, int(start), int(end), ent, t, first[t], negatives, group, in_row,
                                          store.relation_graph(first[t])))
    return items


@torch.no_grad()
def score_items(model: Any, tokenizer: Any, dataset: Any, store: Any, items: list[RelationItem], cmrm: CMRMConfig,
                batch_size: int = 32) -> dict[str, list[list[float]]]:
    """Per negative set, per item: the cosines of [true text, negatives] with the mention's anchor.

    `model` is a loaded HF masked LM; its `base_model` gives the last-layer states, as in training
    (`ckbert.train.PretrainForward`: `mention_anchors` on the row, `masked_mean_pool` on samples)."""
    encoder = model.base_model.eval()
    device = next(model.parameters()).device
    spans_of: dict[int, set[tuple[int, int]]] = {}
    for it in items:
        spans_of.setdefault(it.row, set()).add((it.start, it.end))
    rows = sorted(spans_of)
    anchors: dict[tuple[int, int, int], torch.Tensor] = {}
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        ids = [[tokenizer.cls_token_id, *dataset[r]["input_ids"], tokenizer.sep_token_id] for r in chunk]
        length = max(map(len, ids))
        input_ids = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for b, x in enumerate(ids):
            input_ids[b, : len(x)] = torch.tensor(x)
            mask[b, : len(x)] = 1
        hidden = encoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        spans = [(b, a + 1, e + 1) for b, r in enumerate(chunk) for a, e in sorted(spans_of[r])]  # +1: [CLS]
        index, st, en = (torch.tensor(x, device=device) for x in zip(*spans, strict=True))
        for (b, a, e), vec in zip(spans, mention_anchors(hidden, index, st, en).float().cpu(), strict=True):
            anchors[(chunk[b], a - 1, e - 1)] = vec
    rendered = [item_texts(store, it, cmrm) for it in items]
    prefix = {t: name_chars(store.entity_name(it.head), cmrm)
              for it, r in zip(items, rendered, strict=True) for v in r.values() for t in v}
    texts = sorted(prefix)
    pooled: dict[str, torch.Tensor] = {}
    for s in range(0, len(texts), 4 * batch_size):
        chunk = texts[s : s + 4 * batch_size]
        ids, mask, pool = (torch.from_numpy(x).to(device)
                           for x in tokenize_samples(tokenizer, chunk, [prefix[t] for t in chunk], cmrm))
        out = masked_mean_pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, pool).float().cpu()
        pooled.update(zip(chunk, out, strict=True))
    scores: dict[str, list[list[float]]] = {key + suffix: [] for suffix in ("", CONTROL) for key in NEGATIVE_SETS}
    for i, (it, its_texts) in enumerate(zip(items, rendered, strict=True)):
        a = torch.nn.functional.normalize(anchors[(it.row, it.start, it.end)], dim=0)
        other = items[control_partner(items, i)]
        c = torch.nn.functional.normalize(anchors[(other.row, other.start, other.end)], dim=0)
        for key in NEGATIVE_SETS:
            cand = torch.nn.functional.normalize(torch.stack([pooled[t] for t in its_texts[key]]), dim=1)
            scores[key].append((cand @ a).tolist())
            scores[key + CONTROL].append((cand @ c).tolist())
    return scores


def control_partner(items: list[RelationItem], i: int) -> int:
    """The item whose anchor scores item i's texts in the control: half the list away, moved on to
    the first item of another head (item i itself if every item has the same head)."""
    n = len(items)
    for step in range(n // 2 or 1, n // 2 + n):
        j = (i + step) % n
        if items[j].head != items[i].head:
            return j
    return i


def score_protocols(model: Any, tokenizer: Any, dataset: Any, store: Any, items: list[RelationItem],
                    batch_size: int = 32) -> dict[str, dict[str, list[list[float]]]]:
    """`score_items` under every protocol of `PROTOCOLS`: protocol -> negative set -> per-item cosines."""
    return {name: score_items(model, tokenizer, dataset, store, items, cmrm, batch_size)
            for name, cmrm in PROTOCOLS.items()}


def report(items: list[RelationItem], scores: dict[str, dict[str, list[list[float]]]]
           ) -> dict[str, dict[str, float]]:
    """`probe.summarise` per "<seen|held_out>, <protocol> texts, vs <negative set>[, control]" group,
    with intervals over head entities, and the accuracy where the tail's tokens occur in the row
    and where they do not. With a store merged from several graphs, every group is also reported per
    graph of the item's relation ("<graph>: <group>")."""
    from ckbert.evaluation.probe import graph_group, summarise

    groups, rows, heads, in_row = [], [], [], []
    for name, by_set in scores.items():
        for key, per_item in by_set.items():
            for it, row in zip(items, per_item, strict=True):
                group = f"{it.group}, {name} texts, vs {key}"
                for label in {group, graph_group(it.graph, group)}:
                    groups.append(label)
                    rows.append(row)
                    heads.append(it.head)
                    in_row.append(it.tail_in_row)
    out = summarise(groups, rows, clusters=heads)
    if any(x is not None for x in in_row):
        for flag, label in ((True, "tail in row"), (False, "tail not in row")):
            for r in out.values():
                r[f"accuracy@1, {label}"], r[f"items, {label}"] = None, 0
            keep = [i for i, x in enumerate(in_row) if x is flag]
            part = summarise([groups[i] for i in keep], [rows[i] for i in keep], clusters=[heads[i] for i in keep],
                             intervals=False)
            for group, r in part.items():
                out[group][f"accuracy@1, {label}"] = r["accuracy@1"]
                out[group][f"items, {label}"] = r["triples"]
    return out
