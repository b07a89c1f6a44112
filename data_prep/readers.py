"""Corpus readers: plain text, JSON Lines and People's Daily style pre-tagged text.

Every format is read line by line (`read_lines`), so no corpus is ever held in memory; a file
ending in `.gz` or `.zst` is decompressed while it is read (`open_input`). One input line
is one document; its id is ``<file name>:L<line>`` (JSON Lines: the value of `--id-field` when the
record has it), and sentence k of it has the id ``<doc id>#<k>``. Bad bytes stop the run with a
one-line `UserError` naming file and line; sentences that cannot be used are counted by reason in a
`Tally` and reported in the summary.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ckbert.data_prep.text import has_chinese, has_traditional, normalize, split_sentences, split_tagged
from ckbert.errors import UserError

FORMATS = ("text", "jsonl", "pretagged")
COMPRESSION = {".gz": "gzip", ".zst": "zstd"}  # file suffix -> pyarrow codec


@dataclass
class Sentence:
    sid: str
    text: str
    words: list[str] | None = None  # gold words (pre-tagged input only)
    tags: list[str] | None = None  # gold POS tags, one per word


@dataclass
class Document:
    doc_id: str
    sentences: list[Sentence]


@dataclass
class Tally:
    """Counted skips (`skipped`, data not used) and notes (`notes`, data used but worth knowing)."""

    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # reason -> "file:line" of its first case

    def skip(self, reason: str, where: str, n: int = 1) -> None:
        self.skipped[reason] += n
        self.first.setdefault(reason, where)

    def note(self, reason: str, where: str, n: int = 1) -> None:
        self.notes[reason] += n
        self.first.setdefault(reason, where)

    def merge(self, other: Tally) -> None:
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)
        for k, v in other.first.items():
            self.first.setdefault(k, v)

    def to_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "notes": dict(self.notes), "first": dict(self.first)}

    @classmethod
    def from_dict(cls, d: dict) -> Tally:
        return cls(Counter(d.get("skipped", {})), Counter(d.get("notes", {})), dict(d.get("first", {})))


def base_name(path: Path) -> Path:
    """`path` without a compression suffix (`kg.tsv.gz` -> `kg.tsv`): what its suffix and stem mean."""
    return path.with_suffix("") if path.suffix.lower() in COMPRESSION else path


def open_input(path: Path) -> io.BufferedIOBase:
    """The bytes of `path`, decompressed on the fly when it ends in `.gz` or `.zst`."""
    codec = COMPRESSION.get(path.suffix.lower())
    if codec is None:
        return path.open("rb")
    import pyarrow as pa

    return io.BufferedReader(pa.input_stream(str(path), compression=codec))


def _decompress_error(path: Path, exc: Exception) -> UserError:
    return UserError(f"cannot decompress ({str(exc).splitlines()[0]})", path=path)


def check_input_file(path: Path) -> None:
    """Fail early, with the file name, on a missing, empty, binary or undecompressable input."""
    if not path.exists():
        raise UserError("file not found", path=path)
    if not path.is_file():
        raise UserError("not a regular file", path=path)
    if path.stat().st_size == 0:
        raise UserError("empty file", path=path)
    try:
        with open_input(path) as f:
            head = f.read(8192)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid / IOError are ValueError / OSError
        raise _decompress_error(path, exc) from None
    if not head:
        raise UserError("empty file (after decompression)", path=path)
    if b"\x00" in head:
        offset = head.index(b"\x00")
        raise UserError(f"binary file (NUL byte at offset {offset}), expected UTF-8 text", path=path)


def read_lines(path: Path, start_line: int = 1, max_chars: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, decoded line without its newline); stops after `max_chars` characters."""
    check_input_file(path)
    chars = 0
    with open_input(path) as f:
        lines = enumerate(f, 1)
        while True:
            try:
                lineno, raw = next(lines)
            except StopIteration:
                return
            except (OSError, ValueError) as exc:  # a truncated or damaged compressed file
                raise _decompress_error(path, exc) from None
            if b"\x00" in raw:
                raise UserError("binary data (NUL byte), expected UTF-8 text", path=path, line=lineno)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"invalid UTF-8 (byte {exc.start} of the line)", path=path, line=lineno) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            text = text.rstrip("\r\n")
            chars += len(text)
            if lineno >= start_line:
                yield lineno, text
            if max_chars is not None and chars >= max_chars:
                return


def parse_line(
    fmt: str,
    source: str,
    lineno: int,
    line: str,
    tally: Tally,
    *,
    text_field: str = "text",
    id_field: str = "id",
    max_sentence_chars: int = 256,
) -> Document | None:
    """One input line -> one Document (None for a blank line or one with no usable sentence)."""
    where = f"{source}:{lineno}"
    doc_id = f"{source}:L{lineno}"
    if not line.strip():
        tally.note("blank_lines", where)
        return None
    if fmt == "jsonl":
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=source, line=lineno) from None
        if not isinstance(record, dict) or text_field not in record:
            raise UserError(f"JSON record has no field {text_field!r}", path=source, line=lineno)
        if not isinstance(record[text_field], str):
            raise UserError(f"field {text_field!r} is not a string", path=source, line=lineno)
        if id_field in record:
            doc_id = str(record[id_field])
        line = record[text_field]
    if fmt == "pretagged":
        pairs = _parse_tagged(source, lineno, normalize(line))
        words = [w.replace("\n", "").strip() for w, _ in pairs]
        tags = [t for _, t in pairs]
        kept = [(w, t) for w, t in zip(words, tags, strict=True) if w]
        chunks, n_cut = split_tagged([w for w, _ in kept], [t for _, t in kept], max_sentence_chars)
        pieces = [("".join(w), w, t) for w, t in chunks]
    else:
        texts, n_cut = split_sentences(normalize(line), max_sentence_chars)
        pieces = [(s, None, None) for s in texts]
    if n_cut:
        tally.note("long_sentences_cut", where, n_cut)
    sentences = []
    for k, (text, words, tags) in enumerate(pieces):
        if not has_chinese(text):
            tally.skip("no_chinese", where)
            continue
        if has_traditional(text):
            tally.note("traditional_kept", where)
        sentences.append(Sentence(f"{doc_id}#{k}", text, words, tags))
    if not sentences:
        return None
    return Document(doc_id, sentences)


def _parse_tagged(source: str, lineno: int, line: str) -> list[tuple[str, str]]:
    pairs = []
    for item in line.split():
        word, sep, tag = item.rpartition("/")
        if not sep or not word or not tag:
            raise UserError(f"expected word/TAG items separated by spaces, got {item[:40]!r}", path=source, line=lineno)
        pairs.append((word, tag))
    return pairs
