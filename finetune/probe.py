"""`ckbert probe --model DIR --kg DIR`: does the encoder know the KG's facts? (method.md, section 4)

For a triple (head, relation, tail) the template, e.g. "{head}的{relation}是{tail}。", is filled with
the head and relation and `n` [MASK] tokens in place of the tail, where `n` is the token count of
the candidate being scored. A candidate's score is the masked log-likelihood of its tokens at those
positions, all masks predicted in one pass (mean over its tokens by default, `--score sum` for the
sum). The true tail is ranked against K distractor tails drawn from the tails of the same relation
that are not a true tail of (head, relation). Ties count against the true tail.

Triples are split into `seen` (the head is an entity the pretraining corpus mentions: the
`ent_id`s of a prepared dataset, `--prepared`, or names listed in `--seen-heads`) and `held_out`;
accuracy@1 and MRR are reported per group next to the chance level of the same candidate sets.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckbert.errors import UserError
from ckbert.finetune.checkpoint import check_model_dir, load_model, load_tokenizer
from ckbert.finetune.submission import write_json
from ckbert.outputs import check_out_file

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


def seen_heads_from_prepared(store: Any, prepared: Path) -> set[int]:
    """Every entity the prepared dataset links a mention to: the heads CMRM could sample from."""
    from ckbert.data_prep.dataset import open_prepared

    _, dataset, kg, _ = open_prepared(prepared)
    if kg.fingerprint != store.fingerprint:
        raise UserError("the prepared dataset was built with a different KG than --kg", path=prepared)
    seen: set[int] = set()
    for ids in dataset["ent_id"]:
        seen.update(int(i) for i in ids)
    return seen


def build_items(
    store: Any,
    tokenizer: Any,
    seen: set[int] | None,
    k: int,
    max_triples: int,
    max_tail_tokens: int,
    seed: int,
    stats: dict[str, int],
) -> list[ProbeItem]:
    """Up to `max_triples` probe items per group, triples drawn in a seeded random order."""
    heads, rels, tails = all_triples(store)
    rng = np.random.default_rng(seed)
    pools = {int(r): np.unique(tails[rels == r]) for r in np.unique(rels)}
    n_tokens: dict[int, int] = {}

    def length(e: int) -> int:
        if e not in n_tokens:
            n_tokens[e] = len(tokenizer(store.entity_name(e), add_special_tokens=False)["input_ids"])
        return n_tokens[e]

    items: list[ProbeItem] = []
    taken: dict[str, int] = {}
    for t in rng.permutation(len(heads)):
        h, r, tail = int(heads[t]), int(rels[t]), int(tails[t])
        group = "all" if seen is None else ("seen" if h in seen else "held_out")
        if taken.get(group, 0) >= max_triples:
            if seen is None or all(taken.get(g, 0) >= max_triples for g in ("seen", "held_out")):
                break
            continue
        if not 0 < length(tail) <= max_tail_tokens:
            stats["skipped_tail_too_long"] = stats.get("skipped_tail_too_long", 0) + 1
            continue
        nb_rel, nb_tail = store.neighbors(h)
        truths = set(nb_tail[nb_rel == r].tolist())
        pool = pools[r]
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
            stats["skipped_no_distractor"] = stats.get("skipped_no_distractor", 0) + 1
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


def summarise(items: list[ProbeItem], scores: list[list[float]]) -> dict[str, dict[str, float]]:
    """accuracy@1 (%), MRR and their chance levels per group; the true tail is candidate 0."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for it, row in zip(items, scores, strict=True):
        rank = 1 + sum(1 for s in row[1:] if s >= row[0])  # ties count against the true tail
        groups.setdefault(it.group, []).append((rank, len(row)))
    out = {}
    for group, ranks in sorted(groups.items()):
        n = len(ranks)
        out[group] = {
            "triples": n,
            "accuracy@1": 100.0 * sum(r == 1 for r, _ in ranks) / n,
            "mrr": sum(1.0 / r for r, _ in ranks) / n,
            "chance_accuracy@1": 100.0 * sum(1.0 / c for _, c in ranks) / n,
            "chance_mrr": sum(sum(1.0 / j for j in range(1, c + 1)) / c for _, c in ranks) / n,
            "mean_candidates": sum(c for _, c in ranks) / n,
        }
    return out


def markdown(report: dict[str, dict[str, float]]) -> str:
    lines = ["| group | triples | acc@1 | MRR | chance acc@1 | chance MRR |", "| --- | --- | --- | --- | --- | --- |"]
    for g, r in report.items():
        lines.append(
            f"| {g} | {r['triples']} | {r['accuracy@1']:.2f} | {r['mrr']:.4f} | "
            f"{r['chance_accuracy@1']:.2f} | {r['chance_mrr']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckbert probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="Hugging Face masked-LM folder (BERT family)")
    p.add_argument("--kg", required=True, type=Path, help="KG store folder (docs/contracts.md)")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument("--prepared", type=Path, help="prepared dataset: its linked entities are the seen heads")
    seen.add_argument("--seen-heads", type=Path, help="file with one seen head entity name per line")
    p.add_argument("--k", type=int, default=9, help="distractor tails per triple (default 9)")
    p.add_argument("--max-triples", type=int, default=500, help="triples per group (default 500)")
    p.add_argument("--max-tail-tokens", type=int, default=8, help="longest tail, in tokens (default 8)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"cloze template (default {DEFAULT_TEMPLATE!r})")
    p.add_argument("--score", choices=("mean", "sum"), default="mean", help="per-token mean or sum of log-probs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true", help="same architecture and tokenizer, random weights (chance baseline)")
    p.add_argument("--out", type=Path, help="write the report as JSON to this file (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    if "{tail}" not in args.template or "{head}" not in args.template:
        raise UserError("--template must contain {head} and {tail}")
    for flag in ("k", "max_triples", "max_tail_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.out is not None:
        check_out_file(args.out, args.overwrite)  # before any work: never after the scoring
    from transformers import AutoModelForMaskedLM

    from ckbert.data_prep.kg_store import KGStore

    check_model_dir(args.model)
    store = KGStore.open(args.kg)
    tokenizer = load_tokenizer(args.model)
    stats: dict[str, int] = {}
    heads: set[int] | None = None
    if args.prepared is not None:
        heads = seen_heads_from_prepared(store, args.prepared)
    elif args.seen_heads is not None:
        heads, stats["seen_heads_not_in_kg"] = seen_heads_from_file(store, args.seen_heads)
    items = build_items(store, tokenizer, heads, args.k, args.max_triples, args.max_tail_tokens, args.seed, stats)
    if not items:
        raise UserError("no probe triples (every tail too long or without distractors)", path=args.kg)
    model = load_model(AutoModelForMaskedLM, args.model, args.random_init)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    scores = score_candidates(
        model, tokenizer, items, args.template, args.score, args.batch_size
    )
    report = summarise(items, scores)
    if heads is None:
        print("no --prepared or --seen-heads given: all triples in one group")
    print(", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    print(markdown(report), end="")
    if args.out is not None:
        write_json(args.out, {"model": str(args.model), "random_init": args.random_init, "kg": str(args.kg), "k": args.k, "template": args.template,
                              "score": args.score, "seed": args.seed, "stats": stats, "groups": report})
    return 0
