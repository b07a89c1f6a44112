"""KG store + linker at scale: graphs grown from real CMeKG names to 100k, 1M and 10M triples.

For each size, a fresh process builds the store from a TSV file (parsing included) and the linker
automaton, and reports build time, peak memory (ru_maxrss of that process), store bytes per triple
and linking throughput over People's Daily sentences (gold words). Targets (issue 2): 10M triples
built in <= 180 s and <= 4 GB; linking throughput at 10M >= 0.7x that at 100k.

Growth: every graph holds all 170k real CMeKG names (the first triples pair them up), so the
names that can occur in the text are the same at every size and only the graph grows. Entities
number max(170k, triples / 5.7) (5.7 = CMeKG's own triples per entity); names beyond the real ones
join two real names (e.g. "糖尿病" + "胰岛素"), so the automaton grows with realistic Chinese
prefixes. The remaining heads, relations (the 469 real ones) and tails are drawn at random.

    python bench/kg_scale.py                      # 100k, 1M, 10M
    python bench/kg_scale.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _real_names():
    from ckbert.data_prep.demo_data import demo_sources, load_cmekg

    graph = load_cmekg(demo_sources()["cmekg"])
    names, rels = set(), set()
    for h, rs in graph.items():
        names.add(h)
        for r, objs in rs.items():
            rels.add(r)
            names.update(objs)
    names = sorted(n for n in (" ".join(x.split()) for x in names) if n)
    return names, sorted(" ".join(r.split()) for r in rels)


def write_graph(path: Path, triples: int, seed: int = 0) -> None:
    names, rels = _real_names()
    rng = np.random.default_rng(seed)
    n_real = len(names)
    n_ent = max(int(triples / 5.7), n_real)
    if n_ent > len(names):
        extra = n_ent - len(names)
        a = rng.integers(0, len(names), extra)
        b = rng.integers(0, len(names), extra)
        names = names + list(dict.fromkeys(names[i] + names[j] for i, j in zip(a, b, strict=True)))
    n_ent = len(names)
    block = 1_000_000
    with open(path, "w", encoding="utf-8") as f:
        cover = rng.permutation(n_real)
        pairs = min(n_real // 2, triples)
        r = rng.integers(0, len(rels), pairs)
        f.write("".join(f"{names[cover[2 * k]]}\t{rels[r[k]]}\t{names[cover[2 * k + 1]]}\n" for k in range(pairs)))
        for s in range(pairs, triples, block):
            n = min(block, triples - s)
            h = rng.integers(0, n_ent, n)
            r = rng.integers(0, len(rels), n)
            t = rng.integers(0, n_ent, n)
            f.write("".join(f"{names[x]}\t{rels[y]}\t{names[z]}\n" for x, y, z in zip(h, r, t, strict=True)))


def _sentences(limit_chars: int = 400_000) -> list[list[str]]:
    from ckbert.data_prep.demo_data import demo_sources
    from ckbert.data_prep.readers import Tally, parse_line

    out, chars, tally = [], 0, Tally()
    with open(demo_sources()["people_daily"], encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            doc = parse_line("pretagged", "pd", i, line.rstrip("\n"), tally)
            for s in doc.sentences if doc else []:
                out.append(s.words)
                chars += len(s.text)
            if chars >= limit_chars:
                break
    return out


def measure(tsv: Path, out_dir: Path) -> dict:
    """Runs in a fresh process: build store + linker, then link."""
    from ckbert.data_prep.kg_store import build_store_from_file
    from ckbert.data_prep.linker import Linker, LinkerConfig
    from ckbert.data_prep.readers import Tally

    sents = _sentences()
    t0, c0 = time.perf_counter(), time.process_time()
    tally = Tally()
    store = build_store_from_file(tsv, "tsv", out_dir, tally=tally)
    t_store, c_store = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    linker = Linker(store, LinkerConfig(min_len=2))
    t_linker, c_linker = time.perf_counter() - t1, time.process_time() - c1
    chars = sum(len(w) for s in sents for w in s)
    # CPU time of this process, best of 5: the machine is shared, wall time would measure the neighbours
    best = float("inf")
    mentions = 0
    for _ in range(5):
        t2 = time.process_time()
        mentions = sum(len(linker.link(s)) for s in sents)
        best = min(best, time.process_time() - t2)
    return {
        "triples": store.num_triples, "entities": store.num_entities, "relations": store.num_relations,
        "store_build_s": round(t_store, 2), "linker_build_s": round(t_linker, 2),
        "build_total_s": round(t_store + t_linker, 2),
        "build_total_cpu_s": round(c_store + c_linker, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bytes_per_triple": round(store.nbytes() / store.num_triples, 2),
        "patterns": linker.num_patterns, "link_chars": chars, "mentions": mentions,
        "link_chars_per_cpu_s": round(chars / best),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--measure", nargs=2, metavar=("TSV", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]))))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            tsv = Path(tmp) / f"kg-{size}.tsv"
            t = time.perf_counter()
            write_graph(tsv, size)
            gen = time.perf_counter() - t
            proc = subprocess.run([sys.executable, __file__, "--measure", str(tsv), str(Path(tmp) / f"store-{size}")],
                                  capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["tsv_mb"] = round(tsv.stat().st_size / 2**20, 1)
            res["generate_s"] = round(gen, 1)
            results.append(res)
            print(json.dumps(res), flush=True)
            tsv.unlink()
    base = results[0]["link_chars_per_cpu_s"]
    print(f"{'triples':>10} {'entities':>9} {'build s':>8} {'peak MB':>8} {'B/triple':>8} {'link chars/cpu-s':>16} {'ratio':>6}")
    for r in results:
        print(f"{r['triples']:>10} {r['entities']:>9} {r['build_total_s']:>8} {r['peak_rss_mb']:>8} "
              f"{r['bytes_per_triple']:>8} {r['link_chars_per_cpu_s']:>16} {r['link_chars_per_cpu_s'] / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
