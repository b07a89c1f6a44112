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
from array import array
from dataclasses import dataclass, field
from itertools import accumulate, chain
from pathlib import Path

from ckbert.data_prep.readers import Tally

ROW_COLUMNS = (
    "input_ids", "word_ids", "word_pos", "dep_head", "dep_label", "sdp_head", "sdp_label",
    "ent_start", "ent_end", "ent_id", "doc_id", "sent_ids",
)


# Column -> (is a list, Arrow/datasets dtype): the row schema of docs/contracts.md.
_COLUMN_TYPES = {
    "input_ids": (True, "int32"), "word_ids": (True, "int32"), "word_pos": (True, "int16"),
    "dep_head": (True, "int32"), "dep_label": (True, "int16"), "sdp_head": (True, "int32"), "sdp_label": (True, "int16"),
    "ent_start": (True, "int32"), "ent_end": (True, "int32"), "ent_id": (True, "int32"),
    "doc_id": (False, "string"), "sent_ids": (True, "string"),
}
assert tuple(_COLUMN_TYPES) == ROW_COLUMNS
_WRITER_BATCH_ROWS = 1000  # datasets' DEFAULT_MAX_BATCH_SIZE
_MAX_ROW_GROUP_BYTES = 100 * 10**6  # datasets' MAX_ROW_GROUP_SIZE ("100MB")


def features():
    """The row schema as `datasets.Features` (what `load_from_disk` reports for a shard)."""
    from datasets import Features, Sequence, Value

    def one(is_list: bool, dtype: str):
        return Sequence(Value(dtype)) if is_list else Value(dtype)

    return Features({c: one(*t) for c, t in _COLUMN_TYPES.items()})


def _features_dict() -> dict:
    """`datasets.Features.to_dict()` of the row schema, built without importing datasets (the tests
    compare it with datasets' own)."""
    def one(is_list: bool, dtype: str) -> dict:
        value = {"dtype": dtype, "_type": "Value"}
        return {"feature": value, "_type": "List"} if is_list else value

    return {c: one(*t) for c, t in _COLUMN_TYPES.items()}


def arrow_schema():
    """The Arrow schema `Dataset.save_to_disk` writes for the row schema, metadata included."""
    import pyarrow as pa

    types = {"int32": pa.int32(), "int16": pa.int16(), "string": pa.string()}
    fields = [pa.field(c, pa.list_(types[d]) if is_list else types[d]) for c, (is_list, d) in _COLUMN_TYPES.items()]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": _features_dict()}})})


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


def _arrow_column(values: list, is_list: bool, dtype: str):
    """Python values -> Arrow array, built from flat buffers (array.array, C-level flattening).

    Several times faster than `pa.Table.from_pydict`, and unlike every `pa.array` call it does not
    import pandas (0.7 s per worker process). The tests check that the tables are equal."""
    import pyarrow as pa

    if dtype == "string" and not is_list:
        data = "".join(values).encode("utf-8")
        offsets = array("i", [0, *accumulate(len(v.encode("utf-8")) for v in values)])
        return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    offsets = array("i", [0, *accumulate(map(len, values))])
    if dtype == "string":
        child = _arrow_column(list(chain.from_iterable(values)), False, "string")
    else:
        flat = array({"int32": "i", "int16": "h"}[dtype], chain.from_iterable(values))
        child = pa.Array.from_buffers(getattr(pa, dtype)(), len(flat), [None, pa.py_buffer(flat)])
    return pa.Array.from_buffers(pa.list_(child.type), len(values), [None, pa.py_buffer(offsets)], children=[child])


def rows_to_table(rows: dict[str, list]):
    """Packed rows (column -> per-row values) -> an Arrow table with `arrow_schema()`."""
    import pyarrow as pa

    return pa.Table.from_arrays([_arrow_column(rows[c], *_COLUMN_TYPES[c]) for c in _COLUMN_TYPES], schema=arrow_schema())


def save_table(table, folder: Path) -> dict[str, str]:
    """Write `table` (row schema) as the folder `datasets.Dataset.save_to_disk` writes: one Arrow IPC
    stream file in record batches of 1000 rows, `dataset_info.json` and `state.json`.

    Written with pyarrow alone because importing `datasets` costs about 2 s per process, a large part
    of a `ckbert prepare` run; the tests check that the files equal those of `save_to_disk` byte for
    byte (state.json apart from its random fingerprint) and that `load_from_disk` reads them. A shard
    above 500 MB (never reached at --seq-len 126) would be one file here and several with datasets.
    Returns the sha256 of each Arrow file (`arrow_digest`).
    """
    import pyarrow as pa

    folder.mkdir(parents=True)
    rows, nbytes = table.num_rows, table.nbytes
    files = []
    if rows:  # datasets writes no data file for an empty table
        fname = "data-00000-of-00001.arrow"
        batch = min(_WRITER_BATCH_ROWS, max(1, rows * _MAX_ROW_GROUP_BYTES // nbytes)) if nbytes else _WRITER_BATCH_ROWS
        table = table.combine_chunks()
        with pa.OSFile(str(folder / fname), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for start in range(0, rows, batch):
                writer.write_table(table.slice(start, batch), batch)
        files.append({"filename": fname})
    digest = arrow_digest(folder)
    # datasets draws a random fingerprint here; one derived from the data is as valid for
    # load_from_disk and keeps the folder reproducible.
    fp = hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:16]
    state = {"_data_files": files, "_fingerprint": fp, "_format_columns": None, "_format_kwargs": {},
             "_format_type": None, "_output_all_columns": False, "_split": None}
    info = {"citation": "", "description": "", "features": _features_dict(), "homepage": "", "license": ""}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return digest


def write_shard(shards_dir: Path, name: str, rows: dict[str, list], done_info: dict) -> int:
    """Write rows as `shards_dir/name` (temp + rename), then `name.done`. Returns the row count."""
    final = shards_dir / name
    tmp = shards_dir / f"{name}.tmp"
    for p in (tmp, final):
        if p.exists():
            shutil.rmtree(p)
    table = rows_to_table(rows)
    digest = save_table(table, tmp)
    os.replace(tmp, final)
    sizes = {f: (final / f).stat().st_size for f in digest}  # what open_prepared checks on every open
    info = dict(done_info, rows=table.num_rows, sha256=digest, bytes=sizes)
    write_json_atomic(shards_dir / f"{name}.done", info)
    return table.num_rows


def shard_is_done(shards_dir: Path, name: str) -> dict | None:
    """The `.done` record of a finished shard, or None (a shard without it is unfinished)."""
    done = shards_dir / f"{name}.done"
    if not done.is_file() or not (shards_dir / name).is_dir():
        return None
    try:
        return json.loads(done.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
