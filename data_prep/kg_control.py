"""The shuffled-graph control (issue 24): the same graph with wrong facts.

`shuffle_tails` permutes the tails of each relation among that relation's edges: every head keeps
its out-degree per relation, every relation keeps its edge count and its multiset of tails (so each
entity keeps its in-degree per relation), the entity and relation tables are the same arrays (a
dataset linked against the true graph links the same ids here), and almost no true fact survives.
A permutation that makes a self-loop or repeats an edge is repaired by swapping with another edge
of the same relation; what no swap repairs is dropped and counted in meta.json.

CMRM trained on such a graph learns the same shapes (degrees, relation frequencies, which tails
are typical) from wrong facts, so a probe of true neighbours must fall to chance for it if the
probe measures knowledge.

`ckbert kg-shuffle --prepared DIR --out DIR2 --seed N` writes a copy of a prepared dataset whose
kg/ is the shuffled store (shards and tokenizer hard-linked where the file system allows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from ckbert.data_prep.kg_store import _ARRAYS, KGStore, _write
from ckbert.data_prep.readers import Tally
from ckbert.errors import UserError

REPAIR_TRIES = 1000


def _bad_edges(head: np.ndarray, rel: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Positions of self-loops and of every repeat of an earlier (head, rel, tail) edge."""
    bad = head == tail
    order = np.lexsort((tail, rel, head))
    h, r, t = head[order], rel[order], tail[order]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = (h[1:] == h[:-1]) & (r[1:] == r[:-1]) & (t[1:] == t[:-1])
    bad[order[dup]] = True
    return np.flatnonzero(bad)


def shuffled_tails(head: np.ndarray, rel: np.ndarray, tail: np.ndarray, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (new tail per edge, mask of the edges kept, true edges among those kept). Tails are permuted within each relation; an
    edge left a self-loop, a repeat or a true fact is swapped with a random edge of its relation
    for which both new edges are valid and wrong (a swap may also trade one true fact for another),
    up to REPAIR_TRIES draws. Self-loops and repeats left then are dropped; true facts left (a
    relation whose tails are nearly all one entity has few wrong arrangements) are kept and counted.
    Memory O(edges): the control is built at demo or experiment scale."""
    rng = np.random.default_rng(seed)
    by_rel = np.argsort(rel, kind="stable")  # positions grouped by relation, in edge order
    shuffled = np.lexsort((rng.random(len(rel)), rel))  # the same groups, each in random order
    new = np.empty_like(tail)
    new[by_rel] = tail[shuffled]
    true = set(zip(head.tolist(), rel.tolist(), tail.tolist(), strict=True))
    count = Counter(zip(head.tolist(), rel.tolist(), new.tolist(), strict=True))
    still_true = np.fromiter(((h, r, t) in true for h, r, t in zip(head.tolist(), rel.tolist(), new.tolist(),
                                                                    strict=True)), dtype=bool, count=len(rel))
    bad = np.union1d(_bad_edges(head, rel, new), np.flatnonzero(still_true))
    sorted_rel = rel[by_rel]
    starts = np.searchsorted(sorted_rel, rel[bad], side="left")
    ends = np.searchsorted(sorted_rel, rel[bad], side="right")

    def valid(h: int, r: int, t: int) -> bool:  # not a self-loop, not there yet
        return h != t and count[(h, r, t)] == 0

    def swap(i: int, lo: int, hi: int, wrong_only: bool) -> bool:
        h, r, t = int(head[i]), int(rel[i]), int(new[i])
        for _ in range(REPAIR_TRIES):
            j = int(by_rel[rng.integers(lo, hi)])
            hj, tj = int(head[j]), int(new[j])
            if hj == h or tj == t or not valid(h, r, tj) or not valid(hj, r, t):
                continue
            if wrong_only and ((h, r, tj) in true or ((hj, r, t) in true and (hj, r, tj) not in true)):
                continue  # i must become wrong, and j must not become true unless it was
            count[(h, r, t)] -= 1
            count[(hj, r, tj)] -= 1
            count[(h, r, tj)] += 1
            count[(hj, r, t)] += 1
            new[i], new[j] = tj, t
            return True
        return False

    for i, lo, hi in zip(bad.tolist(), starts.tolist(), ends.tolist(), strict=True):
        h, r, t = int(head[i]), int(rel[i]), int(new[i])
        broken = h == t or count[(h, r, t)] > 1
        if not broken and (h, r, t) not in true:
            continue  # repaired by an earlier swap
        if not swap(i, lo, hi, wrong_only=True) and broken:
            swap(i, lo, hi, wrong_only=False)  # a valid edge, even a true one, rather than a dropped one
    keep = np.ones(len(rel), dtype=bool)
    keep[_bad_edges(head, rel, new)] = False
    true_kept = sum(1 for e in zip(head[keep].tolist(), rel[keep].tolist(), new[keep].tolist(), strict=True)
                    if e in true)
    return new, keep, true_kept


def shuffle_tails(store: KGStore, out_dir: Path, seed: int) -> KGStore:
    """Write the shuffled copy of `store` to `out_dir` (module docstring) and open it."""
    indptr = np.asarray(store.indptr)
    rel = np.asarray(store.rel)
    tail = np.asarray(store.tail)
    head = np.repeat(np.arange(store.num_entities, dtype=np.int32), np.diff(indptr))
    new, keep, true_kept = shuffled_tails(head, rel, tail, seed)
    head, rel, new = head[keep], rel[keep], new[keep]
    order = np.lexsort((new, rel, head))  # the CSR order: (head, relation, tail)
    head, rel, new = head[order], rel[order], new[order]
    arrays = {name: np.load(store.path / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    arrays["indptr"] = np.zeros(store.num_entities + 1, dtype=np.int64)
    np.cumsum(np.bincount(head, minlength=store.num_entities), out=arrays["indptr"][1:])
    arrays["rel"], arrays["tail"] = rel.astype(np.int32), new.astype(np.int32)
    control = {"kind": "tails shuffled within each relation", "seed": seed, "shuffled_from": store.fingerprint,
               "dropped_edges": int((~keep).sum()), "true_edges_kept": true_kept}
    inverse = store.meta.get("inverse")
    if inverse is not None:
        inverse = {k: v for k, v in inverse.items() if k != "suffix"}
    tally = Tally()
    for key, n in store.meta.get("skipped", {}).items():
        tally.skip(key, str(store.path), n)
    return _write(arrays, Path(out_dir), E=store.num_entities, R=store.num_relations, T=len(new),
                  n_desc=int(store.meta.get("descriptions", 0)), source=f"{store.meta.get('source')} (control)",
                  tally=tally, inverse=inverse,
                  extra={"control": control, **({"graphs": store.meta["graphs"]} if "graphs" in store.meta else {})})


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def write_shuffled_prepared(prepared: Path, out: Path, seed: int, overwrite: bool = False) -> dict:
    """`out` = a copy of the prepared dataset `prepared` whose kg/ is `shuffle_tails` of its own,
    written whole (a staging folder moved into place); -> the control's record, triples included."""
    from ckbert.data_prep.dataset import read_manifest
    from ckbert.outputs import output_dir

    manifest = read_manifest(prepared)
    if not (prepared / "kg").is_dir():
        raise UserError("no kg/ folder", path=prepared)
    store = KGStore.open(prepared / "kg")
    with output_dir(out, overwrite) as tmp:
        for entry in sorted(prepared.iterdir()):
            if entry.name in ("kg", "manifest.json"):
                continue
            if entry.is_dir():
                _link_tree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        shuffled = shuffle_tails(store, tmp / "kg", seed)
        manifest["kg"] = {**manifest["kg"], "fingerprint": shuffled.fingerprint, "control": shuffled.meta["control"]}
        if "triples" in manifest["kg"]:
            manifest["kg"]["triples"] = shuffled.num_triples
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"triples": shuffled.num_triples, "fingerprint": shuffled.fingerprint, **shuffled.meta["control"]}


def main(argv: list[str]) -> int:
    from ckbert.outputs import check_out_dir

    p = argparse.ArgumentParser(prog="ckbert kg-shuffle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True, type=Path, help="a prepared dataset folder (`ckbert prepare`)")
    p.add_argument("--out", required=True, type=Path, help="the new prepared dataset folder (the control)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    check_out_dir(args.out, args.overwrite)
    summary = write_shuffled_prepared(args.prepared, args.out, args.seed, args.overwrite)
    print(json.dumps({"out": str(args.out), **summary}, ensure_ascii=False))
    return 0
