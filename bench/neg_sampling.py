"""CMRM negative sampling cost per mention: random walks first (`sample_negatives`) vs frontier
enumeration alone (`enumerate_negatives`, the sampler before the walks), on the same mentions.

    python bench/neg_sampling.py --prepared DIR [--rows 3200] [--negatives 4] [--out FILE.json]

Takes every linked mention of the first `--rows` rows of a prepared dataset, draws its negatives
from the dataset's KG store with each sampler twice (alternating the order, so that a change of
load hits both alike), and prints milliseconds per mention, shortfalls (fewer than n negatives),
and how often the walks alone fell short (then `sample_negatives` enumerates).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import finish, machine, table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", type=Path, required=True, help="prepared dataset (ckbert prepare --out)")
    p.add_argument("--rows", type=int, default=3200)
    p.add_argument("--negatives", type=int, default=4)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    from ckbert.data_prep.dataset import open_prepared
    from ckbert.data_prep.kg_store import enumerate_negatives, sample_negatives, walk_negatives

    record: dict[str, Any] = {"machine": machine(), "bench": "neg_sampling"}
    _, dataset, kg, _ = open_prepared(args.prepared)
    ents = [int(e) for row in dataset[: args.rows]["ent_id"] for e in row]
    if not ents:
        raise SystemExit(f"{args.prepared}: no linked mention in the first {args.rows} rows")
    n = args.negatives
    samplers = {"walks first (sample_negatives)": sample_negatives,
                "enumeration alone (enumerate_negatives)": enumerate_negatives}
    seconds = dict.fromkeys(samplers, 0.0)
    short = dict.fromkeys(samplers, 0)
    for rep in range(2):
        for name in list(samplers)[:: 1 if rep == 0 else -1]:
            rng = np.random.default_rng(rep)
            t0 = time.perf_counter()
            for e in ents:
                short[name] += len(samplers[name](kg, e, n, rng)) < n
            seconds[name] += time.perf_counter() - t0
    rng = np.random.default_rng(2)
    walks_short = sum(len(walk_negatives(kg, e, n, rng)) < n for e in ents)
    rows = [{"sampler": k, "ms_per_mention": 1000 * seconds[k] / (2 * len(ents)), "shortfalls": short[k]}
            for k in samplers]
    base = rows[1]["ms_per_mention"]
    for r in rows:
        r["speedup_vs_enumeration"] = base / r["ms_per_mention"]
    record.update({"mentions": len(ents), "repeats": 2, "negatives": n, "samplers": rows,
                   "walks_alone_short": walks_short, "kg_inverse_edges": kg.inverse_edges})
    print(f"{len(ents)} linked mentions of the first {args.rows} rows, {n} negatives each, 2 passes per sampler")
    print(table(["sampler", "ms per mention", "shortfalls (of 2 passes)", "x enumeration"],
                [[r["sampler"], r["ms_per_mention"], r["shortfalls"], r["speedup_vs_enumeration"]] for r in rows]))
    print(f"walks alone found fewer than {n} for {walks_short} of {len(ents)} mentions")
    finish(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
