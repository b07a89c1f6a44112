"""`ckbert probe`: does the encoder know the KG's facts? (method.md, section 4; issue 12)

Two kinds:

- `--kind relation` (ckbert.evaluation.relation_probe): at the level CMRM trains, on held-out rows:
  a mention's mean last-layer state against "mention + true neighbour" and "mention + hop-2..3 or
  random entity" texts, by cosine; seen and held-out heads apart.
- `--kind cloze` (the default): for a triple (head, relation, tail) the template, e.g.
  "{head}的{relation}是{tail}。", is filled with the head and relation and `n` [MASK] tokens in
  place of the tail, `n` the token count of the candidate being scored. A candidate's score is the
  masked log-likelihood of its tokens at those positions, all masks predicted in one pass (mean
  over its tokens by default, `--score sum` for the sum). The true tail is ranked against K
  distractor tails of the same relation that are not a true tail of (head, relation) and that
  occur in exactly as many triples of that relation as the true tail, so that knowing how common a
  tail is gives exactly chance (a tail with no such peer is skipped and counted). Inverse relations
  (stores built with `--kg-inverse-edges`) are not asked.

Ties are broken at random (their expected value is counted), so a scorer that cannot tell the
candidates apart scores exactly the chance level. Triples are split into `seen` and `held_out`
heads; accuracy@1 and MRR are reported per group next to the chance level of the same candidate
sets. For the cloze, `seen` heads are the entities a prepared dataset links (`--prepared`) or the
names in `--seen-heads`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckbert.data_prep.kg_store import INVERSE_SUFFIX
from ckbert.errors import UserError
from ckbert.evaluation.heldout import SPLITS
from ckbert.hf_load import check_model_dir, load_model, load_tokenizer
from ckbert.outputs import check_out_file, write_json

DEFAULT_TEMPLATE = "{head}的{relation}是{tail}。"


@dataclass
class ProbeItem:
    head: str
    relation: str
    candidates: list[str]  # candidates[0] is the true tail
    group: str  # "seen" / "held_out" / "all"


def all_triples(store: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head [T], rel [T], tail [T]) int arrays from the store's CSR adjacency."""
    indptr = np.asarray(store.indptr)
    heads = np.repeat(np.arange(store.num_entities, dtype=np.int64), np.diff(indptr))
    return heads, np.asarray(store.rel, dtype=np.int64), np.asarray(store.tail, dtype=np.int64)


def seen_heads_from_file(store: Any, path: Path) -> tuple[set[int], int]:
    """Entity ids of the names in `path` (one per line) and the number of names not in the KG."""
    if not path.is_file():
        raise UserError("seen-heads file not found", path=path)
    seen, unknown = set(), 0
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if not name:
            continue
        i = store.lookup(name)
        if i is None:
            unknown += 1
        else:
            seen.add(i)
    return seen, unknown


def seen_heads_from_prepared(store: Any, prepared: Path, train_rows: int | None = None,
                             heldout_share: float = 0.0) -> tuple[set[int], set[int]]:
    """(seen, excluded): seen = the entities that mentions in the training rows [0, train_rows) link
    to (all rows when None) and that CMRM could use; excluded = those linked there that CMRM held
    out (`heldout_entity` with `heldout_share`): the model read them in context but never trained
    their facts, so they are in neither the seen nor the held-out group. Entities linked only in
    held-out rows stay held out."""
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.data_prep.kg_store import heldout_entity

    _, dataset, kg, _ = open_prepared(prepared)
    if kg.fingerprint != store.fingerprint:
        raise UserError("the prepared dataset was built with a different KG than --kg", path=prepared)
    linked: set[int] = set()
    column = dataset["ent_id"] if train_rows is None else dataset.select(range(train_rows))["ent_id"]
    for ids in column:
        linked.update(int(i) for i in ids)
    excluded = {e for e in linked if heldout_entity(store.entity_name(e), heldout_share)}
    return linked - excluded, excluded


def relation_pools(store: Any, heads: np.ndarray, rels: np.ndarray, tails: np.ndarray
                   ) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray], np.ndarray]:
    """Per triple, how many triples of its relation share its tail; the tails of each (relation,
    that count) pool; and which triples are asked (not inverse edges)."""
    key = rels.astype(np.int64) * store.num_entities + tails
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    per_triple = counts[inverse]
    u_rel, u_tail = uniq // store.num_entities, uniq % store.num_entities
    pools: dict[tuple[int, int], list[int]] = {}
    for r, t, c in zip(u_rel.tolist(), u_tail.tolist(), counts.tolist(), strict=True):
        pools.setdefault((r, c), []).append(t)
    asked = np.ones(len(heads), dtype=bool)
    if store.meta.get("inverse_edges"):
        suffix = store.meta.get("inverse", {}).get("suffix", INVERSE_SUFFIX)
        inverse_rel = np.array([store.relation_name(r).endswith(suffix) for r in range(store.num_relations)])
        asked = ~inverse_rel[rels]
    return per_triple, {k: np.array(v) for k, v in pools.items()}, asked


def graph_group(graph: str | None, group: str) -> str:
    """A probe group within one graph of a merged store ("<graph>: <group>"); the group itself for a
    store built from one file."""
    return group if graph is None else f"{graph}: {group}"


def build_items(
    store: Any,
    tokenizer: Any,
    seen: set[int] | None,
    k: int,
    max_triples: int,
    max_tail_tokens: int,
    seed: int,
    stats: dict[str, int],
    excluded: set[int] | None = None,
) -> list[ProbeItem]:
    """Up to `max_triples` probe items per group, triples drawn in a seeded random order; heads in
    `excluded` are asked in no group (counted). A store merged from several graphs has groups per
    graph ("<graph>: seen", ...), each with its own `max_triples`."""
    heads, rels, tails = all_triples(store)
    graph_of = [store.relation_graph(r) for r in range(store.num_relations)]
    kinds = ("all",) if seen is None else ("seen", "held_out")
    labels = {graph_group(g, kind) for g in set(graph_of) for kind in kinds}
    rng = np.random.default_rng(seed)
    tail_count, pools, asked = relation_pools(store, heads, rels, tails)
    stats["inverse_triples_not_asked"] = int((~asked).sum())
    n_tokens: dict[int, int] = {}

    def length(e: int) -> int:
        if e not in n_tokens:
            n_tokens[e] = len(tokenizer(store.entity_name(e), add_special_tokens=False)["input_ids"])
        return n_tokens[e]

    items: list[ProbeItem] = []
    taken: dict[str, int] = {}
    for t in rng.permutation(np.flatnonzero(asked)):
        h, r, tail = int(heads[t]), int(rels[t]), int(tails[t])
        if excluded and h in excluded:
            stats["excluded_head"] = stats.get("excluded_head", 0) + 1
            continue
        group = graph_group(graph_of[r], "all" if seen is None else ("seen" if h in seen else "held_out"))
        if taken.get(group, 0) >= max_triples:
            if all(taken.get(g, 0) >= max_triples for g in labels):
                break
            continue
        if not 0 < length(tail) <= max_tail_tokens:
            stats["skipped_tail_too_long"] = stats.get("skipped_tail_too_long", 0) + 1
            continue
        nb_rel, nb_tail = store.neighbors(h)
        truths = set(nb_tail[nb_rel == r].tolist())
        pool = pools[(r, int(tail_count[t]))]  # tails exactly as common in this relation as the true one
        # a small random sample first (pools can hold 1e5 tails); the whole pool only when it falls short
        first = rng.choice(len(pool), size=min(len(pool), 2 * k + len(truths) + 8), replace=False)
        distractors: list[int] = []
        for order in (first, rng.permutation(len(pool))):
            for j in order:
                e = int(pool[j])
                if len(distractors) < k and e not in truths and e not in distractors:
                    if 0 < length(e) <= max_tail_tokens:
                        distractors.append(e)
            if len(distractors) == k or len(first) == len(pool):
                break
        if not distractors:
            stats["skipped_no_frequency_match"] = stats.get("skipped_no_frequency_match", 0) + 1
            continue
        if len(distractors) < k:
            stats["fewer_than_k_distractors"] = stats.get("fewer_than_k_distractors", 0) + 1
        names = [store.entity_name(e) for e in [tail, *distractors]]
        items.append(ProbeItem(store.entity_name(h), store.relation_name(r), names, group))
        taken[group] = taken.get(group, 0) + 1
    return items


def score_candidates(
    model: Any, tokenizer: Any, items: list[ProbeItem], template: str, reduce: str, batch_size: int
) -> list[list[float]]:
    """Per item, one score per candidate (special tokens are split out, so each cloze holds exactly
    as many [MASK] tokens as the candidate has tokens).

    Candidates of an item with the same token count share one cloze, so the model runs once per
    distinct (item, length) pair; the scores are gathered at the [MASK] positions.
    """
    device = next(model.parameters()).device
    limit = min(int(model.config.max_position_embeddings), 512)
    cand_ids = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in it.candidates] for it in items]
    clozes: dict[tuple[int, int], int] = {}
    texts: list[str] = []
    for i, it in enumerate(items):
        for ids in cand_ids[i]:
            if (i, len(ids)) not in clozes:
                clozes[(i, len(ids))] = len(texts)
                filled = template.replace("{head}", it.head).replace("{relation}", it.relation)
                texts.append(filled.replace("{tail}", tokenizer.mask_token * len(ids)))
    log_probs: list[torch.Tensor] = []  # per cloze: [n_masks, V] log-probabilities
    model.eval()
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s : s + batch_size], padding=True, return_tensors="pt")
            if enc["input_ids"].shape[1] > limit:
                raise UserError(f"a probe cloze has {enc['input_ids'].shape[1]} tokens, more than the model's {limit}")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits  # [B, L, V]
            masks = enc["input_ids"] == tokenizer.mask_token_id  # [B, L]
            for b in range(logits.shape[0]):
                log_probs.append(torch.log_softmax(logits[b][masks[b].to(device)].float(), dim=-1).cpu())
    scores = []
    for i in range(len(items)):
        row = []
        for ids in cand_ids[i]:
            lp = log_probs[clozes[(i, len(ids))]]  # [n, V]: one row per [MASK], the candidate's length
            token_lp = lp[torch.arange(len(ids)), torch.tensor(ids)]  # [n]
            row.append(float(token_lp.sum() if reduce == "sum" else token_lp.mean()))
        scores.append(row)
    return scores


BOOTSTRAP_SAMPLES = 2000


def bootstrap_ci(values: np.ndarray, clusters: list, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                 ) -> list[tuple[float, float]]:
    """values [n, m] (m metrics per item) -> per metric the 95% percentile interval of the mean,
    resampling whole clusters (e.g. the items of one head entity) with replacement."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = np.fromiter((ids[c] for c in clusters), dtype=np.int64, count=len(clusters))
    sums = np.zeros((len(ids), values.shape[1]))
    np.add.at(sums, index, values)
    counts = np.bincount(index, minlength=len(ids)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(len(ids), size=(samples, len(ids)))
    means = sums[draw].sum(1) / counts[draw].sum(1)[:, None]  # [samples, m]
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def item_rank(row: list[float]) -> tuple[float, float]:
    """(accuracy@1, reciprocal rank) of the true candidate row[0], ties broken at random in expectation."""
    above = sum(1 for s in row[1:] if s > row[0])
    tied = sum(1 for s in row[1:] if s == row[0])
    acc = 1.0 / (1 + tied) if above == 0 else 0.0
    return acc, sum(1.0 / (above + 1 + j) for j in range(tied + 1)) / (tied + 1)


def summarise(groups: list[str], scores: list[list[float]], clusters: list | None = None,
              intervals: bool = True) -> dict[str, dict[str, float]]:
    """accuracy@1 (%), MRR and their chance levels per group; the true candidate is scores[i][0].

    Ties are broken at random, in expectation: with g candidates above the true one and e tied
    with it, its rank is uniform on g+1 .. g+1+e, so a scorer that cannot separate the candidates
    scores exactly chance. `clusters` (one id per item, e.g. its head entity) are what the 95%
    bootstrap intervals resample (items are not independent within a head); `heads` counts them.
    """
    ranks: dict[str, list[tuple[float, float, int]]] = {}
    members: dict[str, list] = {}
    for i, (group, row) in enumerate(zip(groups, scores, strict=True)):
        ranks.setdefault(group, []).append((*item_rank(row), len(row)))
        members.setdefault(group, []).append(i if clusters is None else clusters[i])
    out = {}
    for group, rows in sorted(ranks.items()):
        n = len(rows)
        out[group] = {
            "triples": n,
            "heads": len(set(members[group])),
            "accuracy@1": 100.0 * sum(a for a, _, _ in rows) / n,
            "mrr": sum(rr for _, rr, _ in rows) / n,
            "chance_accuracy@1": 100.0 * sum(1.0 / c for _, _, c in rows) / n,
            "chance_mrr": sum(sum(1.0 / j for j in range(1, c + 1)) / c for _, _, c in rows) / n,
            "mean_candidates": sum(c for _, _, c in rows) / n,
        }
        if intervals:
            (a_lo, a_hi), (m_lo, m_hi) = bootstrap_ci(np.array([(100.0 * a, rr) for a, rr, _ in rows]), members[group])
            out[group].update({"accuracy@1_ci95": [a_lo, a_hi], "mrr_ci95": [m_lo, m_hi]})
    return out


def markdown(report: dict[str, dict[str, float]]) -> str:
    lines = ["| group | items | heads | acc@1 (95% CI) | MRR (95% CI) | chance acc@1 | chance MRR |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def ci(r: dict, key: str, fmt: str) -> str:
        lo_hi = r.get(f"{key}_ci95")
        return format(r[key], fmt) + (f" ({lo_hi[0]:{fmt}}-{lo_hi[1]:{fmt}})" if lo_hi else "")

    for g, r in report.items():
        lines.append(
            f"| {g} | {r['triples']} | {r['heads']} | {ci(r, 'accuracy@1', '.2f')} | {ci(r, 'mrr', '.4f')} | "
            f"{r['chance_accuracy@1']:.2f} | {r['chance_mrr']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckbert probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("cloze", "relation"), default="cloze",
                   help="cloze: fill the tail from the MLM head; relation: CMRM's cosine on held-out rows")
    p.add_argument("--model", required=True, type=Path, help="Hugging Face masked-LM folder (BERT family)")
    p.add_argument("--kg", type=Path, help="KG store folder (cloze; the relation probe uses --prepared's)")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument("--prepared", type=Path, help="prepared dataset: cloze, its linked entities are the seen "
                      "heads; relation, its held-out rows and KG are probed")
    seen.add_argument("--seen-heads", type=Path, help="cloze: file with one seen head entity name per line")
    p.add_argument("--k", type=int, help="distractors per item (default: cloze 9, relation 4 = CMRM's K)")
    p.add_argument("--max-triples", type=int, default=500, help="cloze: triples per group (default 500)")
    p.add_argument("--max-tail-tokens", type=int, default=8, help="cloze: longest tail, in tokens (default 8)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"cloze template (default {DEFAULT_TEMPLATE!r})")
    p.add_argument("--score", choices=("mean", "sum"), default="mean", help="cloze: per-token mean or sum of log-probs")
    p.add_argument("--eval-rows", type=int, help="the held-out rows (relation: scored; cloze with --prepared: their "
                   "links do not make a head seen). Default: those the model recorded in config.json ckbert_split, "
                   "else 256; refused when they take in rows the model trained on")
    p.add_argument("--split", choices=SPLITS, default="validation",
                   help="relation: which half of the held-out rows and heads (default validation: screens and "
                        "choices; report test once per recipe)")
    p.add_argument("--per-mention", type=int, default=2, help="relation: true neighbours asked per mention (default 2)")
    p.add_argument("--heldout-share", type=float, help="share of heads CMRM held out (default: the model's "
                   "config.json record; else relation 0.2, cloze 0: the cloze leaves them out of both groups)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true", help="same architecture and tokenizer, random weights (chance baseline)")
    p.add_argument("--out", type=Path, help="write the report as JSON to this file (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    args.k = args.k if args.k is not None else (9 if args.kind == "cloze" else 4)
    if "{tail}" not in args.template or "{head}" not in args.template:
        raise UserError("--template must contain {head} and {tail}")
    for flag in ("k", "max_triples", "max_tail_tokens", "batch_size", "eval_rows", "per_mention"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.heldout_share is not None and not 0.0 <= args.heldout_share < 1.0:
        raise UserError(f"--heldout-share must be in [0, 1), got {args.heldout_share}")
    if args.kind == "relation" and args.prepared is None:
        raise UserError("--kind relation needs --prepared (its held-out rows and KG)")
    if args.kind == "cloze" and args.kg is None:
        raise UserError("--kind cloze needs --kg")
    if args.out is not None:
        check_out_file(args.out, args.overwrite)  # before any work: never after the scoring
    from transformers import AutoModelForMaskedLM

    check_model_dir(args.model)
    model = load_model(AutoModelForMaskedLM, args.model, args.random_init)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    stats: dict[str, int] = {}
    record: dict[str, Any] = {"kind": args.kind, "model": str(args.model), "random_init": args.random_init,
                              "k": args.k, "seed": args.seed}
    if args.kind == "relation":
        report = run_relation(model, args, stats, record)
    else:
        report = run_cloze(model, args, stats, record)
    from ckbert.evaluation.relation_probe import CONTROL

    print(", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    # the anchor-swap rows (CONTROL) are a diagnostic: in --out only
    print(markdown({g: r for g, r in report.items() if CONTROL not in g}), end="")
    if args.out is not None:
        write_json(args.out, {**record, "stats": stats, "groups": report})
    return 0


def run_cloze(model: Any, args: argparse.Namespace, stats: dict[str, int], record: dict[str, Any]) -> dict:
    from ckbert.data_prep.kg_store import KGStore

    store = KGStore.open(args.kg)
    tokenizer = load_tokenizer(args.model)
    heads: set[int] | None = None
    excluded: set[int] = set()
    if args.prepared is not None:
        # seen: linked in the rows the model trained on (its recorded split, else all but the last
        # --eval-rows) and not among CMRM's held-out heads
        from ckbert.data_prep.dataset import read_manifest
        from ckbert.evaluation.heldout import eval_rows_for, heldout_start, recorded_split

        n_rows = sum(int(sh["rows"]) for sh in read_manifest(args.prepared)["shards"])
        recorded = recorded_split(model.config)
        check_share(args, recorded)
        share = args.heldout_share if args.heldout_share is not None else (
            recorded["heldout_heads"] if recorded is not None else 0.0)
        train_rows = heldout_start(n_rows, eval_rows_for(model.config, n_rows, args.eval_rows, args.model))
        heads, excluded = seen_heads_from_prepared(store, args.prepared, train_rows, share)
        record.update({"train_rows": train_rows, "heldout_share": share, "split_recorded": recorded is not None})
    elif args.seen_heads is not None:
        heads, stats["seen_heads_not_in_kg"] = seen_heads_from_file(store, args.seen_heads)
    items = build_items(store, tokenizer, heads, args.k, args.max_triples, args.max_tail_tokens, args.seed, stats,
                        excluded)
    if not items:
        raise UserError("no probe triples (every tail too long or without distractors)", path=args.kg)
    if heads is None:
        print("no --prepared or --seen-heads given: all triples in one group")
    scores = score_candidates(model, tokenizer, items, args.template, args.score, args.batch_size)
    record.update({"kg": str(args.kg), "template": args.template, "score": args.score})
    return summarise([it.group for it in items], scores)


def check_share(args: argparse.Namespace, recorded: dict | None) -> None:
    """--heldout-share may restate the share a model recorded, never change it: another share would
    count heads it trained on as held out."""
    if args.heldout_share is not None and recorded is not None and args.heldout_share != recorded["heldout_heads"]:
        raise UserError(f"--heldout-share {args.heldout_share}: the model held out {recorded['heldout_heads']} of "
                        "the heads (config.json ckbert_split); leave the option out or pass that share",
                        path=args.model)


def run_relation(model: Any, args: argparse.Namespace, stats: dict[str, int], record: dict[str, Any]) -> dict:
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.evaluation import relation_probe as rp
    from ckbert.evaluation.heldout import eval_rows_for, recorded_split, split_rows
    from ckbert.export import cmrm_of_export

    manifest, dataset, kg, tokenizer = open_prepared(args.prepared)
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the dataset's "
                        f"tokenizer ({len(tokenizer)})", path=args.prepared)
    recorded = recorded_split(model.config)
    check_share(args, recorded)
    if args.heldout_share is not None:
        share = args.heldout_share
    elif recorded is not None:
        share = recorded["heldout_heads"]
    else:
        share = cmrm_of_export(model.config).heldout_heads if hasattr(model.config, "ckbert_cmrm") else 0.2
    eval_rows = eval_rows_for(model.config, len(dataset), args.eval_rows, args.model)
    rows = split_rows(len(dataset), eval_rows, args.split)
    items = rp.build_items(dataset, rows, kg, rp.BUILD, share, args.k, args.per_mention, args.seed, stats,
                           tokenizer=tokenizer, split=args.split)
    if not items:
        raise UserError("no relation probe items: the held-out rows link no entity with neighbours",
                        path=args.prepared)
    scores = rp.score_protocols(model, tokenizer, dataset, kg, items, args.batch_size)
    record.update({"prepared": str(args.prepared), "eval_rows": eval_rows, "split": args.split,
                   "rows": [rows.start, rows.stop], "split_recorded": recorded is not None, "heldout_share": share,
                   "per_mention": args.per_mention, "sample_chars": rp.BUILD.sample_chars,
                   "protocols": {name: {"render": c.render, "pool": c.pool} for name, c in rp.PROTOCOLS.items()},
                   "mentions": len({(it.row, it.start) for it in items})})
    return rp.report(items, scores)
