"""The per-shard work: parse lines, annotate, tokenize and align, link, pack, write.

`process_shard` runs in a worker process (or in the main process with one worker). The heavy
objects (annotator, tokenizer, linker automaton) are set once in the module-level `_CTX` before
the worker pool forks, so workers share them copy-on-write instead of rebuilding or unpickling them.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from pathlib import Path

import numpy as np

from ckbert.data_prep.annotate import Annotator
from ckbert.data_prep.linker import Linker
from ckbert.data_prep.readers import Tally, parse_line
from ckbert.data_prep.shards import RowPacker, SentData, finish_sentence, write_shard
from ckbert.data_prep.tokenizer import WordEncoder


@dataclass
class Context:
    fmt: str
    text_field: str
    id_field: str
    max_sentence_chars: int
    seq_len: int
    batch_sentences: int
    annotator: Annotator
    tokenizer: object
    linker: Linker
    shards_dir: Path


_CTX: Context | None = None
_ENCODER: WordEncoder | None = None  # per process: its word cache warms up over the shards


def set_context(ctx: Context) -> None:
    global _CTX, _ENCODER
    _CTX = ctx
    _ENCODER = None  # its word cache belongs to the previous context's tokenizer


def _ids(values: list[str], index: dict[str, int], unknown: str, tally: Tally, where: str, reason: str) -> list[int]:
    try:
        return list(map(index.__getitem__, values))  # the common case, in C
    except KeyError:
        pass
    out = [index.get(v, -1) for v in values]
    n = out.count(-1)
    tally.note(reason, where, n)
    return [index[unknown] if i == -1 else i for i in out]


@dataclass
class ShardJob:
    index: int
    source: str  # file name used in ids
    lines: list[tuple[int, str]]


def process_shard(job: ShardJob) -> dict:
    """Process one shard's lines and write it; returns its `.done` record."""
    # The shard allocates several short-lived lists per sentence and no reference cycles, so reference
    # counting frees all of it; the cyclic collector would only re-scan those lists over and over
    # (about a quarter of the shard CPU time in a single-process measurement). Off for the shard.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _process_shard(job)
    finally:
        if enabled:
            gc.enable()


def _process_shard(job: ShardJob) -> dict:
    ctx = _CTX
    assert ctx is not None, "set_context() must run before process_shard()"
    tally = Tally()
    ann = ctx.annotator
    pos_index = {t: i for i, t in enumerate(ann.pos_tags)}
    dep_index = {t: i for i, t in enumerate(ann.dep_labels)}
    sdp_index = {t: i for i, t in enumerate(ann.sdp_labels)}
    has_dep, has_sdp = "dep" in ann.provides, "sdp" in ann.provides
    docs = []
    for lineno, line in job.lines:
        doc = parse_line(
            ctx.fmt, job.source, lineno, line, tally, text_field=ctx.text_field, id_field=ctx.id_field,
            max_sentence_chars=ctx.max_sentence_chars,
        )
        if doc is not None:
            docs.append((lineno, doc))
    flat = [s for _, d in docs for s in d.sentences]
    annotations = []
    for b in range(0, len(flat), ctx.batch_sentences):
        annotations.extend(ann.annotate(flat[b : b + ctx.batch_sentences]))
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = WordEncoder(ctx.tokenizer)
    encoded = _ENCODER.encode_lens([a.words for a in annotations])  # per sentence (ids, tokens per word)

    packer = RowPacker(ctx.seq_len, has_dep, has_sdp, tally)
    linked: set[int] = set()
    n_chars = n_sents = n_with_mention = 0
    k = 0
    for lineno, doc in docs:
        where = f"{job.source}:{lineno}"
        sents = []
        for s in doc.sentences:
            a = annotations[k]
            ids, lens = encoded[k]
            k += 1
            words, pos = a.words, a.pos
            dep_head, dep_label, sdp_head, sdp_label = a.dep_head, a.dep_label, a.sdp_head, a.sdp_label
            # token -> word map (non-decreasing, gap-free when every word has a token), built in C
            tok_word = list(chain.from_iterable(map(repeat, range(len(lens)), lens)))
            spans = None
            if 0 in lens:
                # Words with no token (cannot happen after normalisation except pure whitespace):
                # drop them and renumber, so that word_pos stays one entry per aligned word.
                keep = sorted({w for w in tok_word if w is not None})
                remap = {w: j for j, w in enumerate(keep)}
                tally.note("words_without_tokens", where, len(words) - len(keep))
                ids = [t for t, w in zip(ids, tok_word, strict=True) if w is not None]
                tok_word = [remap[w] for w in tok_word if w is not None]
                words, pos = [words[w] for w in keep], [pos[w] for w in keep]
                old_to_new = {w + 1: remap[w] + 1 for w in keep}
                if dep_head is not None:
                    dep_head = [old_to_new.get(dep_head[w], 0) for w in keep]
                    dep_label = [dep_label[w] for w in keep]
                if sdp_head is not None:
                    sdp_head = [old_to_new.get(sdp_head[w], 0) for w in keep]
                    sdp_label = [sdp_label[w] for w in keep]
                ner = None
            else:
                ner = a.ner
                ends = list(accumulate(lens))
                spans = ([0, *ends[:-1]], ends)  # per word, its first token and one past its last
            if not words:
                tally.skip("empty_after_tokenization", where)
                continue
            ner_spans = [(s0, e0) for s0, e0, _ in ner] if ner else []
            mentions = ctx.linker.link(words, ner_spans, pos)
            linked.update(e for _, _, e in mentions)
            n_with_mention += bool(mentions)
            sd = SentData(
                sid=s.sid, ids=ids, tok_word=tok_word,
                pos=_ids(pos, pos_index, "x" if "x" in pos_index else ann.pos_tags[0], tally, where, "unknown_pos_tag"),
                dep_head=dep_head if has_dep else None,
                dep_label=_ids(dep_label, dep_index, ann.dep_labels[0], tally, where, "unknown_dep_label") if has_dep and dep_label is not None else None,
                sdp_head=sdp_head if has_sdp else None,
                sdp_label=_ids(sdp_label, sdp_index, ann.sdp_labels[0], tally, where, "unknown_sdp_label") if has_sdp and sdp_label is not None else None,
                mentions=mentions,
            )
            if spans is None:
                finish_sentence(sd)
            else:
                sd.word_tok_start, sd.word_tok_end = spans
            sents.append(sd)
            n_chars += len(s.text)
            n_sents += 1
        if sents:
            packer.add_document(doc.doc_id, sents, where)
    name = f"shard-{job.index:05d}"
    # Linked entity ids, kept for the KG coverage line of the summary (also after a resume).
    np.save(ctx.shards_dir.parent / "state" / f"{name}.entities.npy", np.array(sorted(linked), dtype=np.int32))
    counts = dict(packer.stats, documents=len(docs), sentences=n_sents, characters=n_chars,
                  sentences_with_mention=n_with_mention)
    info = {
        "source": {"file": job.source, "first_line": job.lines[0][0], "last_line": job.lines[-1][0]},
        "counts": counts,
        "tally": tally.to_dict(),
    }
    rows = write_shard(ctx.shards_dir, name, packer.rows, info)
    return dict(info, name=name, rows=rows)
