"""Text normalisation and sentence splitting.

Normalisation (applied to every line before anything else sees it):
- full-width ASCII variants U+FF01..U+FF5E become ASCII (`１２月` -> `12月`, `ＡＢＣ` -> `ABC`), except the
  punctuation that Chinese text writes full-width on purpose (，！？：；（）), which is kept;
  the ideographic space U+3000 becomes a plain space;
- Unicode line and paragraph separators (U+2028, U+2029, U+0085) become sentence breaks;
- control characters (category Cc, tab and newline excepted) and zero-width characters are removed;
  a tab becomes a space.

Sentences end after 。！？!? or an ellipsis (plus closing quotes/brackets), and at line breaks.
A sentence longer than `max_chars` is cut at the last comma-like mark before the limit (or hard at the
limit) so that no annotator silently truncates it (LTP truncates at 510 characters).
"""

from __future__ import annotations

import re
from functools import lru_cache

_KEEP_FULLWIDTH = set("，！？：；（）")
_TABLE: dict[int, str | None] = {}
for _cp in range(0xFF01, 0xFF5F):
    if chr(_cp) not in _KEEP_FULLWIDTH:
        _TABLE[_cp] = chr(_cp - 0xFEE0)
_TABLE[0x3000] = " "
_TABLE[0x09] = " "
for _cp in (0x2028, 0x2029, 0x0085):
    _TABLE[_cp] = "\n"
for _cp in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF):
    _TABLE[_cp] = None
for _cp in list(range(0x00, 0x20)) + list(range(0x7F, 0xA0)):
    if _cp not in (0x09, 0x0A, 0x85):
        _TABLE[_cp] = None

SENTENCE_END = set("。！？!?…")
_CLOSERS = "”’」』）)】》\"'"
_SENT_RE = re.compile(rf"[^。！？!?…\n]*(?:[。！？!?]+|…+)[{re.escape(_CLOSERS)}]*|[^。！？!?…\n]+")
_CUT_MARKS = "，,；;、：:"
_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def normalize(text: str) -> str:
    """Apply the normalisation above; the result may contain '\\n' (sentence breaks)."""
    return text.translate(_TABLE)


def has_chinese(text: str) -> bool:
    return _CJK_RE.search(text) is not None


@lru_cache(maxsize=1)
def _traditional_re() -> re.Pattern:
    # Characters Big5 can encode and GB2312 cannot: in practice the traditional-only forms.
    out = set()
    for cp in range(0x4E00, 0xA000):
        ch = chr(cp)
        try:
            ch.encode("big5")
        except UnicodeEncodeError:
            continue
        try:
            ch.encode("gb2312")
        except UnicodeEncodeError:
            out.add(ch)
    return re.compile("[" + "".join(sorted(out)) + "]")


def has_traditional(text: str) -> bool:
    """True when `text` holds a traditional-only character (kept, but counted in the summary)."""
    return _traditional_re().search(text) is not None


def cut_long(text: str, max_chars: int) -> list[str]:
    """Cut `text` into pieces of at most `max_chars`, preferring a cut after a comma-like mark."""
    pieces = []
    while len(text) > max_chars:
        window = text[:max_chars]
        cut = max(window.rfind(m) for m in _CUT_MARKS) + 1
        if cut <= max_chars // 4:
            cut = max_chars
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def split_sentences(text: str, max_chars: int = 256) -> tuple[list[str], int]:
    """Normalised text -> (sentences, number of over-long sentences that were cut)."""
    out: list[str] = []
    n_cut = 0
    for match in _SENT_RE.finditer(text):
        sent = match.group(0).strip()
        if not sent:
            continue
        if len(sent) > max_chars:
            n_cut += 1
            out.extend(p for p in (s.strip() for s in cut_long(sent, max_chars)) if p)
        else:
            out.append(sent)
    return out, n_cut


def split_tagged(words: list[str], tags: list[str], max_chars: int = 256) -> tuple[list[tuple[list[str], list[str]]], int]:
    """Sentence split for pre-tagged text: a sentence ends after a word made of end punctuation;
    an over-long sentence is cut at word boundaries (after a comma word when possible)."""
    sents: list[tuple[list[str], list[str]]] = []
    cur_w: list[str] = []
    cur_t: list[str] = []
    n_cut = 0
    for w, t in zip(words, tags, strict=True):
        cur_w.append(w)
        cur_t.append(t)
        if w and (w[-1] in SENTENCE_END or w[-1] in _CLOSERS) and _is_end_word(w):
            sents.append((cur_w, cur_t))
            cur_w, cur_t = [], []
    if cur_w:
        sents.append((cur_w, cur_t))
    out = []
    for sw, st in sents:
        if sum(map(len, sw)) <= max_chars:
            out.append((sw, st))
            continue
        n_cut += 1
        start, length, last_comma = 0, 0, -1
        for i, w in enumerate(sw):
            if length + len(w) > max_chars and i > start:
                cut = last_comma + 1 if last_comma >= start else i
                out.append((sw[start:cut], st[start:cut]))
                start = cut
                length = sum(len(x) for x in sw[start:i])
                last_comma = -1
            length += len(w)
            if w in _CUT_MARKS:
                last_comma = i
        if start < len(sw):
            out.append((sw[start:], st[start:]))
    return out, n_cut


def _is_end_word(w: str) -> bool:
    return all(ch in SENTENCE_END or ch in _CLOSERS for ch in w) and any(ch in SENTENCE_END for ch in w)
