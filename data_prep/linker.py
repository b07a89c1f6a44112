"""Entity linker: longest-match, non-overlapping Aho-Corasick search over KG entity names.

A candidate match must start at a word start and end at a word end (it never splits a word), be
at least `min_len` characters long and not be in the stop-list; with `ner_only`, it must also
cover exactly an NER span of the annotator; with `pos_prefixes`, its last word's POS tag must start
with one of them (e.g. ``("n",)`` keeps nouns and proper names: n, nr, ns, nt, nz, ...), which keeps
a general-domain corpus from linking function words that happen to be KG names (以及, 因此). Among the candidates, longer matches win, then the
earlier one; the chosen mentions never overlap. The automaton's search cost is linear in the text
(plus the number of matches) and does not grow with the number of entities.

Names longer than `max_chars` are never added to the automaton (pyahocorasick crashes the process
with a segmentation fault on a name of about a million characters; a name longer than a sentence
cannot match anyway, since sentences are cut at `--max-sentence-chars`); they are counted in
`num_too_long` and reported by `ckbert prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import ahocorasick

from ckbert.data_prep.kg_store import KGStore
from ckbert.data_prep.text import has_chinese
from ckbert.errors import UserError


@dataclass
class LinkerConfig:
    min_len: int = 2
    stop_words: frozenset[str] = field(default_factory=frozenset)
    ner_only: bool = False
    require_chinese: bool = True  # names with no CJK character (codes, numbers) are never linked
    pos_prefixes: tuple[str, ...] | None = None
    max_chars: int = 256  # longer entity names are skipped (counted), never given to the automaton


def read_stop_list(path: Path) -> frozenset[str]:
    if not path.is_file():
        raise UserError("stop-list file not found", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("stop-list is not valid UTF-8", path=path) from None
    return frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


class Linker:
    def __init__(self, names: list[tuple[int, str]] | KGStore, config: LinkerConfig):
        self.config = config
        self.automaton = ahocorasick.Automaton()
        items = names.entity_names() if isinstance(names, KGStore) else names
        add, min_len, stop = self.automaton.add_word, config.min_len, config.stop_words
        cjk, max_chars = config.require_chinese, config.max_chars
        n = too_long = 0
        for ent_id, name in items:  # 153k names on the demo KG
            if len(name) > max_chars:
                too_long += 1
                continue
            if len(name) < min_len or name in stop or (cjk and not has_chinese(name)):
                continue
            add(name, (ent_id, len(name)))
            n += 1
        self.num_patterns = n
        self.num_too_long = too_long
        if n:
            self.automaton.make_automaton()

    def link(
        self, words: list[str], ner_spans: list[tuple[int, int]] | None = None, pos: list[str] | None = None
    ) -> list[tuple[int, int, int]]:
        """Words of one sentence -> mentions as (first word, end word (exclusive), entity id)."""
        if not self.num_patterns or not words:
            return []
        text = "".join(words)
        matches = list(self.automaton.iter(text))
        if not matches:
            return []
        ends = list(accumulate(map(len, words)))
        # char offset -> word: a word starts where the previous one ends (dicts built in C, no Python loop)
        start_word = dict(zip([0, *ends[:-1]], range(len(words)), strict=True))  # first char of a word -> word index
        end_word = dict(zip(ends, range(1, len(words) + 1), strict=True))  # char just after a word -> word index + 1
        allowed = set(ner_spans or ()) if self.config.ner_only else None
        prefixes = self.config.pos_prefixes
        cands = []
        for end_char, (ent_id, length) in matches:
            e = end_char + 1
            ws = start_word.get(e - length)
            we = end_word.get(e)
            if ws is None or we is None:
                continue
            if allowed is not None and (ws, we) not in allowed:
                continue
            if prefixes is not None and (pos is None or not pos[we - 1].startswith(prefixes)):
                continue
            cands.append((-length, e - length, ws, we, ent_id))
        if not cands:
            return []
        cands.sort()
        taken = [False] * len(words)
        out = []
        for _, _, ws, we, ent_id in cands:
            if any(taken[ws:we]):
                continue
            for k in range(ws, we):
                taken[k] = True
            out.append((ws, we, ent_id))
        out.sort()
        return out
