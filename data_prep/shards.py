"""Turn annotated sentences into packed rows and write one shard (docs/contracts.md, row schema).

One row packs consecutive sentences of one document up to `seq_len` tokens ([CLS]/[SEP] excluded).
A word is never split across rows: a sentence longer than `seq_len` is cut at word boundaries into
several pieces (counted as `sentences_split`); arcs whose head falls outside the piece get head -1
(counted `arcs_cut`), mentions crossing the cut are dropped (counted `mentions_cut`). A single word
longer than `seq_len` tokens drops its sentence (counted skip `word_longer_than_seq_len`).

A shard is written to a temp folder, renamed into place, and only then is its `.done` file written
(itself via temp + rename): a shard folder without `.done` is unfinished and is redone on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from ckbert.data_prep.readers import Tally

ROW_COLUMNS = (
    "input_ids", "word_ids", "word_pos", "dep_head", "dep_label", "sdp_head", "sdp_label",
    "ent_start", "ent_end", "ent_id", "doc_id", "sent_ids",
)


def features():
    from datasets import Features, Sequence, Value

    i32, i16 = Sequence(Value("int32")), Sequence(Value("int16"))
    return Features({
        "input_ids": i32, "word_ids": i32, "word_pos": i16,
        "dep_head": i32, "dep_label": i16, "sdp_head": i32, "sdp_label": i16,
        "ent_start": i32, "ent_end": i32, "ent_id": i32,
        "doc_id": Value("string"), "sent_ids": Sequence(Value("string")),
    })


@dataclass
class SentData:
    """One annotated, tokenized, linked sentence (indices are sentence-local)."""

    sid: str
    ids: list[int]  # token ids
    tok_word: list[int]  # per token, its word index
    pos: list[int]  # per word, POS id
    dep_head: list[int] | None  # per word, 1-based head (0 = root)
    dep_label: list[int] | None
    sdp_head: list[int] | None
    sdp_label: list[int] | None
    mentions: list[tuple[int, int, int]]  # (first word, end word, entity id)
    word_tok_start: list[int] = field(default_factory=list)  # per word, its first token
    word_tok_end: list[int] = field(default_factory=list)  # per word, one past its last token


def finish_sentence(s: SentData) -> None:
    """Per-word token spans from the (non-decreasing, gap-free) token -> word map."""
    counts = [0] * len(s.pos)
    for w in s.tok_word:
        counts[w] += 1
    ends = list(accumulate(counts))
    s.word_tok_start = [e - c for e, c in zip(ends, counts, strict=True)]
    s.word_tok_end = ends


class RowPacker:
    """Packs the pieces of one document's sentences into rows of at most `seq_len` tokens."""

    def __init__(self, seq_len: int, has_dep: bool, has_sdp: bool, tally: Tally):
        self.seq_len = seq_len
        self.has_dep = has_dep
        self.has_sdp = has_sdp
        self.tally = tally
        self.rows: dict[str, list] = {c: [] for c in ROW_COLUMNS}
        self.stats = {"tokens": 0, "mentions": 0, "dep_arcs": 0, "sdp_arcs": 0}
        self._doc_id = ""
        self._reset()

    def _reset(self) -> None:
        self.cur = {c: [] for c in ROW_COLUMNS if c != "doc_id"}

    def _flush(self) -> None:
        if self.cur["input_ids"]:
            for c, v in self.cur.items():
                self.rows[c].append(v)
            self.rows["doc_id"].append(self._doc_id)
        self._reset()

    def add_document(self, doc_id: str, sents: list[SentData], where: str) -> None:
        self._doc_id = doc_id
        for s in sents:
            for w0, w1 in self._pieces(s, where):
                t0, t1 = s.word_tok_start[w0], s.word_tok_end[w1 - 1]
                if len(self.cur["input_ids"]) + (t1 - t0) > self.seq_len:
                    self._flush()
                self._add_piece(s, w0, w1, where)
        self._flush()

    def _pieces(self, s: SentData, where: str) -> list[tuple[int, int]]:
        n = len(s.pos)
        if n == 0:
            return []
        if len(s.ids) <= self.seq_len:
            return [(0, n)]
        sizes = [e - b for b, e in zip(s.word_tok_start, s.word_tok_end, strict=True)]
        if max(sizes) > self.seq_len:
            self.tally.skip("word_longer_than_seq_len", where)
            return []
        self.tally.note("sentences_split", where)
        pieces, start, total = [], 0, 0
        for w, size in enumerate(sizes):
            if total + size > self.seq_len:
                pieces.append((start, w))
                start, total = w, 0
            total += size
        pieces.append((start, n))
        return pieces

    def _arcs(self, heads: list[int], labels: list[int], w0: int, w1: int, woff: int, where: str):
        out_h = []
        for k in range(w0, w1):
            h = heads[k]
            if h == 0:
                out_h.append(-1)
            elif w0 <= h - 1 < w1:
                out_h.append(h - 1 - w0 + woff)
            else:
                out_h.append(-1)
                self.tally.note("arcs_cut", where)
        return out_h, labels[w0:w1]

    def _add_piece(self, s: SentData, w0: int, w1: int, where: str) -> None:
        cur = self.cur
        woff = len(cur["word_pos"])
        toff = len(cur["input_ids"])
        t0, t1 = s.word_tok_start[w0], s.word_tok_end[w1 - 1]
        cur["input_ids"].extend(s.ids[t0:t1])
        cur["word_ids"].extend(map((woff - w0).__add__, s.tok_word[t0:t1]))  # row-local word index, in C
        cur["word_pos"].extend(s.pos[w0:w1])
        self.stats["tokens"] += t1 - t0
        if self.has_dep and s.dep_head is not None:
            h, lab = self._arcs(s.dep_head, s.dep_label, w0, w1, woff, where)
            cur["dep_head"].extend(h)
            cur["dep_label"].extend(lab)
            self.stats["dep_arcs"] += sum(1 for x in h if x >= 0)
        if self.has_sdp and s.sdp_head is not None:
            h, lab = self._arcs(s.sdp_head, s.sdp_label, w0, w1, woff, where)
            cur["sdp_head"].extend(h)
            cur["sdp_label"].extend(lab)
            self.stats["sdp_arcs"] += sum(1 for x in h if x >= 0)
        for ws, we, ent in s.mentions:
            if w0 <= ws and we <= w1:
                cur["ent_start"].append(s.word_tok_start[ws] - t0 + toff)
                cur["ent_end"].append(s.word_tok_end[we - 1] - t0 + toff)
                cur["ent_id"].append(ent)
                self.stats["mentions"] += 1
            elif ws < w1 and we > w0:
                self.tally.note("mentions_cut", where)
        cur["sent_ids"].append(s.sid)


def arrow_digest(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.glob("*.arrow")):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        out[f.name] = h.hexdigest()
    return out


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def write_shard(shards_dir: Path, name: str, rows: dict[str, list], done_info: dict) -> int:
    """Write rows as `shards_dir/name` (temp + rename), then `name.done`. Returns the row count."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    final = shards_dir / name
    tmp = shards_dir / f"{name}.tmp"
    for p in (tmp, final):
        if p.exists():
            shutil.rmtree(p)
    feats = features()
    # Build the Arrow table directly (datasets' per-example encoding is slow for list columns).
    table = pa.Table.from_pydict(rows, schema=feats.arrow_schema)
    ds = Dataset(InMemoryTable(table))
    if ds.features != feats:
        raise AssertionError(f"shard schema mismatch: {ds.features} != {feats}")
    ds.save_to_disk(str(tmp))
    os.replace(tmp, final)
    info = dict(done_info, rows=len(ds), sha256=arrow_digest(final))
    write_json_atomic(shards_dir / f"{name}.done", info)
    return len(ds)


def shard_is_done(shards_dir: Path, name: str) -> dict | None:
    """The `.done` record of a finished shard, or None (a shard without it is unfinished)."""
    done = shards_dir / f"{name}.done"
    if not done.is_file() or not (shards_dir / name).is_dir():
        return None
    try:
        return json.loads(done.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
