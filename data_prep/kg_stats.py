"""`ckbert kg-stats`: summarise a KG store (or build one from triples into a temp folder first)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from ckbert.data_prep.kg_store import KGStore, build_store_from_file
from ckbert.data_prep.readers import Tally, check_input_file
from ckbert.errors import UserError


def summarise(store: KGStore) -> dict:
    deg = store.degrees()
    nbytes = store.nbytes()
    pct = np.percentile(deg, [50, 90, 99]).tolist() if len(deg) else [0, 0, 0]
    return {
        "entities": store.num_entities,
        "relations": store.num_relations,
        "triples": store.num_triples,
        "descriptions": int(store.meta.get("descriptions", 0)),
        "entities_with_out_edges": int((deg > 0).sum()),
        "out_degree": {"mean": float(deg.mean()) if len(deg) else 0.0, "p50": pct[0], "p90": pct[1], "p99": pct[2],
                       "max": int(deg.max()) if len(deg) else 0},
        "bytes": nbytes,
        "bytes_per_triple": nbytes / max(store.num_triples, 1),
        "skipped": store.meta.get("skipped", {}),
        "inverse_edges": store.inverse_edges,
        "triples_before_inverse": store.meta["inverse"]["triples_before"] if store.inverse_edges else store.num_triples,
        "fingerprint": store.fingerprint,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckbert kg-stats", description=__doc__)
    p.add_argument("kg", type=Path, help="a KG store folder, or a .tsv/.csv triples file")
    p.add_argument("--kg-format", choices=("tsv", "csv"), default=None)
    p.add_argument("--kg-inverse-edges", action="store_true",
                   help="when building from triples: also store every triple reversed (as `ckbert prepare` does)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    if args.kg.is_dir():
        store = KGStore.open(args.kg)
        if args.kg_inverse_edges and not store.inverse_edges:
            raise UserError("--kg-inverse-edges: this KG store was built without inverse edges", path=args.kg)
        stats = summarise(store)
    else:
        check_input_file(args.kg)
        with tempfile.TemporaryDirectory() as tmp:
            tally = Tally()
            store = build_store_from_file(args.kg, args.kg_format, Path(tmp) / "kg", tally=tally,
                                          inverse_edges=args.kg_inverse_edges)
            stats = summarise(store)
            del store
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=1))
        return 0
    d = stats["out_degree"]
    print(f"entities {stats['entities']}, relations {stats['relations']}, triples {stats['triples']}, "
          f"descriptions {stats['descriptions']}")
    print(f"out-degree: mean {d['mean']:.2f}, median {d['p50']:.0f}, p90 {d['p90']:.0f}, p99 {d['p99']:.0f}, "
          f"max {d['max']}; {stats['entities_with_out_edges']} entities have out-edges")
    if stats["inverse_edges"]:
        print(f"inverse edges: yes ({stats['triples_before_inverse']} triples before, {stats['triples']} after)")
    else:
        print("inverse edges: no (out-edges only)")
    print(f"store size {stats['bytes']:,} bytes, {stats['bytes_per_triple']:.1f} bytes per triple")
    print("skipped: " + (", ".join(f"{k} {v}" for k, v in stats["skipped"].items()) or "nothing"))
    return 0
