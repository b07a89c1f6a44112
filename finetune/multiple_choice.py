"""Multiple choice: CHID (idiom cloze, 10 candidates per blank) and C3 (reading comprehension).

Each example becomes `num_choices` encoded pairs ([B, C, L] for AutoModelForMultipleChoice).
C3 questions with fewer than 4 choices are padded with empty choices whose logits are set to
-inf before the argmax, so a padded slot is never predicted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbert.config import read_json
from ckbert.errors import UserError
from ckbert.finetune.classification import Encoded
from ckbert.finetune.jsonfiles import field, find_file, read_jsonl
from ckbert.finetune.metrics import accuracy

IDIOM_TAG = re.compile(r"#idiom\d+#")


@dataclass
class ChoiceExample:
    id: str
    firsts: list[str]  # per choice: first segment (CHID: the candidate; C3: the passage)
    seconds: list[str]  # per choice: second segment (CHID: the context; C3: question + choice)
    label: int | None
    truncate: str  # which segment gives way when too long: "only_first" / "only_second"


class MultipleChoiceTask:
    kind = "multiple_choice"
    metric = "accuracy"
    test_has_labels = False

    def __init__(self, name: str, num_choices: int, submission_name: str):
        self.name = name
        self.num_choices = num_choices
        self.submission_name = submission_name

    def model(self, model_dir: Path, random_init: bool = False) -> Any:
        from transformers import AutoModelForMultipleChoice

        from ckbert.hf_load import load_model

        return load_model(AutoModelForMultipleChoice, model_dir, random_init)

    def collator(self, tokenizer: Any) -> Any:
        from transformers import default_data_collator

        return default_data_collator

    def encode(self, examples: list[ChoiceExample], tokenizer: Any, cfg: Any, split: str) -> Encoded:
        from datasets import Dataset

        columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        truncated = 0
        for ex in examples:
            firsts = ex.firsts + [""] * (self.num_choices - len(ex.firsts))
            seconds = ex.seconds + [""] * (self.num_choices - len(ex.seconds))
            full = tokenizer(firsts, seconds, truncation=False)["input_ids"]
            truncated += any(len(ids) > cfg.max_length for ids in full)
            enc = tokenizer(
                firsts, seconds, truncation=ex.truncate, max_length=cfg.max_length, padding="max_length"
            )
            for key in columns:
                columns[key].append(enc[key])
        if all(ex.label is not None for ex in examples):
            columns["labels"] = [ex.label for ex in examples]
        return Encoded(Dataset.from_dict(columns), {f"{split}_truncated": truncated})

    def decode(self, examples: list[ChoiceExample], encoded: Encoded, logits: Any, cfg: Any) -> list[int]:
        scores = np.array(logits, dtype=np.float64)  # [N, C]
        for i, ex in enumerate(examples):
            scores[i, len(ex.firsts) :] = -np.inf
        return scores.argmax(-1).tolist()

    def score(self, examples: list[ChoiceExample], predictions: list[int]) -> dict[str, float]:
        return {"accuracy": 100.0 * accuracy(predictions, [ex.label for ex in examples])}


class ChidTask(MultipleChoiceTask):
    """CHID: one example per #idiomNNNNNN# blank; the blank becomes four [MASK] tokens, other
    blanks of the passage one [UNK], and the context is cut to a window centred on the blank."""

    test_files = ("test1.1.json", "test.json", "test1.0.json")

    def __init__(self) -> None:
        super().__init__("chid", 10, "chid11_predict.json")
        self.max_context_chars = 0  # set by encode from max_length

    def load(self, data_dir: Path | None, split: str, stats: dict[str, int]) -> list[ChoiceExample]:
        assert data_dir is not None
        names = self.test_files if split == "test" else (f"{split}.json",)
        path = find_file(data_dir, names, f"chid {split}")
        answers: dict[str, int] | None = None
        if split != "test":
            answer_path = data_dir / f"{split}_answer.json"
            answers = read_json(answer_path, "data file", require_object=False)
            if not isinstance(answers, dict):
                raise UserError("expected one JSON object {tag: index}", path=answer_path)
        out = []
        for line, obj in read_jsonl(path):
            candidates = field(obj, "candidates", list, path, line)
            if len(candidates) != self.num_choices or not all(isinstance(c, str) for c in candidates):
                raise UserError(f"expected {self.num_choices} candidate strings", path=path, line=line)
            content = field(obj, "content", (list, str), path, line)
            for passage in [content] if isinstance(content, str) else content:
                for match in IDIOM_TAG.finditer(passage):
                    tag = match.group()
                    label = None
                    if answers is not None:
                        if tag not in answers:
                            raise UserError(f"{tag} has no entry in {split}_answer.json", path=path, line=line)
                        label = answers[tag]
                        if not isinstance(label, int) or not 0 <= label < self.num_choices:
                            raise UserError(f"answer for {tag} is not a candidate index 0..9", path=path, line=line)
                    left, right = passage[: match.start()], passage[match.end() :]
                    out.append(ChoiceExample(tag, list(candidates), [left, right], label, "only_second"))
        return out

    def encode(self, examples: list[ChoiceExample], tokenizer: Any, cfg: Any, split: str) -> Encoded:
        # [CLS] idiom(4) [SEP] left [MASK]x4 right [SEP]: about one token per Chinese character.
        budget = max(cfg.max_length - 3 - 4 - 4, 2)
        windowed = []
        cut = 0
        for ex in examples:
            left, right = (IDIOM_TAG.sub(tokenizer.unk_token, s) for s in ex.seconds)
            half = budget // 2
            keep_left = min(len(left), max(half, budget - len(right)))
            keep_right = min(len(right), budget - keep_left)
            cut += keep_left < len(left) or keep_right < len(right)
            context = left[len(left) - keep_left :] + tokenizer.mask_token * 4 + right[:keep_right]
            windowed.append(
                ChoiceExample(ex.id, ex.firsts, [context] * len(ex.firsts), ex.label, "only_second")
            )
        encoded = super().encode(windowed, tokenizer, cfg, split)
        encoded.stats[f"{split}_context_windowed"] = cut
        return encoded

    def submission(self, examples: list[ChoiceExample], predictions: list[int]) -> str:
        return json.dumps({ex.id: p for ex, p in zip(examples, predictions, strict=True)}, ensure_ascii=False) + "\n"


class C3Task(MultipleChoiceTask):
    """C3: passage as text A, question + choice as text B; the passage gives way when too long."""

    test_files = ("test1.1.json", "test1.0.json")

    def __init__(self) -> None:
        super().__init__("c3", 4, "c311_predict.json")

    def load(self, data_dir: Path | None, split: str, stats: dict[str, int]) -> list[ChoiceExample]:
        assert data_dir is not None
        if split == "test":
            paths = [find_file(data_dir, self.test_files, "c3 test")]
        else:
            paths = [find_file(data_dir, (f"{p}-{split}.json",), f"c3 {split}") for p in ("d", "m")]
        out = []
        for path in paths:
            items = read_json(path, "data file", require_object=False)
            if not isinstance(items, list):
                raise UserError("expected a JSON list of [context, questions, id] items", path=path)
            for n, item in enumerate(items):
                where = f"item {n}"
                if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[0], list)):
                    raise UserError(f"{where}: expected [[context lines], [questions], id]", path=path)
                passage = "".join(str(s) for s in item[0])
                for qn, q in enumerate(item[1]):
                    if not isinstance(q, dict) or not isinstance(q.get("question"), str):
                        raise UserError(f"{where}, question {qn}: missing field 'question'", path=path)
                    choices = q.get("choice")
                    if not isinstance(choices, list) or not 1 <= len(choices) <= self.num_choices:
                        raise UserError(f"{where}, question {qn}: 'choice' must list 1..4 strings", path=path)
                    label = None
                    if split != "test":
                        if q.get("answer") not in choices:
                            raise UserError(f"{where}, question {qn}: answer is not one of the choices", path=path)
                        label = choices.index(q["answer"])
                    qid = str(q.get("id", f"{item[2] if len(item) > 2 else n}-{qn}"))
                    out.append(
                        ChoiceExample(
                            qid,
                            [passage] * len(choices),
                            [f"{q['question']} {c}" for c in choices],
                            label,
                            "only_first",
                        )
                    )
        return out

    def submission(self, examples: list[ChoiceExample], predictions: list[int]) -> str:
        lines = [json.dumps({"id": _int_id(ex.id), "label": p}) for ex, p in zip(examples, predictions, strict=True)]
        return "\n".join(lines) + "\n"


def _int_id(value: str) -> int | str:
    return int(value) if value.isdigit() else value
