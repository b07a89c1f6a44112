"""CMRC2018: span extraction over SQuAD-style files, sliding windows over long contexts.

A context longer than one window is cut into overlapping windows (`doc_stride` tokens shared);
each window is one feature. Training windows that do not contain the whole answer point at
[CLS]. At prediction time the best (start, end) over all windows of a question is mapped back to
context characters through the fast tokenizer's offset mapping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbert.config import read_json
from ckbert.errors import UserError
from ckbert.finetune.classification import Encoded
from ckbert.finetune.jsonfiles import find_file
from ckbert.finetune.metrics import cmrc_scores

MAX_QUERY_CHARS = 64
N_BEST = 20


@dataclass
class QaExample:
    id: str
    question: str
    context: str
    answers: list[str]  # every reference answer (dev); empty on test
    answer_start: int | None  # offset of answers[0] in context; None on test or when not found


class SpanTask:
    kind = "span"
    metric = "em"
    name = "cmrc2018"
    submission_name = "cmrc2018_predict.json"
    test_has_labels = False
    test_files = ("test.json",)

    def load(self, data_dir: Path | None, split: str, stats: dict[str, int]) -> list[QaExample]:
        assert data_dir is not None
        names = self.test_files if split == "test" else (f"{split}.json",)
        path = find_file(data_dir, names, f"cmrc2018 {split}")
        doc = read_json(path, "data file", require_object=False)
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise UserError("expected a SQuAD-style object with a 'data' list", path=path)
        out = []
        skipped = 0
        for a, article in enumerate(doc["data"]):
            for p, para in enumerate(article.get("paragraphs", [])):
                where = f"data[{a}].paragraphs[{p}]"
                context = para.get("context")
                if not isinstance(context, str):
                    raise UserError(f"{where}: missing field 'context'", path=path)
                for q, qa in enumerate(para.get("qas", [])):
                    if not isinstance(qa.get("id"), str) or not isinstance(qa.get("question"), str):
                        raise UserError(f"{where}.qas[{q}]: missing field 'id' or 'question'", path=path)
                    answers = qa.get("answers", []) if split != "test" else []
                    texts = [x["text"] for x in answers if isinstance(x, dict) and isinstance(x.get("text"), str)]
                    if split != "test" and not texts:
                        raise UserError(f"{where}.qas[{q}] ({qa['id']}): no answers", path=path)
                    start = None
                    if split != "test":
                        start = _align(context, texts[0], answers[0].get("answer_start"))
                        if start is None and split == "train":  # answer not in the context: unusable
                            skipped += 1
                            continue
                    out.append(QaExample(qa["id"], qa["question"], context, texts, start))
        if skipped:
            stats[f"{split}_skipped_answer_not_in_context"] = skipped
        return out

    def model(self, model_dir: Path, random_init: bool = False) -> Any:
        from transformers import AutoModelForQuestionAnswering

        from ckbert.hf_load import load_model

        return load_model(AutoModelForQuestionAnswering, model_dir, random_init)

    def collator(self, tokenizer: Any) -> Any:
        from transformers import default_data_collator

        return default_data_collator

    def encode(self, examples: list[QaExample], tokenizer: Any, cfg: Any, split: str) -> Encoded:
        from datasets import Dataset

        if cfg.doc_stride > cfg.max_length // 2:
            raise UserError(f"doc_stride {cfg.doc_stride} must be at most max_length/2 ({cfg.max_length // 2})")
        questions = [ex.question[:MAX_QUERY_CHARS] for ex in examples]
        enc = tokenizer(
            questions,
            [ex.context for ex in examples],
            truncation="only_second",
            max_length=cfg.max_length,
            stride=cfg.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="max_length",
        )
        sample = enc["overflow_to_sample_mapping"]
        columns: dict[str, list] = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        starts, ends, offsets = [], [], []
        for f, ex_index in enumerate(sample):
            seq = enc.sequence_ids(f)
            offs = [o if s == 1 else None for o, s in zip(enc["offset_mapping"][f], seq, strict=True)]
            offsets.append(offs)
            ex = examples[ex_index]
            if ex.answer_start is None:  # test, or a dev answer not found in its context
                starts.append(0)
                ends.append(0)
                continue
            a0, a1 = ex.answer_start, ex.answer_start + len(ex.answers[0])  # [a0, a1) characters
            tok = [i for i, o in enumerate(offs) if o is not None and o[0] < a1 and o[1] > a0]
            inside = tok and offs[tok[0]][0] <= a0 and offs[tok[-1]][1] >= a1
            starts.append(tok[0] if inside else 0)
            ends.append(tok[-1] if inside else 0)
        if split != "test":  # dev positions too: the Trainer scores dev only when it has labels
            columns["start_positions"], columns["end_positions"] = starts, ends
        windows_per_question = np.bincount(np.asarray(sample, dtype=np.int64), minlength=len(examples))
        stats = {
            f"{split}_windows": len(sample),
            f"{split}_questions_windowed": int((windows_per_question > 1).sum()),
            f"{split}_questions_cut": sum(len(ex.question) > MAX_QUERY_CHARS for ex in examples),
        }
        return Encoded(Dataset.from_dict(columns), stats, meta=(list(sample), offsets))

    def decode(self, examples: list[QaExample], encoded: Encoded, logits: Any, cfg: Any) -> list[str]:
        start_logits, end_logits = (np.asarray(x) for x in logits)  # [F, L] each
        sample, offsets = encoded.meta
        best: dict[int, tuple[float, str]] = {}
        for f, ex_index in enumerate(sample):
            offs = offsets[f]
            context = examples[ex_index].context
            top_s = np.argsort(start_logits[f])[::-1][:N_BEST]
            top_e = np.argsort(end_logits[f])[::-1][:N_BEST]
            for s in top_s:
                if s >= len(offs) or offs[s] is None:
                    continue
                for e in top_e:
                    if e >= len(offs) or offs[e] is None or e < s or e - s + 1 > cfg.max_answer_length:
                        continue
                    score = float(start_logits[f][s] + end_logits[f][e])
                    if ex_index not in best or score > best[ex_index][0]:
                        best[ex_index] = (score, context[offs[s][0] : offs[e][1]])
        return [best.get(i, (0.0, ""))[1] for i in range(len(examples))]

    def score(self, examples: list[QaExample], predictions: list[str]) -> dict[str, float]:
        return cmrc_scores(
            {ex.id: p for ex, p in zip(examples, predictions, strict=True)}, {ex.id: ex.answers for ex in examples}
        )

    def submission(self, examples: list[QaExample], predictions: list[str]) -> str:
        out = {ex.id: p for ex, p in zip(examples, predictions, strict=True)}
        return json.dumps(out, ensure_ascii=False) + "\n"


def _align(context: str, text: str, start: Any) -> int | None:
    """The answer's character offset: the given one when it matches, else the first occurrence."""
    if isinstance(start, int) and context[start : start + len(text)] == text:
        return start
    found = context.find(text)
    return found if found >= 0 else None
