"""Metrics as the CLUE benchmark defines them.

- accuracy for the classification and multiple-choice tasks;
- CMRC2018 EM and F1 following the official `cmrc2018_evaluate.py` (v5): lower-case, drop the
  listed punctuation, split into Chinese characters plus non-Chinese words, F1 from the longest
  common *contiguous* run of segments, maximum over the reference answers, both times 100;
- CLUENER micro entity-level F1 over exact (type, start, end) matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# The official script's list; its "……" entry never equals a single character, so a lone "…" stays.
CMRC_PUNCT = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_CHINESE = re.compile(r"[\u4e00-\u9fa5]")
# The official script runs nltk.word_tokenize on non-Chinese runs; words, numbers and single
# symbols is what that yields on the short Latin fragments found in CMRC answers.
_LATIN_TOKEN = re.compile(r"\w+|[^\w\s]")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def cmrc_segments(text: str, remove_punct: bool = True) -> list[str]:
    """Chinese characters one by one, other runs split into words (official mixed_segmentation)."""
    out: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if remove_punct and ch in CMRC_PUNCT:
            continue
        if _CHINESE.match(ch) or ch in CMRC_PUNCT:
            if run:
                out.extend(_LATIN_TOKEN.findall(run))
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.extend(_LATIN_TOKEN.findall(run))
    return out


def _strip_punct(text: str) -> str:
    return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCT)


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous subsequence (substring) of two segment lists."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def cmrc_f1(prediction: str, answers: Iterable[str]) -> float:
    scores = [0.0]
    pred = cmrc_segments(prediction)
    for answer in answers:
        ref = cmrc_segments(answer)
        common = longest_common_run(ref, pred)
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(ref)
        scores.append(2 * precision * recall / (precision + recall))
    return max(scores)


def cmrc_em(prediction: str, answers: Iterable[str]) -> float:
    pred = _strip_punct(prediction)
    return float(any(_strip_punct(a) == pred for a in answers))


def cmrc_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 (0..100) over all reference questions; a question without prediction scores 0."""
    if not references:
        raise ValueError("no reference questions")
    em = f1 = 0.0
    for qid, answers in references.items():
        pred = predictions.get(qid)
        if pred is None:
            continue
        em += cmrc_em(pred, answers)
        f1 += cmrc_f1(pred, answers)
    n = len(references)
    return {"em": 100.0 * em / n, "f1": 100.0 * f1 / n, "average": 50.0 * (em + f1) / n}


Entity = tuple[str, int, int]  # (type, start, end) with end inclusive, character offsets


def entity_f1(predicted: Sequence[Iterable[Entity]], gold: Sequence[Iterable[Entity]]) -> dict[str, float]:
    """Micro precision/recall/F1 over exact entity matches, summed over sentences, and the F1 of each
    entity type ("f1_<type>", over the types of gold and predicted entities)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold sentences")
    counts: dict[str | None, list[int]] = {None: [0, 0, 0]}  # type (None: all) -> [tp, predicted, gold]
    for p, g in zip(predicted, gold, strict=True):
        ps, gs = set(p), set(g)
        for key, part in ((0, ps & gs), (1, ps), (2, gs)):
            for etype, _, _ in part:
                for c in (counts[None], counts.setdefault(etype, [0, 0, 0])):
                    c[key] += 1

    def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        return precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    precision, recall, f1 = prf(*counts.pop(None))
    return {"precision": precision, "recall": recall, "f1": f1,
            **{f"f1_{etype}": prf(*c)[2] for etype, c in sorted(counts.items())}}
