"""`ckbert prepare`: corpus + KG -> prepared dataset directory (docs/contracts.md), resumable.

Order of work: check the output folder and the run identity (`state/run.json`), build or reuse the
KG store (`kg/`), load or build the tokenizer (`tokenizer/`), then stream the corpus in shards of
`--shard-lines` lines to worker processes; finished shards (with `.done`) are skipped when the same
command runs again. `manifest.json` is written last, atomically: its presence means "complete".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ckbert.config import check_number, read_json
from ckbert.data_prep import kg_store
from ckbert.data_prep import tokenizer as tok_mod
from ckbert.data_prep.annotate import ANNOTATORS, JIEBA_ENGINES, make_annotator
from ckbert.data_prep.linker import Linker, LinkerConfig, read_stop_list
from ckbert.data_prep.pipeline import Context, ShardJob, process_shard, set_context
from ckbert.data_prep.readers import FORMATS, Tally, check_input_file, read_lines
from ckbert.data_prep.shards import shard_is_done, write_json_atomic
from ckbert.errors import UserError

FORMAT_VERSION = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckbert prepare", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, nargs="+", required=True, help="corpus file(s), one document per line")
    p.add_argument("--format", choices=FORMATS, default="text", help="corpus format (default: text)")
    p.add_argument("--text-field", default="text", help="JSON Lines: field holding the text")
    p.add_argument("--id-field", default="id", help="JSON Lines: field holding the document id, when present")
    p.add_argument("--kg", type=Path, nargs="+", required=True,
                   help="KG triples (.tsv or .csv with a header; several files merge into one graph, each "
                        "reported by the probes under its file stem) or one KG store folder")
    p.add_argument("--kg-format", choices=("tsv", "csv"), default=None, help="default: from the file suffix")
    p.add_argument("--kg-desc-relation", default=None, help="relation whose tail is the head's description")
    p.add_argument("--kg-inverse-edges", action="store_true",
                   help="also store every triple reversed as (tail, <relation>_inv, head), so hop sampling walks "
                        "both directions (entities seen only as tails get 1-hop facts)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (its parent must exist); rerunning the same command resumes it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the prepared dataset (finished or not) that --out holds, instead of refusing")
    p.add_argument("--annotator", choices=ANNOTATORS, default="jieba")
    p.add_argument("--ltp-model", default=None, help="LTP 4.2 model folder (with config.json) or hub id")
    p.add_argument("--jieba-hmm", action="store_true", help="jieba: use the HMM for unknown words (slower)")
    p.add_argument("--jieba-engine", choices=JIEBA_ENGINES, default="rjieba",
                   help="jieba segmentation: rjieba (Rust port, default, needs the rjieba package) or jieba (pure Python)")
    p.add_argument("--device", default="cpu", help="LTP: torch device")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokenizer", type=Path, help="Hugging Face BERT tokenizer folder (e.g. bert-base-chinese)")
    g.add_argument("--build-vocab", action="store_true", help="train a WordPiece vocabulary on the corpus")
    p.add_argument("--vocab-size", type=int, default=21128)
    p.add_argument("--seq-len", type=int, default=126, help="max tokens per row, without [CLS]/[SEP]")
    p.add_argument("--min-mention-len", type=int, default=2)
    p.add_argument("--max-entity-chars", type=int, default=256,
                   help="KG names longer than this are never linked (skipped and counted)")
    p.add_argument("--stop-list", type=Path, default=None, help="entity names never linked, one per line")
    p.add_argument("--link-pos", default="n", help="comma-separated POS prefixes a mention's last word must have "
                   "('' = no POS filter; default n: nouns and proper names)")
    p.add_argument("--link-ner-only", action="store_true", help="link only spans the annotator tags as NER")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--shard-lines", type=int, default=1000,
                   help="corpus lines per shard (small enough that the last shards keep every worker busy)")
    p.add_argument("--max-chars", type=int, default=None, help="stop reading after this many characters per file")
    p.add_argument("--max-sentence-chars", type=int, default=256, help="longer sentences are cut (LTP limit 510)")
    p.add_argument("--batch-sentences", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# What a run writes into --out; --overwrite and a restart remove exactly these (manifest.json first,
# so the folder never looks complete while it is being cleared).
RUN_ENTRIES = ("manifest.json", "manifest.json.tmp", "state", "shards", "kg", "kg.tmp", "tokenizer", "tokenizer.tmp")


def _clear_run(out: Path) -> None:
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _finished_shards(out: Path) -> int:
    shards = out / "shards"
    return sum(1 for f in shards.glob("*.done")) if shards.is_dir() else 0


def _check_run(out: Path, ident: dict, overwrite: bool) -> bool:
    """Decide what to do with what --out holds; True when it already holds this run, complete.

    - nothing (or --overwrite): a fresh run (--overwrite clears an earlier run first);
    - the same settings: resume it (finished shards are kept), or nothing to do when complete;
    - other settings, unfinished, no finished shard (a run that failed early, e.g. on a bad input
      file, and was fixed): restarted in place;
    - other settings with finished shards or complete: refused (rerun the original command to
      resume it, or pass --overwrite).
    """
    run_file = out / "state" / "run.json"
    complete = (out / "manifest.json").is_file()
    if not run_file.is_file() and not complete:
        return False
    if overwrite:
        print(f"ckbert prepare: --overwrite: removing the earlier run in {out}", file=sys.stderr)
        _clear_run(out)
        return False
    if not run_file.is_file():
        raise UserError("holds a prepared dataset without its run record (state/run.json), so its settings are "
                        "unknown; pass --overwrite to replace it, or choose a new --out", path=out)
    try:
        old = read_json(run_file, "run record")
    except UserError:
        old = {}
    if old == ident:
        if complete:
            return True
        print(f"ckbert prepare: resuming the unfinished run in {out}", file=sys.stderr)
        return False
    changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
    finished = _finished_shards(out)
    if complete:
        raise UserError(f"holds a complete prepared dataset made with different settings ({', '.join(changed)}); "
                        "pass --overwrite to replace it, or choose a new --out", path=out)
    if finished:
        raise UserError(f"holds an unfinished run with different settings ({', '.join(changed)}) and {finished} finished "
                        "shard(s): rerun its original command to resume it, or pass --overwrite to start over",
                        path=out)
    print(f"ckbert prepare: restarting the unfinished run in {out} (no shard was finished; changed: "
          f"{', '.join(changed)})", file=sys.stderr)
    _clear_run(out)
    return False


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a folder", path=out)
    parent = out.parent if str(out.parent) else Path(".")
    if not out.exists() and not parent.is_dir():
        raise UserError("output folder's parent does not exist", path=out)
    target = out if out.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError("output folder is not writable", path=target)
    if not out.exists():
        try:
            out.mkdir()
        except OSError as exc:
            raise UserError(f"cannot create the output folder ({exc.strerror})", path=out) from None
    try:
        probe = out / ".ckbert-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output folder is not writable ({exc.strerror})", path=out) from None
    if any(out.iterdir()) and not (out / "state" / "run.json").is_file() and not (out / "manifest.json").is_file():
        raise UserError("output folder is not empty and holds no ckbert run; choose a new --out "
                        "(--overwrite replaces only a prepared dataset)", path=out)


def _identity(args: argparse.Namespace) -> dict:
    """What must match for a restart to resume (not overwrite) an earlier run."""
    files = []
    for c in args.corpus:
        st = c.stat()
        files.append({"path": str(c.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)})
    keys = ("format", "text_field", "id_field", "kg_format", "kg_desc_relation", "annotator", "ltp_model",
            "jieba_hmm", "build_vocab", "link_pos", "vocab_size", "seq_len", "min_mention_len", "link_ner_only",
            "shard_lines", "max_chars", "max_sentence_chars")
    ident = {k: getattr(args, k) for k in keys}
    ident["corpus"] = files
    kg = [str(k.resolve()) for k in args.kg]
    ident["kg"] = kg[0] if len(kg) == 1 else kg  # one file: as before the option took several
    ident["tokenizer"] = str(args.tokenizer.resolve()) if args.tokenizer else None
    ident["stop_list"] = str(args.stop_list.resolve()) if args.stop_list else None
    if args.annotator == "jieba" and args.jieba_engine != "jieba":
        # Only when not the pure-Python engine (the only one before the option existed), so that older
        # runs still resume with `--jieba-engine jieba`.
        ident["jieba_engine"] = args.jieba_engine
    if args.kg_inverse_edges:
        # Only when set, so that runs started before the option existed still resume / stay complete.
        ident["kg_inverse_edges"] = True
    if args.max_entity_chars != 256:
        # Likewise (a name longer than --max-sentence-chars, 256 by default, never matched anyway).
        ident["max_entity_chars"] = args.max_entity_chars
    return ident


def _prepare_kg(args: argparse.Namespace, out: Path, tally: Tally) -> kg_store.KGStore:
    kg_dir = out / "kg"
    if (kg_dir / "meta.json").is_file():
        store = kg_store.KGStore.open(kg_dir)
        tally.skipped.update(store.meta.get("skipped", {}))
        return store
    if any(k.is_dir() for k in args.kg):
        if len(args.kg) > 1:
            raise UserError("--kg: a KG store folder cannot be merged with other files",
                            path=next(k for k in args.kg if k.is_dir()))
        src = kg_store.KGStore.open(args.kg[0])
        if args.kg_inverse_edges and not src.inverse_edges:
            raise UserError("--kg-inverse-edges: this KG store was built without inverse edges; pass the triples "
                            "file instead (or rebuild the store with the option)", path=args.kg[0])
        tmp = out / "kg.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(args.kg[0], tmp)
        os.replace(tmp, kg_dir)
        tally.skipped.update(src.meta.get("skipped", {}))
        return kg_store.KGStore.open(kg_dir)
    return kg_store.build_store_from_file(args.kg, args.kg_format, kg_dir, tally=tally, desc_relation=args.kg_desc_relation,
                                          inverse_edges=args.kg_inverse_edges)


def _vocab_texts(args: argparse.Namespace):
    from ckbert.data_prep.readers import parse_line

    scratch = Tally()
    for path in args.corpus:
        for lineno, line in read_lines(path, max_chars=args.max_chars):
            doc = parse_line(args.format, path.name, lineno, line, scratch, text_field=args.text_field,
                             id_field=args.id_field, max_sentence_chars=args.max_sentence_chars)
            if doc is not None:
                yield "\n".join(s.text for s in doc.sentences)


def _prepare_tokenizer(args: argparse.Namespace, out: Path):
    """Write out/tokenizer (once) and return its `tokenizers.Tokenizer`. transformers (about 3 s to
    import) is needed only to build a vocabulary or to add the markers to a folder without them."""
    tdir = out / "tokenizer"
    if not (tdir / "tokenizer.json").is_file():
        tmp = out / "tokenizer.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        if args.build_vocab:
            tok_mod.build_vocab(_vocab_texts(args), tmp, vocab_size=args.vocab_size)
        elif tok_mod.has_markers(args.tokenizer):
            tok_mod.copy_tokenizer(args.tokenizer, tmp)
        else:
            tok_mod.load_tokenizer(args.tokenizer).save_pretrained(str(tmp))
        os.replace(tmp, tdir)
    return tok_mod.load_backend(tdir)


def _jobs(args: argparse.Namespace):
    """Yield (shard index, file name, lines) in a fixed order: the same command gives the same shards."""
    index = 0
    for path in args.corpus:
        buf: list[tuple[int, str]] = []
        for item in read_lines(path, max_chars=args.max_chars):
            buf.append(item)
            if len(buf) == args.shard_lines:
                yield ShardJob(index, path.name, buf)
                index += 1
                buf = []
        if buf:
            yield ShardJob(index, path.name, buf)
            index += 1


def _worker_init() -> None:
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _run_shards(args: argparse.Namespace, out: Path, progress) -> list[dict]:
    shards_dir = out / "shards"
    done: dict[int, dict] = {}
    pending = []
    pool = None
    if args.workers > 1:
        pool = mp.get_context("fork").Pool(args.workers, initializer=_worker_init)
    try:
        for job in _jobs(args):
            name = f"shard-{job.index:05d}"
            rec = shard_is_done(shards_dir, name)
            if rec is not None:
                done[job.index] = dict(rec, name=name, resumed=True)
                progress.update(1)
                continue
            if pool is None:
                done[job.index] = process_shard(job)
                progress.update(1)
                continue
            pending.append((job.index, pool.apply_async(process_shard, (job,))))
            # Bounded look-ahead: never more than 2 shards per worker in memory.
            while len(pending) >= 2 * args.workers:
                idx, res = pending.pop(0)
                done[idx] = res.get()
                progress.update(1)
        for idx, res in pending:
            done[idx] = res.get()
            progress.update(1)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return [done[i] for i in sorted(done)]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_number("--seq-len", args.seq_len, low=8)
    check_number("--workers", args.workers, low=1)
    check_number("--shard-lines", args.shard_lines, low=1)
    check_number("--min-mention-len", args.min_mention_len, low=1)
    check_number("--max-entity-chars", args.max_entity_chars, low=max(args.min_mention_len, 1))
    check_number("--max-chars", args.max_chars, low=1)
    check_number("--max-sentence-chars", args.max_sentence_chars, low=1)
    check_number("--batch-sentences", args.batch_sentences, low=1)
    for c in args.corpus:
        check_input_file(c)
    for k in args.kg:
        if not k.exists():
            raise UserError("KG file not found", path=k)
    if args.tokenizer is not None and not args.tokenizer.is_dir():
        raise UserError("tokenizer folder not found", path=args.tokenizer)
    if args.stop_list is not None and not args.stop_list.is_file():
        raise UserError("stop-list file not found", path=args.stop_list)
    out = args.out
    _check_out(out)
    out.mkdir(exist_ok=True)
    t0 = time.time()
    ident = _identity(args)
    run_file = out / "state" / "run.json"
    if _check_run(out, ident, args.overwrite):
        print(f"ckbert prepare: {out} is already complete (manifest.json present); nothing to do")
        return 0
    (out / "state").mkdir(exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    write_json_atomic(run_file, ident)

    tally = Tally()
    store = _prepare_kg(args, out, tally)
    tokenizer = _prepare_tokenizer(args, out)
    annotator = make_annotator(args.annotator, ltp_model=args.ltp_model, jieba_hmm=args.jieba_hmm,
                               jieba_engine=args.jieba_engine, device=args.device)
    stop = read_stop_list(args.stop_list) if args.stop_list else frozenset()
    if args.link_ner_only and "ner" not in annotator.provides:
        raise UserError(f"--link-ner-only needs an annotator with NER; {annotator.name} has none")
    prefixes = tuple(x.strip() for x in args.link_pos.split(",") if x.strip()) or None
    linker = Linker(store, LinkerConfig(min_len=args.min_mention_len, stop_words=stop, ner_only=args.link_ner_only,
                                        pos_prefixes=prefixes, max_chars=args.max_entity_chars))
    if linker.num_too_long:
        tally.skip("entity_name_too_long", f"{' '.join(map(str, args.kg))} (--max-entity-chars {args.max_entity_chars})",
                   linker.num_too_long)
    set_context(Context(
        fmt=args.format, text_field=args.text_field, id_field=args.id_field,
        max_sentence_chars=args.max_sentence_chars, seq_len=args.seq_len, batch_sentences=args.batch_sentences,
        annotator=annotator, tokenizer=tokenizer, linker=linker, shards_dir=out / "shards",
    ))
    t_setup = time.time() - t0

    from tqdm import tqdm

    t1 = time.time()
    with tqdm(desc="shards", unit="shard", disable=args.quiet, file=sys.stderr) as progress:
        records = _run_shards(args, out, progress)
    t_shards = time.time() - t1

    counts = {k: 0 for k in ("documents", "sentences", "tokens", "characters", "mentions", "dep_arcs",
                             "sdp_arcs", "sentences_with_mention")}
    for rec in records:
        tally.merge(Tally.from_dict(rec["tally"]))
        for k in counts:
            counts[k] += int(rec["counts"].get(k, 0))
    if counts["sentences"] == 0:
        raise UserError("no usable sentence in the corpus (see the skipped counts: "
                        f"{dict(tally.skipped) or 'none'})", path=args.corpus[0])
    linked = set()
    for rec in records:
        f = out / "state" / f"{rec['name']}.entities.npy"
        if f.is_file():
            linked.update(np.load(f).tolist())
    new_chars = sum(int(r["counts"]["characters"]) for r in records if not r.get("resumed"))
    tokf = out / "tokenizer"
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["ckbert", "prepare", *argv],
        "annotator": {"name": annotator.name, "version": annotator.version, "provides": list(annotator.provides)},
        "masking_mode": "arcs" if ("dep" in annotator.provides or "sdp" in annotator.provides) else "words",
        "tokenizer": {
            "fingerprint": tok_mod.fingerprint(tokf), "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
            "dep_token_id": tokenizer.token_to_id("[dep]"),
            "sdp_token_id": tokenizer.token_to_id("[sdp]"),
        },
        "kg": {"fingerprint": store.fingerprint, "entities": store.num_entities, "relations": store.num_relations,
               "triples": store.num_triples, "inverse_edges": store.inverse_edges,
               **({"triples_before_inverse": store.meta["inverse"]["triples_before"]} if store.inverse_edges else {})},
        "seq_len": args.seq_len,
        "pos_tags": list(annotator.pos_tags),
        "dep_labels": list(annotator.dep_labels) if "dep" in annotator.provides else [],
        "sdp_labels": list(annotator.sdp_labels) if "sdp" in annotator.provides else [],
        "shards": [{"name": r["name"], "rows": int(r["rows"])} for r in records],
        "counts": {
            **{k: v for k, v in counts.items() if k != "sentences_with_mention"},
            "sentences_with_mention": counts["sentences_with_mention"],
            "linked_entities": len(linked),
            "skipped": dict(tally.skipped),
            "notes": dict(tally.notes),
            "first_case": dict(tally.first),
        },
        "linker": {"min_len": args.min_mention_len, "stop_list": str(args.stop_list) if args.stop_list else None,
                   "ner_only": args.link_ner_only, "pos_prefixes": list(prefixes or []),
                   "patterns": linker.num_patterns, "max_entity_chars": args.max_entity_chars,
                   "names_too_long": linker.num_too_long},
    }
    write_json_atomic(out / "manifest.json", manifest)
    elapsed = time.time() - t0
    _summary(manifest, elapsed, t_setup, t_shards, new_chars)
    return 0


def _summary(m: dict, elapsed: float, t_setup: float, t_shards: float, new_chars: int) -> None:
    c = m["counts"]
    sents = max(c["sentences"], 1)
    rows = sum(s["rows"] for s in m["shards"])
    lines = [
        f"prepared {len(m['shards'])} shards, {rows} rows ({m['annotator']['name']}: {m['annotator']['version']}; "
        f"masking mode {m['masking_mode']})",
        f"  documents {c['documents']}, sentences {c['sentences']}, tokens {c['tokens']}, characters {c['characters']}",
        f"  mentions {c['mentions']} ({c['mentions'] / sents:.3f} per sentence; "
        f"{c['sentences_with_mention'] / sents:.1%} of sentences have one)",
        f"  KG coverage: {c['linked_entities']} of {m['kg']['entities']} entities linked at least once "
        f"({c['linked_entities'] / max(m['kg']['entities'], 1):.2%}); KG {m['kg']['triples']} triples, "
        f"{m['kg']['relations']} relations"
        + (f" (with inverse edges; {m['kg']['triples_before_inverse']} triples before)" if m["kg"]["inverse_edges"] else ""),
        f"  arcs: dep {c['dep_arcs']}, sdp {c['sdp_arcs']}",
    ]
    if c["skipped"]:
        lines.append("  skipped: " + ", ".join(f"{k} {v}" + (f" (first at {c['first_case'][k]})" if k in c["first_case"] else "")
                                               for k, v in sorted(c["skipped"].items())))
    else:
        lines.append("  skipped: nothing")
    if c["notes"]:
        lines.append("  notes: " + ", ".join(f"{k} {v}" for k, v in sorted(c["notes"].items())))
    shard_speed = new_chars / t_shards if t_shards > 0 else 0.0
    total_speed = new_chars / elapsed if elapsed > 0 else 0.0
    lines.append(f"  time {elapsed:.1f}s (setup {t_setup:.1f}s, shards {t_shards:.1f}s); {new_chars} characters "
                 f"processed in this run: {shard_speed:,.0f} characters/s in the shard phase, "
                 f"{total_speed:,.0f} characters/s end to end")
    print("\n".join(lines))
