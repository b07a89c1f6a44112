"""Sequence classification: AFQMC, TNEWS, IFLYTEK, OCNLI, CMNLI, CLUEWSC2020, CSL and the review task.

One reader per task turns an official JSON line into a `ClsExample`; nothing guesses text columns
(TNEWS and IFLYTEK carry the label description, which would leak the label).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbert.errors import UserError
from ckbert.finetune.jsonfiles import field, find_file, read_jsonl
from ckbert.finetune.metrics import accuracy


@dataclass
class ClsExample:
    id: Any  # the test file's id (submission key), else the 0-based line index
    text_a: str
    text_b: str | None
    label: str | None  # label string; None on unlabelled test lines


@dataclass
class Encoded:
    dataset: Any  # datasets.Dataset with the model inputs (+ labels when known)
    stats: dict[str, int]  # counts reported to the user (truncations, windows, drops)
    meta: Any = None  # what decode needs to map features back to examples


def _id(obj: dict[str, Any], index: int) -> Any:
    return obj["id"] if "id" in obj else obj.get("idx", index)


def _label(obj: dict[str, Any], path: Path, line: int) -> str | None:
    if "label" not in obj:
        return None
    value = obj["label"]
    if isinstance(value, bool):  # some mirrors write WSC labels as JSON booleans
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise UserError(f"field 'label' has the wrong type ({type(value).__name__})", path=path, line=line)
    return value


def read_pair(obj: dict[str, Any], path: Path, line: int, index: int) -> ClsExample:
    """AFQMC, OCNLI, CMNLI: sentence1 / sentence2."""
    a = field(obj, "sentence1", str, path, line)
    b = field(obj, "sentence2", str, path, line)
    return ClsExample(_id(obj, index), a, b, _label(obj, path, line))


def read_sentence(obj: dict[str, Any], path: Path, line: int, index: int) -> ClsExample:
    """TNEWS, IFLYTEK: the sentence only (label_desc/label_des would leak the label)."""
    return ClsExample(_id(obj, index), field(obj, "sentence", str, path, line), None, _label(obj, path, line))


def read_csl(obj: dict[str, Any], path: Path, line: int, index: int) -> ClsExample:
    """CSL: keywords joined with spaces as text A, the abstract as text B."""
    keywords = field(obj, "keyword", list, path, line)
    abstract = field(obj, "abst", str, path, line)
    return ClsExample(_id(obj, index), " ".join(map(str, keywords)), abstract, _label(obj, path, line))


def read_wsc(obj: dict[str, Any], path: Path, line: int, index: int) -> ClsExample:
    """CLUEWSC2020: the noun span1 wrapped in _…_ and the pronoun span2 in […], inserted right to left."""
    text = field(obj, "text", str, path, line)
    target = field(obj, "target", dict, path, line)
    spans = []
    for key, (left, right) in (("span1", ("_", "_")), ("span2", ("[", "]"))):
        span = field(target, f"{key}_text", str, path, line)
        start = field(target, f"{key}_index", int, path, line)
        if not 0 <= start <= len(text) - len(span):
            raise UserError(f"target.{key}_index {start} lies outside the text", path=path, line=line)
        spans.append((start, start + len(span), left, right))
    for start, end, left, right in sorted(spans, reverse=True):
        text = text[:start] + left + text[start:end] + right + text[end:]
    return ClsExample(_id(obj, index), text, None, _label(obj, path, line))


Reader = Callable[[dict[str, Any], Path, int, int], ClsExample]


class ClassificationTask:
    kind = "classification"
    metric = "accuracy"

    def __init__(
        self,
        name: str,
        labels: list[str],
        reader: Reader | None,
        submission_name: str | None,
        test_files: tuple[str, ...] = ("test.json",),
        drop_labels: tuple[str, ...] = (),
        loader: Callable[[Path | None, str, dict[str, int]], list[ClsExample]] | None = None,
    ):
        self.name = name
        self.labels = labels
        self.reader = reader
        self.submission_name = submission_name
        self.test_files = test_files
        self.drop_labels = drop_labels  # OCNLI/CMNLI "-": no annotator majority, not scorable
        self.loader = loader  # offline tasks bring their own data
        self.test_has_labels = loader is not None

    def load(self, data_dir: Path | None, split: str, stats: dict[str, int]) -> list[ClsExample]:
        if self.loader is not None:
            return self.loader(data_dir, split, stats)
        assert data_dir is not None and self.reader is not None
        names = self.test_files if split == "test" else (f"{split}.json",)
        path = find_file(data_dir, names, f"{self.name} {split}")
        out = []
        for index, (line, obj) in enumerate(read_jsonl(path)):
            ex = self.reader(obj, path, line, index)
            if split != "test" and ex.label is None:
                raise UserError("missing field 'label'", path=path, line=line)
            if ex.label in self.drop_labels:
                stats[f"{split}_dropped_label_{ex.label}"] = stats.get(f"{split}_dropped_label_{ex.label}", 0) + 1
                continue
            if ex.label is not None and ex.label not in self.labels:
                raise UserError(f"label {ex.label!r} is not in the {self.name} label set", path=path, line=line)
            out.append(ex)
        return out

    def model(self, model_dir: Path, random_init: bool = False) -> Any:
        from transformers import AutoModelForSequenceClassification

        from ckbert.hf_load import load_model

        return load_model(
            AutoModelForSequenceClassification,
            model_dir,
            random_init,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={k: i for i, k in enumerate(self.labels)},
        )

    def encode(self, examples: list[ClsExample], tokenizer: Any, cfg: Any, split: str) -> Encoded:
        from datasets import Dataset

        a = [ex.text_a for ex in examples]
        b = [ex.text_b for ex in examples] if examples and examples[0].text_b is not None else None
        full = tokenizer(a, b, truncation=False, add_special_tokens=True)["input_ids"]
        enc = tokenizer(a, b, truncation=True, max_length=cfg.max_length)
        columns = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        index = {k: i for i, k in enumerate(self.labels)}
        if all(ex.label is not None for ex in examples):
            columns["labels"] = [index[ex.label] for ex in examples]
        truncated = sum(len(ids) > cfg.max_length for ids in full)
        return Encoded(Dataset.from_dict(columns), {f"{split}_truncated": truncated})

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def decode(self, examples: list[ClsExample], encoded: Encoded, logits: Any, cfg: Any) -> list[str]:
        return [self.labels[i] for i in np.asarray(logits).argmax(-1).tolist()]

    def score(self, examples: list[ClsExample], predictions: list[str]) -> dict[str, float]:
        return {"accuracy": 100.0 * accuracy(predictions, [ex.label for ex in examples])}

    def submission(self, examples: list[ClsExample], predictions: list[str]) -> str:
        lines = [
            json.dumps({"id": ex.id, "label": p}, ensure_ascii=False)
            for ex, p in zip(examples, predictions, strict=True)
        ]
        return "\n".join(lines) + "\n"
